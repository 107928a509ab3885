"""Training-time augmentation: speed perturbation (on audio), SpecAugment and SpecSub (on fbank).

Each function takes the random generator explicitly, so a (seed, epoch, utterance) triple
always gives the same augmentation, whatever process computes it.
"""

import numpy as np
import torch

from u2moe.data.audio import SAMPLE_RATE, resample
from u2moe.data.config import SpecAugConfig, SpecSubConfig


def speed_perturb(samples: np.ndarray, speed: float) -> np.ndarray:
    """Play `speed` times faster (tempo and pitch, as sox `speed`): (N,) -> (~N / speed,)."""
    if speed == 1.0:
        return samples
    return resample(samples, SAMPLE_RATE * speed, SAMPLE_RATE)


def spec_augment(feats: torch.Tensor, cfg: SpecAugConfig, rng: np.random.Generator) -> torch.Tensor:
    """Zero `num_t_mask` spans of up to `max_t` frames and `num_f_mask` of up to `max_f` bins.

    feats: (T, F) -> a masked copy (T, F).
    """
    out = feats.clone()
    frames, bins = feats.shape
    for _ in range(cfg.num_t_mask if frames else 0):
        start = int(rng.integers(0, frames))
        out[start : start + int(rng.integers(1, cfg.max_t + 1)), :] = 0
    for _ in range(cfg.num_f_mask):
        start = int(rng.integers(0, bins))
        out[:, start : start + int(rng.integers(1, cfg.max_f + 1))] = 0
    return out


def spec_sub(feats: torch.Tensor, cfg: SpecSubConfig, rng: np.random.Generator) -> torch.Tensor:
    """Replace `num_t_sub` spans of up to `max_t` frames with a span that starts earlier.

    feats: (T, F) -> (T, F), a copy.
    """
    out = feats.clone()
    frames = feats.shape[0]
    for _ in range(cfg.num_t_sub if frames else 0):
        start = int(rng.integers(0, frames))
        end = min(frames, start + int(rng.integers(1, cfg.max_t + 1)))
        shift = int(rng.integers(0, start + 1))
        out[start:end] = feats[start - shift : end - shift]
    return out
