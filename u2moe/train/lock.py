"""One training run per experiment directory: an exclusive lock on `EXP/train.lock`.

The lock is an flock(2) on the file, which the kernel drops when the process ends, however
it ends: a lock file left by a killed run holds no lock and is taken over (with a note in
the log). The file names the holder (pid, host, start time) for the message a second run
prints.
"""

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from u2moe.errors import UserError

LOCK = "train.lock"


class ExperimentLock:
    """`with ExperimentLock(exp_dir):` holds the experiment for this process (created if
    needed); a UserError naming the holder if another live process has it."""

    def __init__(self, exp_dir: Path):
        self.path = Path(exp_dir) / LOCK
        self.fd: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "ExperimentLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(
                    f"{self.path.parent} is in use by another training run "
                    f"({describe(read_holder(self.path))}); wait for it to end or use "
                    "another --exp"
                ) from None
            # The holder may have removed the file between our open and flock: lock again.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        # What a killed run left (logged by the caller once its log is set up).
        self.previous = read_holder(self.path)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        return self

    def stale_note(self) -> str:
        """'' or a line about the ended run whose lock file this one took over."""
        if not self.previous:
            return ""
        return f"took over the lock of a run that ended ({describe(self.previous)})"

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while still holding it: no one else is inside
        os.close(self.fd)
        self.fd = None


def read_holder(path: Path) -> dict:
    """What a lock file says about its holder ({} if empty or unreadable)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
