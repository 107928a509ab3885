"""Global CMVN statistics in WeNet's `global_cmvn` JSON: per-bin sums, sums of squares, frames.

`u2moe prepare` accumulates them over (a sample of) the training set; the model turns them
into mean and inverse standard deviation buffers (`model.set_cmvn(*load_cmvn(path))`).
"""

import json
import math
from pathlib import Path

import numpy as np
import torch

from u2moe.data.files import write_text_atomic
from u2moe.errors import UserError


class CmvnStats:
    """Running sums in float64, as Kaldi and WeNet keep them."""

    def __init__(self, dim: int):
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_squares = np.zeros(dim, dtype=np.float64)
        self.frames = 0

    def add(self, feats: np.ndarray) -> None:
        """feats: (T, dim) raw fbank of one utterance (numpy, or a CPU tensor)."""
        x = np.asarray(feats, dtype=np.float64)
        self.sum += x.sum(axis=0)
        self.sum_squares += (x * x).sum(axis=0)
        self.frames += x.shape[0]

    def merge(self, other: "CmvnStats") -> None:
        self.sum += other.sum
        self.sum_squares += other.sum_squares
        self.frames += other.frames

    def save(self, path: str | Path) -> None:
        stats = {
            "mean_stat": self.sum.tolist(),
            "var_stat": self.sum_squares.tolist(),
            "frame_num": self.frames,
        }
        write_text_atomic(path, json.dumps(stats) + "\n")


def load_cmvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """WeNet's global_cmvn (JSON `mean_stat/var_stat/frame_num`, or a Kaldi text matrix)
    -> (mean (D,), istd (D,)), computed in float64 as WeNet does."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such CMVN file")
    raw = path.read_bytes()
    if raw.startswith(b"\0B"):
        raise UserError(
            f"{path}: binary Kaldi CMVN is not supported; convert it with "
            f"`copy-matrix --binary=false {path} {path}.txt`"
        )
    text = raw.decode("utf-8", errors="replace")
    try:
        stats = json.loads(text)
        mean_stat, var_stat, count = stats["mean_stat"], stats["var_stat"], stats["frame_num"]
    except (json.JSONDecodeError, TypeError, KeyError):
        mean_stat, var_stat, count = _kaldi_cmvn_stats(text, path)
    return cmvn_from_stats(mean_stat, var_stat, count, str(path))


def cmvn_from_stats(
    mean_stat: list[float], var_stat: list[float], count: float, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums, sums of squares and frame count -> (mean (D,), istd (D,)) float32, computed
    in float64 with WeNet's variance floor of 1e-20."""
    numbers = (int, float)
    if (
        not isinstance(mean_stat, list)
        or not isinstance(var_stat, list)
        or not mean_stat
        or len(mean_stat) != len(var_stat)
        or not all(isinstance(x, numbers) for x in mean_stat + var_stat)
        or not isinstance(count, numbers)
        or count <= 0
    ):
        raise UserError(f"{where}: malformed CMVN statistics")
    means, istds = [], []
    for m, v in zip(mean_stat, var_stat, strict=True):
        mean = m / count
        var = max(v / count - mean * mean, 1.0e-20)
        means.append(mean)
        istds.append(1.0 / math.sqrt(var))
    return (
        torch.tensor(means, dtype=torch.float64).float(),
        torch.tensor(istds, dtype=torch.float64).float(),
    )


def _kaldi_cmvn_stats(text: str, path: Path) -> tuple[list[float], list[float], float]:
    """Kaldi text CMVN: `[ sum_1 .. sum_D count \\n sumsq_1 .. sumsq_D 0 ]`."""
    tokens = text.split()
    if len(tokens) < 6 or tokens[0] != "[" or tokens[-1] != "]" or (len(tokens) - 2) % 2:
        raise UserError(f"{path}: neither WeNet JSON CMVN nor a Kaldi text CMVN matrix")
    try:
        values = [float(t) for t in tokens[1:-1]]
    except ValueError:
        raise UserError(f"{path}: non-numeric value in the Kaldi CMVN matrix") from None
    dim = len(values) // 2 - 1
    return values[:dim], values[dim + 1 : 2 * dim + 1], values[dim]
