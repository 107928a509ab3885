"""Long audio: peak memory and time of `transcribe` for 1, 5, 20 and 60 minutes of audio,
the long-audio path (decode/transcriber.py: chunked attention, segments at endpoints) beside
the full-context one, each measured in a fresh process (peak RSS of that process).

    python benchmarks/long_audio.py --model exp/demo/exp/moe --manifest exp/demo/data/test.jsonl
    python benchmarks/long_audio.py --model DIR --manifest M --minutes 1 5 --full-context-up-to 5

The audio is the manifest's utterances (the demo's test split: unseen speakers) concatenated
with 0.5 s of silence between them, repeated until the duration is reached, so the words are
known: each row also gives the WER of the transcript against the concatenated references,
and the last line the WER of the same utterances decoded one by one (full context), which is
what the long-audio path costs in accuracy. Full context is run only up to
--full-context-up-to minutes: its attention memory grows with the square of the length.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

GAP_SECONDS = 0.5

CHILD = r"""
import json, resource, sys, time
import numpy as np, soundfile as sf
import u2moe
args = json.loads(sys.argv[1])
model = u2moe.load_model(args["model"], long_audio_seconds=args["long_audio_seconds"])
samples, _ = sf.read(args["wav"], dtype="float32")
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
text = model.transcribe(samples, timestamps=True).text
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "loaded_mb": loaded / 1024,
                  "text": text}))
"""


def build_audio(manifest: Path, minutes: float, out: Path) -> str:
    """Concatenate the manifest's utterances up to `minutes` into `out`; -> the reference."""
    import numpy as np
    import soundfile as sf

    from u2moe.data.audio import load_audio

    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    pieces, refs, total, i = [], [], 0, 0
    gap = np.zeros(int(16000 * GAP_SECONDS), np.float32)
    while total < minutes * 60 * 16000:
        entry = entries[i % len(entries)]
        audio = Path(entry["audio"])
        audio = audio if audio.is_absolute() else manifest.parent / audio
        pieces += [load_audio(audio), gap]
        refs.append(entry["text"])
        total += len(pieces[-2]) + len(gap)
        i += 1
    sf.write(out, np.concatenate(pieces), 16000, subtype="PCM_16")
    return " ".join(refs)


def run(model: str, wav: Path, long_audio_seconds: float) -> dict:
    argv = {"model": model, "wav": str(wav), "long_audio_seconds": long_audio_seconds}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_utterance_wer(model_dir: str, manifest: Path, count: int) -> float:
    """WER of the first `count` utterances decoded one by one, full context."""
    import u2moe
    from u2moe.decode.scoring import ErrorCounts, word_errors

    model = u2moe.load_model(model_dir)
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    errors = ErrorCounts()
    for entry in entries[:count]:
        audio = Path(entry["audio"])
        audio = audio if audio.is_absolute() else manifest.parent / audio
        errors += word_errors(entry["text"], model.transcribe(audio).text)
    return errors.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--manifest", required=True, type=Path, help="utterances to concatenate")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20, 60])
    parser.add_argument("--full-context-up-to", type=float, default=5.0, help="minutes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/u2moe-long-audio"))
    args = parser.parse_args()

    from u2moe.decode.scoring import word_errors

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{'minutes':>7} {'path':<13} {'seconds':>8} {'RTF':>7} {'peak MB':>8} "
          f"{'model MB':>8} {'WER':>7}")  # fmt: skip
    rows = {}
    for minutes in args.minutes:
        wav = args.work / f"{minutes:g}min.wav"
        ref = build_audio(args.manifest, minutes, wav)
        paths = [("long-audio", 1.0)]  # everything over 1 s takes the long-audio path
        if minutes <= args.full_context_up_to:
            paths.append(("full context", float("inf")))
        for name, threshold in paths:
            out = run(args.model, wav, threshold)
            if "error" in out:
                print(f"{minutes:7g} {name:<13} failed: {out['error']}")
                continue
            wer = word_errors(ref, out["text"]).rate
            rows[(minutes, name)] = out
            print(
                f"{minutes:7g} {name:<13} {out['seconds']:8.1f} "
                f"{out['seconds'] / (minutes * 60):7.4f} {out['peak_mb']:8.0f} "
                f"{out['loaded_mb']:8.0f} {100 * wer:6.2f}%",
                flush=True,
            )
    base = rows.get((5, "long-audio"))
    for minutes in args.minutes:
        row = rows.get((minutes, "long-audio"))
        if base and row and minutes > 5:
            linear = base["seconds"] * minutes / 5
            print(f"{minutes:g} min: {row['seconds'] / linear:.2f} x linear from 5 min")
    count = 100
    print(f"per-utterance full-context WER of the first {count} utterances: "
          f"{100 * per_utterance_wer(args.model, args.manifest, count):.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
