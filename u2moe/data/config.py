"""The `data:` section of a config: features, tokenizer, augmentation and batching.

Defaults follow WeNet's U2++ recipes, with batch sizes and worker counts for a small CPU.
"""

from dataclasses import dataclass, field
from typing import Literal

from u2moe.config import ConfigError, bounded


@dataclass
class FeatureConfig:
    """Kaldi-compatible log-mel filterbank (the options WeNet passes to torchaudio)."""

    num_mel_bins: int = bounded(80, ge=1)
    frame_length: float = bounded(25.0, gt=0)  # ms
    frame_shift: float = bounded(10.0, gt=0)  # ms, at most frame_length
    # Std of Gaussian noise in int16 units added to training audio (evaluation: none).
    dither: float = bounded(1.0, ge=0)
    # Lowest log-mel value: digital silence (log(eps) = -15.9) raised to it. Synthesized
    # audio holds long stretches of it, which doubled the global CMVN std and so halved the
    # normalized range of the speech (docs/TRAINING.md). None: off (WeNet).
    log_floor: float | None = None


@dataclass
class TokenizerConfig:
    """Modelling units; the files live in the prepared data (or model) directory."""

    type: Literal["char", "bpe"] = "char"
    vocab_size: int = bounded(
        500, ge=2
    )  # sentencepiece vocabulary for `bpe` (the model adds blank, sos/eos)
    units: str = "units.txt"
    bpe_model: str = "bpe.model"


@dataclass
class SpecAugConfig:
    """Time and frequency masks (zeros); 0 masks turn it off."""

    num_t_mask: int = bounded(2, ge=0)
    num_f_mask: int = bounded(2, ge=0)
    max_t: int = bounded(50, ge=0)  # frames
    max_f: int = bounded(10, ge=0)  # mel bins


@dataclass
class SpecSubConfig:
    """Replace short time spans with an earlier span of the same utterance; 0 turns it off."""

    num_t_sub: int = bounded(3, ge=0)
    max_t: int = bounded(30, ge=0)  # frames


@dataclass
class AugmentConfig:
    """Training-time augmentation; nothing here is applied at evaluation.

    `start_epoch`: epochs trained on clean features before speed perturbation, SpecAugment
    and SpecSub start. A small model on a few hours can stall on the CTC plateau (blank
    everywhere) when augmented from the first step; switched on once it has left the
    plateau, augmentation still regularizes (docs/TRAINING.md).
    """

    start_epoch: int = bounded(0, ge=0)
    speed_perturb: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    spec_aug: SpecAugConfig = field(default_factory=SpecAugConfig)
    spec_sub: SpecSubConfig = field(default_factory=SpecSubConfig)


@dataclass
class BatchConfig:
    """Dynamic batching by padded frames (batch size x longest utterance)."""

    max_frames_in_batch: int = bounded(12000, ge=1)
    bucket_size: int = bounded(500, ge=1)  # utterances sorted by length together before batching
    shuffle: bool = True  # training only: a fresh order per (seed, epoch)
    num_workers: int = bounded(1, ge=0)  # DataLoader workers (0: load in the training process)
    prefetch_factor: int = bounded(2, ge=1)  # batches each worker prepares ahead
    # Utterances outside [min_duration, max_duration] seconds (before speed perturbation) or
    # with more than max_tokens tokens are left out, counted as skipped.
    min_duration: float = bounded(0.1, ge=0)
    max_duration: float = bounded(40.0, gt=0)
    max_tokens: int = bounded(200, ge=1)


@dataclass
class DataConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)

    def __post_init__(self):
        feat, aug, batch = self.features, self.augment, self.batch
        speeds_ok = len(aug.speed_perturb) > 0 and all(0.5 <= s <= 2.0 for s in aug.speed_perturb)
        slowest = min(aug.speed_perturb) if speeds_ok else 1.0
        checks = [
            (
                feat.frame_shift <= feat.frame_length,
                "features.frame_shift must be in (0, frame_length]",
            ),
            (
                speeds_ok,
                f"augment.speed_perturb must list speeds in [0.5, 2], got {aug.speed_perturb}",
            ),
            (
                batch.min_duration < batch.max_duration,
                "batch.min_duration must be >= 0 and below batch.max_duration",
            ),
            (
                batch.max_duration / slowest * 1000 / feat.frame_shift <= batch.max_frames_in_batch,
                f"batch.max_duration {batch.max_duration} s (slowed by speed_perturb) is longer "
                f"than one batch of max_frames_in_batch {batch.max_frames_in_batch} frames",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
