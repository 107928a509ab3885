"""PNG plots drawn at the end of training from metrics.jsonl records."""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

from u2moe.data.files import atomic_path  # noqa: E402


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_losses(records: list[dict], path: Path) -> None:
    """Train and dev losses (total, CTC, attention) and dev WER against optimizer steps."""
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in [
        ("train/loss", "C0-"),
        ("train/loss_ctc", "C1-"),
        ("train/loss_att", "C2-"),
        ("dev/loss", "C0o--"),
        ("dev/loss_ctc", "C1o--"),
        ("dev/loss_att", "C2o--"),
    ]:
        steps, values = _series(records, key)
        if steps:
            ax_loss.plot(steps, values, style, label=key, markersize=4)
    ax_loss.set(xlabel="step", ylabel="loss", title="losses", yscale="log")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    steps, values = _series(records, "dev/wer")
    ax_wer.plot(steps, values, "C3o-", markersize=4)
    ax_wer.set(xlabel="step", ylabel="WER (%)", title="dev WER (CTC greedy)")
    ax_wer.grid(alpha=0.3)
    _save(fig, path)


def plot_expert_heatmap(fractions: dict[str, list[float]], path: Path, title: str) -> None:
    """Layers x experts, colour = fraction of frames routed to the expert. Layers may have
    different expert counts (encoder and decoder): a shorter row is blank past its end."""
    plot_heatmap(fractions, path, title, "expert", "fraction of frames")


def plot_heatmap(
    rows: dict[str, list[float]], path: Path, title: str, xlabel: str, label: str
) -> None:
    """One row per name, one cell per value (columns numbered); rows may differ in length
    (a shorter row is blank past its end). label: what the colour means."""
    names = list(rows)
    grid = np.full((len(names), max(map(len, rows.values()))), np.nan)
    for row, name in zip(grid, names, strict=True):
        row[: len(rows[name])] = rows[name]
    fig, ax = plt.subplots(figsize=(2 + 0.5 * grid.shape[1], 1 + 0.28 * len(names)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(grid.shape[1]))
    ax.set(xlabel=xlabel, title=title)
    fig.colorbar(image, ax=ax, label=label)
    _save(fig, path)
