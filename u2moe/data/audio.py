"""Audio input: any format libsndfile reads (WAV, FLAC, OGG, ...) as 16 kHz mono float32.

Samples are in [-1, 1]; `features.compute_fbank` scales them to the int16 range as WeNet does.
A Kaldi `wav.scp` entry may also be a shell command ending in `|` that writes audio to stdout.
"""

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from u2moe.errors import UserError

SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 8000  # lower rates lack most of the speech band
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
        return samples.astype(np.float32)
    raise AudioError(name, "unsupported sample type", f"{samples.dtype}; use int16 or float")


def pcm16_samples(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes (an even number) -> float32 samples in [-1, 1]."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / INT16_SCALE


def resample(samples: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Band-limited resampling with libsoxr (1-D float32 in, 1-D float32 out)."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Read `path` (or the part from `start` to `end` seconds) as 16 kHz mono float32, shape (N,).

    Other sample rates are resampled, channels are averaged. Raises AudioError (a UserError)
    naming the file for a missing, unreadable, truncated or empty file.
    """
    spec = str(path).strip()
    if spec.endswith("|"):
        samples, rate = _read_pipe(spec[:-1].strip())
        samples = samples[int(start * rate) : None if end is None else int(end * rate)]
    else:
        if not Path(spec).is_file():
            raise AudioError(spec, "audio file not found")
        if Path(spec).stat().st_size == 0:
            raise AudioError(spec, "empty audio")
        try:
            info = sf.info(spec)
            _check_complete(spec, info)
            rate = info.samplerate
            stop = None if end is None else int(round(end * rate))
            samples, _ = sf.read(
                spec, dtype="float32", always_2d=True, start=int(round(start * rate)), stop=stop
            )
        except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as e:
            raise AudioError(spec, "unreadable audio", str(e).splitlines()[0]) from None
    if samples.shape[0] == 0:
        raise AudioError(spec, "empty audio")
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(spec, "unsupported sample rate", f"{rate} Hz; need 8 kHz+")
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
    try:
        samples, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(command, "unreadable audio", str(e).splitlines()[0]) from None
    return samples, rate
