"""Atomic file writes: a reader never sees a half-written file, a failure leaves nothing.

Every file u2moe writes (checkpoints, model.pt, YAML, JSON, summaries, units, plots) goes
through `atomic_path`: the content goes to a temporary file beside the target, is flushed
to the disk, and only then renamed onto the target. On any failure the temporary file is
removed and the target (say, the last good checkpoint) is left as it was; a full disk is
one `UserError` line naming the file and the bytes it needed.
"""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from u2moe.errors import UserError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; rename it onto `path` only if the
    block succeeds. size: about the bytes to be written, if known (for the disk-full
    message, which reports the larger of it and what was written when the disk filled)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        tmp.replace(path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            needed = f"at least {max(size or 0, written)} bytes"
            raise _disk_full(path, needed) from None
        raise


def append_text(path: str | Path, text: str) -> None:
    """Append to a log-like file (metrics.jsonl); a full disk is the same one-line error."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        if _is_disk_full(e):
            raise _disk_full(Path(path), f"{len(text.encode())} more bytes") from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def copy_file_atomic(source: str | Path, path: str | Path) -> None:
    with atomic_path(path, Path(source).stat().st_size) as tmp:
        shutil.copyfile(source, tmp)


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` (a state dict, a checkpoint) to `path` atomically."""
    import torch

    with atomic_path(path, _tensor_bytes(obj)) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _disk_full(path: Path, needed: str) -> UserError:
    free = shutil.disk_usage(path.parent).free
    return UserError(f"{path}: disk full: writing it needs {needed}, {free} free")


def _fsync(path: Path) -> None:
    # The data must be on the disk before the rename makes it the file: otherwise a crash
    # soon after could leave a renamed but empty file (and a full disk is noticed here).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain (torch.save wraps the OSError in a RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        if isinstance(error, RuntimeError) and "file write failed" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list/tuple (about the size torch.save writes)."""
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return obj.nbytes if hasattr(obj, "nbytes") and hasattr(obj, "dtype") else 0
