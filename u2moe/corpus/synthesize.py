"""Running the engines: one utterance -> one 16 kHz mono 16-bit WAV, in parallel workers.

Each engine writes its own native format to a scratch file; sox turns that into the final
form (tempo, pitch, level, padding, 16 kHz mono 16-bit) under a temporary name in the output
folder, and only a file that reads back whole is renamed into place. So a killed run leaves
finished files and `.partial.wav` scraps, never a truncated `<key>.wav`.
"""

import multiprocessing
import os
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 16000
PARTIAL_SUFFIX = ".partial.wav"


@dataclass(frozen=True)
class Variation:
    """How one utterance departs from the voice's default delivery."""

    speed: int | None  # espeak-ng words per minute (espeak-ng and mbrola voices), else None
    pitch: int | None  # espeak-ng pitch 0-99, else None
    tempo: float  # sox tempo factor (1.0 for espeak-driven voices: they vary `speed`)
    cents: int  # sox pitch shift (0 for espeak-driven voices: they vary `pitch`)
    gain_db: float  # peak level of the result, dBFS
    pad_start: float  # seconds of silence before the speech
    pad_end: float  # and after


@dataclass(frozen=True)
class Job:
    """Everything needed to make `wavs/<key>.wav`; equal jobs make identical files."""

    key: str
    engine: str
    engine_voice: str
    text: str
    variation: Variation


class Festival:
    """One festival process kept alive: it takes 0.4 s to start and ~0.05 s per sentence."""

    _DONE = "u2moe-festival-done"

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["festival", "--pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.voice: str | None = None

    def _run(self, command: str) -> None:
        # stdout is block-buffered in a pipe; stderr is not, so the marker goes there.
        self.process.stdin.write(f'{command}\n(format stderr "{self._DONE}\\n")\n')
        self.process.stdin.flush()
        messages = []
        while (line := self.process.stderr.readline()) and self._DONE not in line:
            messages.append(line.strip())
        if not line:
            raise RuntimeError(f"festival exited: {' '.join(messages)[-300:]}")
        if any("error" in m.lower() for m in messages):
            raise RuntimeError(f"festival: {' '.join(messages)[-300:]}")

    def say(self, voice: str, text: str, path: Path) -> None:
        if voice != self.voice:
            self._run(f"(voice_{voice})")
            self.voice = voice
        self._run(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{path}" \'riff)')

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


_festival: Festival | None = None  # one per worker process, started on its first festival job


def engine_command(job: Job, raw: Path) -> tuple[list[str], str | None]:
    """(argv, stdin text) that makes the engine write `job` to `raw` in its native format."""
    v, name, text = job.variation, job.engine_voice, job.text
    if job.engine in ("espeak-ng", "mbrola"):  # mbrola voices are driven through espeak-ng
        return ["espeak-ng", "-v", name, "-s", str(v.speed), "-p", str(v.pitch), "-w", str(raw),
                text], None  # fmt: skip
    if job.engine == "flite":
        return ["flite", "-voice", name, "-t", text, "-o", str(raw)], None
    if job.engine == "pico":
        return ["pico2wave", "-l", name, "-w", str(raw), text], None
    if job.engine == "rhvoice":
        return ["RHVoice-test", "-p", name, "-o", str(raw)], text
    raise ValueError(f"no command for engine {job.engine!r}")


def sox_command(raw: Path, out: Path, v: Variation) -> list[str]:
    """Post-processing: mono, tempo/pitch, 16 kHz, peak level, padding, 16-bit (no dither,
    so the same job always gives the same bytes)."""
    effects = ["remix", "-"]
    if v.tempo != 1.0:
        effects += ["tempo", "-s", f"{v.tempo}"]
    if v.cents:
        effects += ["pitch", f"{v.cents}"]
    effects += ["rate", "-v", f"{SAMPLE_RATE}", "norm", f"{v.gain_db}"]
    effects += ["pad", f"{v.pad_start}", f"{v.pad_end}"]
    return ["sox", "-D", str(raw), "-b", "16", "-e", "signed-integer", str(out), *effects]


def wav_duration(path: Path) -> float | None:
    """Seconds of a complete 16 kHz mono 16-bit WAV, or None if the file is missing, empty,
    truncated, corrupt or of another format (such a file is made again)."""
    try:
        with wave.open(str(path), "rb") as w:
            n = w.getnframes()
            ok = (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
            if not ok or n == 0 or len(w.readframes(n)) != 2 * n:
                return None
            return n / SAMPLE_RATE
    except (OSError, EOFError, wave.Error):
        return None


def _run(argv: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()[-300:]}")


def synthesize(job: Job, wav_dir: Path) -> float:
    """Write `wav_dir/<key>.wav` for one job and return its duration in seconds."""
    global _festival
    final = wav_dir / f"{job.key}.wav"
    partial = wav_dir / f"{job.key}{PARTIAL_SUFFIX}"
    with tempfile.TemporaryDirectory(prefix="u2moe-tts-") as scratch:
        raw = Path(scratch) / "raw.wav"  # pico2wave insists on a .wav name
        if job.engine == "festival":
            if _festival is None:
                _festival = Festival()
            try:
                _festival.say(job.engine_voice, job.text, raw)
            except (RuntimeError, OSError):
                _festival = None  # start a fresh one for the next job
                raise
        else:
            _run(*engine_command(job, raw))
        if not raw.exists() or raw.stat().st_size <= 44:
            raise RuntimeError(f"{job.engine} wrote no audio")
        _run(sox_command(raw, partial, job.variation))
    duration = wav_duration(partial)
    if duration is None:
        partial.unlink(missing_ok=True)
        raise RuntimeError("sox wrote an unreadable file")
    os.replace(partial, final)
    return duration


def _work(args: tuple[Job, Path]) -> tuple[str, float | None, str | None]:
    job, wav_dir = args
    try:
        return job.key, synthesize(job, wav_dir), None
    except (RuntimeError, OSError) as e:
        return job.key, None, f"{job.engine} {job.engine_voice}: {e}"


def run_jobs(
    jobs: list[Job], wav_dir: Path, workers: int
) -> Iterator[tuple[str, float | None, str | None]]:
    """Synthesize in `workers` processes; yields (key, duration, error) as jobs finish.

    Festival-heavy and cheap jobs are interleaved by the caller's order; chunks of one job
    keep the progress bar honest and the load balanced.
    """
    if workers <= 1:
        yield from map(_work, ((job, wav_dir) for job in jobs))
        return
    # spawn: workers start clean, whatever threads (torch, tqdm) the parent has.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_work, [(job, wav_dir) for job in jobs], chunksize=1)
