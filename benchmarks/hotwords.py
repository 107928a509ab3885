"""Hotwords, measured once: recall of rare words with and without a context list, and the
WER cost on utterances that hold none of them (false alarms).

    python benchmarks/hotwords.py --model exp/demo/exp/moe --data exp/demo/data \
        [--words 30] [--context-score 2.0] [--mode attention_rescoring]

The listed words are the test split's words that are rarest in the training transcripts
(seen at most --max-train-count times, longest first: the ones a model misspells); the
context file holds each once. Every test utterance is decoded twice, without and with the
list; recall counts, over the test utterances holding a listed word, how many of those
word occurrences the transcript has.
"""

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path


def read(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--data", required=True, type=Path, help="prepared data directory")
    parser.add_argument("--words", type=int, default=30, help="words in the context list")
    parser.add_argument("--max-train-count", type=int, default=3)
    parser.add_argument("--context-score", type=float, default=2.0)
    parser.add_argument("--mode", default="attention_rescoring")
    args = parser.parse_args()

    import u2moe
    from u2moe.decode.scoring import ErrorCounts, word_errors

    train = Counter(w for e in read(args.data / "train.jsonl") for w in e["text"].split())
    test = read(args.data / "test.jsonl")
    in_test = Counter(w for e in test for w in set(e["text"].split()))
    rare = [w for w in in_test if train[w] <= args.max_train_count]
    listed = set(sorted(rare, key=lambda w: (-len(w), w))[: args.words])
    context = Path(tempfile.mkdtemp()) / "hotwords.txt"
    context.write_text("".join(f"{w}\n" for w in sorted(listed)))
    print(f"{len(listed)} listed words (train count <= {args.max_train_count}): "
          f"{', '.join(sorted(listed))}")  # fmt: skip

    options = {"modes": [args.mode]}
    plain = u2moe.load_model(args.model, **options)
    biased = u2moe.load_model(
        args.model, context=str(context), context_score=args.context_score, **options
    )
    found = {"without": 0, "with": 0}
    occurrences = 0
    clean = {"without": ErrorCounts(), "with": ErrorCounts()}
    for entry in test:
        audio = Path(entry["audio"])
        words = entry["text"].split()
        hyps = {"without": plain.transcribe(audio).text, "with": biased.transcribe(audio).text}
        targets = [w for w in words if w in listed]
        if targets:
            occurrences += len(targets)
            for name, hyp in hyps.items():
                counts = Counter(hyp.split())
                found[name] += sum(min(c, counts[w]) for w, c in Counter(targets).items())
        else:
            for name, hyp in hyps.items():
                clean[name] += word_errors(entry["text"], hyp)
    print(f"recall of listed words ({occurrences} occurrences): "
          f"without {100 * found['without'] / max(occurrences, 1):.1f}%, "
          f"with {100 * found['with'] / max(occurrences, 1):.1f}%")  # fmt: skip
    wer = {name: f"{100 * counts.rate:.2f}%" for name, counts in clean.items()}
    print(f"WER on the {clean['with'].ref_length} words of utterances without listed words: "
          f"without {wer['without']}, with {wer['with']}")  # fmt: skip


if __name__ == "__main__":
    main()
