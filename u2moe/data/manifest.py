"""Reading the utterance lists users already have.

Four formats, told apart by what the path is (`detect_data_type`):
- a JSON-lines manifest, one `{"key", "audio", "text", "duration", ...}` per line; `audio` is
  relative to the manifest's folder or absolute, other fields (speaker, ...) are kept;
- WeNet's `data.list`, the same with `wav` and `txt` (and optional `start`, `end` in seconds);
- a Kaldi data directory: `wav.scp` and `text`, optional `segments` and `utt2spk`; relative
  paths in `wav.scp` are relative to the current directory, as in a Kaldi recipe;
- a lhotse CutSet (`cuts.jsonl.gz`; needs the `lhotse` extra): one utterance per cut, its
  supervisions' text, the part of its recording the cut covers.
A file of lines that are not JSON is a tar shard list (`shard`, read by data/shards.py).

A JSON-lines file is indexed by line offsets and read lazily, so a large corpus is never held
in memory. An entry that cannot be used is a `BadEntry` (key and reason), never an exception.
"""

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from u2moe.data.audio import AudioError, check_segment
from u2moe.data.skips import SkipStats
from u2moe.errors import UserError


@dataclass
class Utterance:
    key: str
    audio: str  # absolute path, or a shell command ending in `|` (Kaldi wav.scp)
    text: str
    duration: float | None = None  # seconds, of the part from start to end
    start: float = 0.0  # seconds into the audio file (Kaldi segments)
    end: float | None = None
    extra: dict = field(default_factory=dict)  # speaker and any other fields, kept as given

    def to_json(self) -> dict:
        """The manifest line for this utterance (absolute audio path)."""
        line = {"key": self.key, "audio": self.audio, "text": self.text}
        if self.duration is not None:
            line["duration"] = round(self.duration, 4)
        if self.start or self.end is not None:
            line["start"], line["end"] = self.start, self.end
        return {**line, **self.extra}


@dataclass
class BadEntry:
    key: str  # the utterance key, or `file:line` when the line has none
    reason: str


DATA_TYPES = ("raw", "shard", "lhotse")  # WeNet's names; raw: manifest, data.list, Kaldi dir


def detect_data_type(path: str | Path) -> str:
    """`raw`, `shard` or `lhotse` from the file's first bytes (a directory is Kaldi's: raw)."""
    path = Path(path)
    if path.is_dir():
        return "raw"
    if not path.is_file():
        raise UserError(f"{path}: no such manifest file or Kaldi data directory")
    with path.open("rb") as f:
        if f.read(2) == b"\x1f\x8b":  # gzip: lhotse writes cuts.jsonl.gz
            return "lhotse"
        _check_text(path)  # any other binary file is no list of ours (an audio file, say)
        f.seek(0)
        line = next((line for line in f if line.strip()), b"").strip()
    if not line.startswith(b"{"):
        return "shard"
    try:
        first = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "raw"  # its bad lines are reported as such
    return "lhotse" if isinstance(first, dict) and "supervisions" in first else "raw"


class Manifest:
    """Random access to the entries of a manifest: `manifest[i] -> Utterance | BadEntry`."""

    def __init__(self, path: str | Path, data_type: str = "auto"):
        self.path = Path(path)
        data_type = detect_data_type(path) if data_type == "auto" else data_type
        self._offsets = None
        if data_type == "shard":
            raise UserError(f"{self.path}: a tar shard list, not a manifest this command reads")
        if self.path.is_dir():
            self._entries = _read_kaldi_dir(self.path)
        elif not self.path.is_file():
            raise UserError(f"{self.path}: no such manifest file or Kaldi data directory")
        elif data_type == "lhotse":
            self._entries = _read_lhotse_cuts(self.path)
        else:
            _check_text(self.path)
            self._entries = None
            self._offsets, self._line_numbers = _index_lines(self.path)
        self._file = None
        self._file_pid = None

    def __len__(self) -> int:
        return len(self._entries) if self._offsets is None else len(self._offsets)

    def __getitem__(self, index: int) -> Utterance | BadEntry:
        if self._offsets is None:
            return self._entries[index]
        if self._file is None or self._file_pid != os.getpid():  # one handle per process
            self._file = self.path.open("rb")
            self._file_pid = os.getpid()
        self._file.seek(int(self._offsets[index]))
        line = self._file.readline()
        where = f"{self.path.name}:{self._line_numbers[index]}"
        return _parse_json_line(line, where, self.path)

    def __iter__(self) -> Iterator[Utterance | BadEntry]:
        return (self[i] for i in range(len(self)))

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_file_pid": None}


def read_manifest(path: str | Path, stats: SkipStats | None = None) -> Iterator[Utterance]:
    """The usable utterances of a manifest, data.list or Kaldi directory, in file order.

    Bad entries are skipped and counted in `stats` when given.
    """
    for entry in Manifest(path):
        if isinstance(entry, BadEntry):
            if stats is not None:
                stats.add(entry.key, entry.reason)
            continue
        yield entry


def check_unique_keys(manifest: Manifest) -> None:
    """UserError naming the keys that occur more than once (a decode would score them twice)."""
    counts = Counter(entry.key for entry in manifest)
    repeated = [key for key, count in counts.items() if count > 1]
    if repeated:
        more = f" (+{len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise UserError(
            f"{manifest.path}: duplicated keys {', '.join(repeated[:5])}{more}; "
            "give every utterance its own key"
        )


def _check_text(path: Path) -> None:
    """A manifest is text (never a NUL byte); an audio file in its place is named as such."""
    with path.open("rb") as f:
        if b"\0" in f.read(4096):
            raise UserError(f"{path}: not a text manifest (binary data; an audio file?)")


def _index_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and 1-based numbers of the non-blank lines of a text file, int64 (N,) each."""
    offsets, numbers = [], []
    position = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                offsets.append(position)
                numbers.append(number)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(numbers, dtype=np.int64)


def _parse_json_line(line: bytes, where: str, manifest: Path) -> Utterance | BadEntry:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return BadEntry(where, "invalid JSON")
    if not isinstance(obj, dict):
        return BadEntry(where, "invalid JSON")
    key, problem = _pop_string(obj, ("key",))
    if problem:
        return BadEntry(where, problem)
    audio, problem = _pop_string(obj, ("audio", "wav"))
    text, text_problem = _pop_string(obj, ("text", "txt"), empty_ok=True)
    if problem or text_problem:
        return BadEntry(key, problem or text_problem)
    try:
        duration = _optional_float(obj.pop("duration", None))
        start = _optional_float(obj.pop("start", None)) or 0.0
        end = _optional_float(obj.pop("end", None))
    except (TypeError, ValueError):
        return BadEntry(key, "invalid duration/start/end")
    if problem := _segment_problem(start, end):
        return BadEntry(key, problem)
    if not audio.rstrip().endswith("|"):
        audio = str((manifest.parent / audio).absolute())
    if duration is None and end is not None:
        duration = end - start
    return Utterance(key, audio, normalize_text(text), duration, start, end, obj)


def normalize_text(text: str) -> str:
    """Runs of whitespace become one space, none at the ends (no empty words)."""
    return " ".join(text.split())


def _pop_string(obj: dict, names: tuple[str, ...], empty_ok: bool = False) -> tuple[str, str]:
    """(value, "") for the first of `names` in `obj` (popped), else ("", the problem)."""
    for name in names:
        if name in obj:
            value = obj.pop(name)
            if not isinstance(value, str):
                return "", f"field '{name}' is not a string"
            if value or empty_ok:
                return value, ""
            return "", f"field '{name}' is empty"
    return "", f"missing field '{names[0]}'"


def _segment_problem(start: float, end: float | None) -> str:
    try:
        check_segment("", start, end)
    except AudioError as e:
        return e.reason
    return ""


def _optional_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(value)  # JSON may hold NaN and Infinity
    return float(value)


def _read_table(path: Path, required: bool = True) -> dict[str, str]:
    """A Kaldi table: `<id> <value...>` per line."""
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing from the Kaldi data directory")
        return {}
    table = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            table[parts[0]] = parts[1] if len(parts) > 1 else ""
    return table


def _read_kaldi_dir(directory: Path) -> list[Utterance | BadEntry]:
    wavs = _read_table(directory / "wav.scp")
    texts = _read_table(directory / "text")
    segments = _read_table(directory / "segments", required=False)
    speakers = _read_table(directory / "utt2spk", required=False)
    keys = list(texts) if segments else list(dict.fromkeys([*wavs, *texts]))
    entries: list[Utterance | BadEntry] = []
    for key in keys:
        if key not in texts:
            entries.append(BadEntry(key, "no transcript in text"))
            continue
        start, end, recording = 0.0, None, key
        if segments:
            fields = segments.get(key, "").split()
            try:
                recording, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                entries.append(BadEntry(key, "no valid line in segments"))
                continue
            end = None if end < 0 else end  # Kaldi: -1 means the end of the recording
            if problem := _segment_problem(start, end):
                entries.append(BadEntry(key, problem))
                continue
        if recording not in wavs:
            entries.append(BadEntry(key, "no audio in wav.scp"))
            continue
        audio = wavs[recording].strip()
        if not audio.endswith("|"):
            audio = str(Path(audio).absolute())
        extra = {"speaker": speakers[key]} if key in speakers else {}
        duration = None if end is None else end - start
        entries.append(
            Utterance(key, audio, normalize_text(texts[key]), duration, start, end, extra)
        )
    return entries


def _read_lhotse_cuts(path: Path) -> list[Utterance | BadEntry]:
    """One utterance per cut: the recording's file (or command) from the cut's start, for its
    duration, with its supervisions' text."""
    try:
        from lhotse import load_manifest_lazy
    except ImportError:
        raise UserError(
            f"{path}: reading lhotse cuts needs lhotse (pip install 'u2moe[lhotse]')"
        ) from None
    try:
        cuts = list(load_manifest_lazy(path))
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a lhotse CutSet ({type(e).__name__}: {e})") from None
    entries: list[Utterance | BadEntry] = []
    for cut in cuts:
        recording = getattr(cut, "recording", None)
        if recording is None or len(recording.sources) != 1:
            entries.append(BadEntry(cut.id, "lhotse cut without one recording source"))
            continue
        if not cut.supervisions:
            entries.append(BadEntry(cut.id, "lhotse cut without supervision"))
            continue
        source = recording.sources[0]
        if source.type == "file":
            audio = str(Path(source.source).absolute())
        elif source.type == "command":
            audio = f"{source.source} |"
        else:
            entries.append(BadEntry(cut.id, f"lhotse {source.type} source not supported"))
            continue
        text = " ".join(s.text or "" for s in cut.supervisions).strip()
        extra = {"speaker": cut.supervisions[0].speaker} if cut.supervisions[0].speaker else {}
        start, end = cut.start, cut.start + cut.duration
        entries.append(Utterance(cut.id, audio, text, cut.duration, start, end, extra))
    return entries
