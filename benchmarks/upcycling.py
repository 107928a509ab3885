"""Upcycling against training from scratch (UME's claim), read from finished runs: dev CTC
loss and dev WER (CTC greedy) at every validation, side by side, and a plot.

    python benchmarks/upcycling.py --scratch exp/demo/exp/moe --dense exp/demo/exp/dense \
        --upcycled exp/demo/exp/upcycled-moe --upcycled-from 2000 --out docs/upcycling.png

--upcycled is a run started with `u2moe train --init` from the dense run's step
--upcycled-from, upcycled (`u2moe upcycle`): its steps count on from there, and its curve
starts with the dense run's validations up to that step. The runs are made by the commands
in docs/TRAINING.md ("Upcycling against training from scratch").
"""

import argparse
import json
from pathlib import Path


def validations(exp: Path, offset: int = 0, until: int | None = None) -> dict[int, dict]:
    """step -> {"loss_ctc", "wer"} of each validation in `exp`/metrics.jsonl."""
    found = {}
    for line in (exp / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "dev/wer" in record and (until is None or record["step"] <= until):
            found[record["step"] + offset] = {
                "loss_ctc": record["dev/loss_ctc"],
                "wer": record["dev/wer"],
            }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", required=True, type=Path, help="MoE run from scratch")
    parser.add_argument("--dense", required=True, type=Path, help="dense run")
    parser.add_argument("--upcycled", required=True, type=Path, help="run from the upcycled model")
    parser.add_argument("--upcycled-from", required=True, type=int, help="dense step upcycled")
    parser.add_argument("--out", type=Path, help="PNG of the curves")
    args = parser.parse_args()

    start = args.upcycled_from
    runs = {
        "MoE from scratch": validations(args.scratch),
        "dense": validations(args.dense),
        f"dense to {start}, upcycled": validations(args.dense, until=start)
        | validations(args.upcycled, offset=start),
    }
    steps = sorted(set().union(*runs.values()))
    names = list(runs)
    print("| step | " + " | ".join(f"{n}: dev CTC loss / WER" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for step in steps:
        cells = []
        for run in runs.values():
            point = run.get(step)
            cells.append(f"{point['loss_ctc']:.1f} / {point['wer']:.2f}%" if point else "")
        print(f"| {step} | " + " | ".join(cells) + " |")

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
        for name, run in runs.items():
            points = sorted(run.items())
            xs = [s for s, _ in points]
            ax_loss.plot(xs, [p["loss_ctc"] for _, p in points], "o-", label=name, markersize=4)
            ax_wer.plot(xs, [p["wer"] for _, p in points], "o-", label=name, markersize=4)
        for ax in (ax_loss, ax_wer):
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax_loss.set(xlabel="step", ylabel="dev CTC loss", title="dev CTC loss")
        ax_wer.set(xlabel="step", ylabel="WER (%)", title="dev WER (CTC greedy)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110, bbox_inches="tight")
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
