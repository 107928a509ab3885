"""Global CMVN statistics in WeNet's `global_cmvn` JSON: per-bin sums, sums of squares, frames.

`u2moe prepare` accumulates them over (a sample of) the training set; the model turns them
into mean and inverse standard deviation buffers (`model.set_cmvn(*load_cmvn(path))`).
"""

import json
from pathlib import Path

import numpy as np
import torch

from u2moe.data.files import write_text_atomic
from u2moe.model.wenet import load_wenet_cmvn


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
    """`global_cmvn` (WeNet JSON or Kaldi text matrix) -> (mean (D,), istd (D,)) float32."""
    return load_wenet_cmvn(path)
