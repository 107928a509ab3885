"""Audio input: any format libsndfile reads (WAV, FLAC, OGG, ...) as 16 kHz mono float32.

Samples are in [-1, 1]; `features.compute_fbank` scales them to the int16 range as WeNet does.
A Kaldi `wav.scp` entry may also be a shell command ending in `|` that writes audio to stdout.
"""

import io
import logging
import math
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from u2moe.errors import UserError

SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 8000  # lower rates lack most of the speech band
MAX_SAMPLE_RATE = 384000  # the highest rate audio equipment records at
# Float audio peaking above this is not scaled to [-1, 1]: most often int16 values stored
# as float (peaks in the thousands); mild clipping of a float file stays below it.
MAX_FLOAT_PEAK = 2.0
# Segment ends within this much past the audio are taken as the end: timestamps rounded to
# 10 ms (Kaldi segments) may overshoot the last sample by less than that.
END_TOLERANCE = 0.01

log = logging.getLogger(__name__)
INT16_SCALE = 32768.0  # float samples in [-1, 1] <-> the int16 range

# libsndfile's log for a WAV whose data chunk is shorter than its header says.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # streaming writers leave these in the header


class AudioError(UserError):
    """An audio file that cannot be used; `reason` is a short label for skip counts."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


def float_samples(audio, name: str = "audio") -> np.ndarray:
    """1-D int16 or float samples -> float32 in [-1, 1]; AudioError for anything else."""
    samples = np.asarray(audio)
    if samples.ndim != 1:
        raise AudioError(name, "not mono audio", f"samples of shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / INT16_SCALE
    if np.issubdtype(samples.dtype, np.floating):
        return check_finite(samples.astype(np.float32), name)
    raise AudioError(name, "unsupported sample type", f"{samples.dtype}; use int16 or float")


def pcm16_samples(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes (an even number) -> float32 samples in [-1, 1]."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / INT16_SCALE


def resample(samples: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Band-limited resampling with libsoxr (1-D float32 in, 1-D float32 out)."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Read `path` (or the part from `start` to `end` seconds) as 16 kHz mono float32, shape (N,).

    `path` is a file name, a `wav.scp` command ending in `|`, or a binary file object
    (io.BytesIO). Other sample rates are resampled, channels are averaged. Raises AudioError
    (a UserError) naming the file for a missing, unreadable, truncated, empty or non-finite
    file, and for a segment that is not inside the audio.
    """
    if not isinstance(path, str | Path):
        return _load_file_object(path, start, end)
    spec = str(path).strip()
    check_segment(spec, start, end)
    if spec.endswith("|"):
        samples, rate = _read_pipe(spec[:-1].strip())
    else:
        _check_regular_file(spec)
        try:
            info = sf.info(spec)
            _check_complete(spec, info)
            samples, rate = _read_part(spec, info, start, end)
        except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as e:
            raise AudioError(spec, "unreadable audio", str(e).splitlines()[0]) from None
        start, end = 0.0, None  # read already
    return _to_16k_mono(spec, samples, rate, start, end)


def source_name(audio) -> str:
    """How messages name an audio source: the path, or a file object's name or type."""
    if isinstance(audio, str | Path):
        return str(audio)
    return str(getattr(audio, "name", "") or f"<{type(audio).__name__}>")


def check_sample_rate(name: str, rate) -> None:
    """AudioError unless `rate` is a number of Hz the features can use (8 to 384 kHz)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise AudioError(name, "invalid sample rate", f"{rate!r}; give a number of Hz")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:  # NaN too
        raise AudioError(name, "unsupported sample rate", f"{rate} Hz; need 8 to 384 kHz")


def decode_audio(data: bytes, name: str) -> np.ndarray:
    """The bytes of a whole audio file (a tar shard member) as `load_audio` returns a file.

    name: where the bytes came from, for error messages.
    """
    try:
        _check_complete(name, sf.info(io.BytesIO(data)))
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as e:
        raise AudioError(name, "unreadable audio", str(e).splitlines()[0]) from None
    samples, rate = _read_object(io.BytesIO(data), name)
    return _to_16k_mono(name, samples, rate, 0.0, None)


def check_segment(name: str, start: float, end: float | None) -> None:
    """AudioError unless 0 <= start < end, both finite (end None: the end of the audio)."""
    end_ok = end is None or (math.isfinite(end) and end > start)
    if not (math.isfinite(start) and start >= 0 and end_ok):
        raise AudioError(name, "invalid segment", f"start {start} s, end {end} s")


def check_finite(samples: np.ndarray, name: str) -> np.ndarray:
    """`samples` (float) if every one is finite, else AudioError naming `name`. Also warns,
    naming the likely cause, when float samples reach far outside [-1, 1]."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = samples.size - int(np.count_nonzero(finite))
        raise AudioError(name, "non-finite samples", f"{bad} NaN or Inf of {samples.size}")
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > MAX_FLOAT_PEAK:
        log.warning(
            "%s: float samples reach %.0f, far outside [-1, 1]: likely int16 values stored as "
            "float (divide them by 32768)",
            name,
            peak,
        )
    return samples


def _check_regular_file(spec: str) -> None:
    path = Path(spec)
    if path.is_dir():
        raise AudioError(spec, "not an audio file", "a directory")
    if not path.exists():
        raise AudioError(spec, "audio file not found")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise AudioError(spec, "not an audio file", kind)
    if path.stat().st_size == 0:
        raise AudioError(spec, "empty audio")


def _read_part(spec: str, info, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """Samples (N, channels) of the segment, checked to lie inside the file."""
    first, stop = _segment_frames(spec, start, end, info.samplerate, info.frames)
    samples, _ = sf.read(spec, dtype="float32", always_2d=True, start=first, stop=stop)
    return samples, info.samplerate


def _segment_frames(
    name: str, start: float, end: float | None, rate: int, frames: int
) -> tuple[int, int | None]:
    """(first, stop) sample of start..end in audio of `frames` samples, or AudioError when
    the segment does not lie inside it (never a silent cut)."""
    first = int(round(start * rate))
    stop = None if end is None else int(round(end * rate))
    if (first > 0 and first >= frames) or (
        stop is not None and stop > frames + END_TOLERANCE * rate
    ):
        raise AudioError(
            name,
            "segment outside the audio",
            f"start {start} s, end {end} s; the audio has {frames / rate:.2f} s",
        )
    return first, stop


def _load_file_object(file, start: float, end: float | None) -> np.ndarray:
    """An open binary file (io.BytesIO, ...); its `name`, if any, names it in errors."""
    name = source_name(file)
    check_segment(name, start, end)
    samples, rate = _read_object(file, name)
    return _to_16k_mono(name, samples, rate, start, end)


def _read_object(file, name: str) -> tuple[np.ndarray, int]:
    """Samples (N, channels) and rate of a file object holding a whole audio file."""
    try:
        samples, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError, TypeError) as e:
        raise AudioError(name, "unreadable audio", str(e).splitlines()[0]) from None
    return samples, rate


def _to_16k_mono(
    name: str, samples: np.ndarray, rate: int, start: float, end: float | None
) -> np.ndarray:
    """(N, channels) samples at `rate`, cut to start..end when not yet -> 16 kHz mono (N,)."""
    if start > 0 or end is not None:
        first, stop = _segment_frames(name, start, end, rate, len(samples))
        samples = samples[first:stop]
    if samples.shape[0] == 0:
        raise AudioError(name, "empty audio")
    check_sample_rate(name, rate)
    check_finite(samples, name)
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    return resample(np.ascontiguousarray(mono), rate, SAMPLE_RATE)


def _check_complete(path: str, info) -> None:
    """libsndfile reads a cut-off WAV silently; its log tells the declared and real sizes."""
    match = _SHORT_DATA.search(info.extra_info)
    if match:
        declared, actual = int(match.group(1)), int(match.group(2))
        if declared > actual and declared not in _UNKNOWN_SIZES:
            raise AudioError(path, "truncated audio", f"{actual} of {declared} data bytes")


def _read_pipe(command: str) -> tuple[np.ndarray, int]:
    """Run a wav.scp command such as `flac -c -d -s a.flac` and read the audio it prints."""
    result = subprocess.run(command, shell=True, capture_output=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(command, "audio command failed", detail[-1] if detail else "")
    return _read_object(io.BytesIO(result.stdout), command)
