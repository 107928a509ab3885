"""The training data loader: a manifest vs local tar shards, 0/1/2 workers, side by side.

    python benchmarks/loader.py --data CORPUS/train.jsonl            # any manifest
    python benchmarks/loader.py --data CORPUS/train.jsonl --config configs/tiny.yaml

The manifest is sharded once into a temporary folder (`--per-shard` utterances each); a char
tokenizer is trained on its texts (the config's tokenizer is not used). Each variant then
loads one training epoch, the config's first augmented one (augment.start_epoch: speed
perturbation, dither, SpecAugment and SpecSub as configured, fbank included) through
`make_dataloader`, repetitions interleaved (manifest 0, shards 0, manifest 1, ...) and the
median taken, so the ratios compare like with like on a shared machine. Printed per variant:
utterances per second, the ratio to the manifest with the same workers, and the fraction of
padding (padded frames / all frames of the batches: bucketing at work; the shards' shuffle
buffer feeds the same bucket size).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from u2moe.config import load_yaml, parse_section
from u2moe.data.config import DataConfig, TokenizerConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.manifest import read_manifest
from u2moe.data.shards import write_shards
from u2moe.data.tokenizer import train_tokenizer


def load_epoch(source: Path, cfg: DataConfig, tokenizer) -> tuple[float, int, float]:
    """(seconds, utterances, padding fraction) of the first augmented training epoch."""
    start = time.perf_counter()
    utterances = real = padded = 0
    epoch = cfg.augment.start_epoch
    for batch in make_dataloader(source, cfg, tokenizer, train=True, seed=0, epoch=epoch):
        feats, lengths = batch["feats"], batch["feats_lengths"]
        utterances += len(lengths)
        real += int(lengths.sum())
        padded += feats.shape[0] * feats.shape[1]
    return time.perf_counter() - start, utterances, 1 - real / max(padded, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a manifest to load")
    parser.add_argument("--config", type=Path, help="a YAML config whose data section to use")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    raw = load_yaml(args.config).get("data") if args.config else None

    with tempfile.TemporaryDirectory() as tmp:
        texts = [u.text for u in read_manifest(args.data)]
        tokenizer = train_tokenizer(texts, TokenizerConfig(), Path(tmp))  # chars: any corpus
        shards, count, _ = write_shards(args.data, Path(tmp) / "shards", args.per_shard, 2)
        print(f"{args.data}: {count} utterances, {len(shards.read_text().split())} shards")
        sources = {"manifest": args.data, "shards": shards}
        runs: dict[tuple[str, int], list[tuple[float, int, float]]] = {}
        for _ in range(args.repeats):
            for workers in args.workers:
                for name, source in sources.items():
                    cfg = parse_section(DataConfig, raw, "data")
                    cfg.batch.num_workers = workers
                    runs.setdefault((name, workers), []).append(load_epoch(source, cfg, tokenizer))

    print(f"{'source':10} {'workers':>7} {'utt/s':>8} {'x manifest':>10} {'padding':>8}")
    for workers in args.workers:
        rates = {}
        for name in sources:
            seconds = statistics.median(run[0] for run in runs[name, workers])
            _, utterances, padding = runs[name, workers][0]
            rates[name] = utterances / seconds
            ratio = rates[name] / rates["manifest"]
            print(f"{name:10} {workers:>7} {rates[name]:>8.1f} {ratio:>10.2f} {padding:>8.3f}")


if __name__ == "__main__":
    main()
