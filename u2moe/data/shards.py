"""Tar shards: many utterances per file, read as one stream (WeNet's `shard` data type).

A shard is a tar whose members come in consecutive groups sharing a name before the last dot:
`KEY.txt` (UTF-8 transcript) and `KEY.wav` (or another audio suffix: the audio file's bytes);
other members of a group are ignored. A shard list names one shard per line:
- a local path (relative to the current directory, as in a WeNet recipe);
- an `http://` or `https://` URL;
- `pipe:COMMAND`, a shell command whose stdout is the tar (e.g. an object-store CLI).
Each is read front to back as a stream, never seeked, so any of the three serves.

A shard that cannot be opened or read to its end (missing, download failed, command exited
non-zero, truncated tar) and a group without audio or text are `BadEntry`s with a short
reason, counted and skipped like bad manifest lines; what was read before a failure is kept.
"""

import io
import logging
import multiprocessing
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from u2moe.data.audio import SAMPLE_RATE, AudioError, load_audio
from u2moe.data.files import atomic_path, write_text_atomic
from u2moe.data.manifest import BadEntry, Manifest, Utterance
from u2moe.data.skips import SkipStats
from u2moe.errors import UserError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = ("wav", "flac", "ogg", "opus", "mp3", "m4a", "wma")  # WeNet's set
SHARD_LIST = "shards.list"
# Reasons that concern a whole shard (the key is the shard list entry).
SHARD_FAILURES = (
    "shard not found",
    "shard download failed",
    "shard command failed",
    "unreadable shard",
    "truncated shard",
)
URL_TIMEOUT = 60.0  # seconds without data before a download counts as failed


@dataclass
class ShardUtterance:
    """One utterance read from a shard; (shard, position) names it for seeds and resume."""

    key: str
    text: str
    audio: bytes  # the member's contents: a whole audio file
    name: str  # `<shard entry>:<member>`, for error messages
    shard: int  # index of the shard in the list
    position: int  # index of the utterance's group in the shard


class ShardList:
    """The entries of a shard list file: `shards[i]` is a path, URL or `pipe:` command."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such shard list")
        lines = self.path.read_text(encoding="utf-8").splitlines()
        self.entries = [line.strip() for line in lines if line.strip()]
        if not self.entries:
            raise UserError(f"{self.path}: the shard list is empty")
        if self.entries[0].startswith("{"):
            raise UserError(f"{self.path}: a JSON-lines manifest, not a shard list")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> str:
        return self.entries[index]


def read_shard(entry: str, shard: int = 0) -> Iterator[ShardUtterance | BadEntry]:
    """The utterances of one shard in member order, and a BadEntry for each problem."""
    try:
        stream, process = _open(entry)
    except OSError as e:
        if entry.startswith(("http://", "https://")):
            reason = "shard download failed"
        else:
            reason = "shard not found" if isinstance(e, FileNotFoundError) else "unreadable shard"
        log.warning("%s: %s (%s)", entry, reason, e)
        yield BadEntry(entry, reason)
        return
    try:
        failure = ("unreadable shard", "not a tar")
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            failure = ("truncated shard", "")
            yield from _groups(tar, entry, shard)
            failure = None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        failure = (failure[0], str(e))
    finally:
        stream.close()
        if process is not None:
            if process.poll() is None and failure is None:
                process.wait()
            elif process.poll() is None:  # left early: the rest of its output is not wanted
                process.kill()
                process.wait()
    if process is not None and process.returncode != 0:
        failure = ("shard command failed", f"exit status {process.returncode}")
    if failure is not None:
        log.warning("%s: %s (%s)", entry, *failure)
        yield BadEntry(entry, failure[0])


def _open(entry: str):
    """(binary stream, process or None) for a shard list entry; OSError if it cannot start."""
    if entry.startswith("pipe:"):
        process = subprocess.Popen(entry[len("pipe:") :], shell=True, stdout=subprocess.PIPE)
        return process.stdout, process
    if entry.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(entry, timeout=URL_TIMEOUT), None
        except (urllib.error.URLError, ValueError) as e:
            raise OSError(str(e)) from None
    return open(entry, "rb"), None


def _groups(tar: tarfile.TarFile, entry: str, shard: int) -> Iterator[ShardUtterance | BadEntry]:
    """Group consecutive members by the name before the last dot, as WeNet does."""
    key, members, position = None, {}, 0
    for member in tar:
        if not member.isfile():
            continue
        prefix, dot, suffix = member.name.rpartition(".")
        prefix = prefix if dot else member.name
        if key is not None and prefix != key:
            yield _utterance(key, members, entry, shard, position)
            key, members, position = None, {}, position + 1
        key = prefix
        members[suffix.lower() if dot else ""] = tar.extractfile(member).read()
    if key is not None:
        yield _utterance(key, members, entry, shard, position)


def _utterance(key: str, members: dict, entry: str, shard: int, position: int):
    suffix = next((s for s in AUDIO_SUFFIXES if s in members), None)
    if suffix is None:
        return BadEntry(key, "no audio in shard")
    if "txt" not in members:
        return BadEntry(key, "no text in shard")
    try:
        text = members["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
        return BadEntry(key, "invalid text")
    return ShardUtterance(key, text, members[suffix], f"{entry}:{key}.{suffix}", shard, position)


def write_shards(
    manifest_path: str | Path, out_dir: str | Path, per_shard: int = 1000, workers: int = 1
) -> tuple[Path, int, SkipStats]:
    """Write `out_dir/shards_NNNNNNNNN.tar` and `out_dir/shards.list` (absolute paths).

    Shard i holds the usable entries among manifest lines [i x per_shard, (i+1) x per_shard),
    in order. A whole audio file goes in as it is (its bytes); a segment (start/end) or a
    wav.scp command is decoded and stored as 16 kHz 16-bit WAV, as WeNet's make_shard_list.py
    does. Returns (shard list path, utterances written, skips by reason).
    """
    if per_shard < 1:
        raise UserError(f"--per-shard must be >= 1, got {per_shard}")
    manifest = Manifest(manifest_path)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(manifest), per_shard)
    tasks = [(s, s + per_shard, out_dir / f"shards_{i:09d}.tar") for i, s in enumerate(starts)]
    stats, written = SkipStats(), 0
    context = multiprocessing.get_context("spawn")  # see prepare: forking torch threads hangs
    with context.Pool(max(1, workers), _set_manifest, (manifest,)) as pool:
        results = pool.imap(_write_shard, tasks)
        for count, skips in tqdm(results, total=len(tasks), desc="shard", unit="shard"):
            written += count
            stats.update(skips)
    if written == 0:
        for _, _, path in tasks:
            path.unlink()
        raise UserError(f"{manifest_path}: no usable utterance to shard ({stats.summary()})")
    list_path = out_dir / SHARD_LIST
    write_text_atomic(list_path, "".join(f"{path}\n" for _, _, path in tasks))
    return list_path, written, stats


_manifest: Manifest | None = None  # the manifest being sharded, in each worker process


def _set_manifest(manifest: Manifest) -> None:
    global _manifest
    _manifest = manifest
    os.environ["OMP_NUM_THREADS"] = "1"


def _write_shard(task: tuple[int, int, Path]) -> tuple[int, list[tuple[str, str]]]:
    """Write one shard (atomically); (utterances written, skips)."""
    start, stop, path = task
    count, skips = 0, []
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for index in range(start, min(stop, len(_manifest))):
            entry = _manifest[index]
            if isinstance(entry, BadEntry):
                skips.append((entry.key, entry.reason))
                continue
            try:
                suffix, data = _audio_member(entry)
            except AudioError as e:
                skips.append((entry.key, e.reason))
                continue
            for name, contents in [("txt", entry.text.encode()), (suffix, data)]:
                info = tarfile.TarInfo(f"{entry.key}.{name}")
                info.size = len(contents)
                tar.addfile(info, io.BytesIO(contents))
            count += 1
    return count, skips


def _audio_member(entry: Utterance) -> tuple[str, bytes]:
    """(suffix, bytes): the file itself when whole, else the decoded part as 16-bit WAV."""
    suffix = entry.audio.rsplit(".", 1)[-1].lower()
    whole = not entry.start and entry.end is None and not entry.audio.rstrip().endswith("|")
    if whole and suffix in AUDIO_SUFFIXES:
        try:
            return suffix, Path(entry.audio).read_bytes()
        except FileNotFoundError:
            raise AudioError(entry.audio, "audio file not found") from None
    samples = load_audio(entry.audio, entry.start, entry.end)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1, 1), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return "wav", buffer.getvalue()
