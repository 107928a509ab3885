"""What a training run reports: TensorBoard scalars, a metrics file, expert utilization.

Rank 0 writes `tensorboard/` (for `tensorboard --logdir EXP`) and `metrics.jsonl` (one JSON
record per log point, appended across resumes; the plots at the end are drawn from it).
"""

import json
import logging
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from u2moe.data.files import append_text, write_text_atomic
from u2moe.model.moe import ExpertCounts


class MetricsLog:
    """Scalars to TensorBoard and to metrics.jsonl: `log(step, {"train/loss": ...})`.

    A run resumed from step `start_step` first drops what a stopped run logged after it
    (from both), since those steps are about to be repeated.
    """

    def __init__(self, exp_dir: Path, start_step: int = 0):
        self.path = exp_dir / "metrics.jsonl"
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= start_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(exp_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        append_text(self.path, json.dumps({"step": step, **scalars}) + "\n")

    def records(self) -> list[dict[str, float]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def close(self) -> None:
        self.writer.close()


class ExpertMonitor(ExpertCounts):
    """Expert utilization for the training logs: `ExpertCounts` plus the scalars logged."""

    def scalars(self, prefix: str) -> dict[str, float]:
        """Scalars `{prefix}/{layer}/{expert}` (fraction of frames) and, per layer,
        `{prefix}_busiest/{layer}`: the busiest expert's fraction over the uniform share
        (1.0: perfectly balanced; n_experts / top_k: one expert takes every frame)."""
        out = {}
        for name, fractions in self.fractions().items():
            for e, value in enumerate(fractions):
                out[f"{prefix}/{name}/{e}"] = value
            uniform = self.layers[name].top_k / len(fractions)
            out[f"{prefix}_busiest/{name}"] = max(fractions) / uniform
        return out


def fractions_from_record(records: list[dict], prefix: str) -> dict[str, list[float]]:
    """{layer: [fraction per expert]} from the last record holding `{prefix}/...` scalars."""
    for record in reversed(records):
        layers: dict[str, dict[int, float]] = {}
        for key, value in record.items():
            if key.startswith(prefix + "/"):
                layer, expert = key[len(prefix) + 1 :].rsplit("/", 1)
                layers.setdefault(layer, {})[int(expert)] = value
        if layers:
            return {name: [e[i] for i in sorted(e)] for name, e in layers.items()}
    return {}


_handlers: list[logging.Handler] = []  # what setup_logging attached, for close_logging


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(log_file: Path | None) -> None:
    """u2moe messages (training, data skips) to the console and, on rank 0, to `log_file`.

    Other ranks log warnings only, so a person reads one stream.
    """
    logger = logging.getLogger("u2moe")
    close_logging()
    logger.propagate = False
    logger.setLevel(logging.INFO if log_file else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    _handlers.extend(handlers)


def close_logging() -> None:
    """Detach what `setup_logging` attached (the log file is closed)."""
    logger = logging.getLogger("u2moe")
    for handler in _handlers:
        logger.removeHandler(handler)
        handler.close()
    _handlers.clear()
    logger.propagate = True
