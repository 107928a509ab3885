"""Batches for training and evaluation, streamed from a manifest on disk.

Per epoch, each DataLoader worker of each rank takes a disjoint share of the utterances (a
permutation fixed by (seed, epoch) in training, file order in evaluation), loads audio,
applies speed perturbation, collects `bucket_size` utterances, sorts them by length and cuts
them into dynamic batches of at most `max_frames_in_batch` padded frames (batch size x
longest), whose order is shuffled within the bucket. Fbank, dither, SpecAugment and SpecSub are
computed when a batch is made. Every random choice comes from a generator seeded by
(seed, epoch, utterance index), so an epoch is reproducible whatever the worker count.

Bad utterances are skipped; each batch carries the skips its worker saw since its previous
batch, and `BatchLoader.stats` collects them in the training process.

Resuming within an epoch: `BatchLoader.state_dict()` records how many batches of each worker
were consumed; after `load_state_dict`, each worker replays its share without computing
features and continues with its first unconsumed batch (same workers and ranks required).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from u2moe.data.audio import SAMPLE_RATE, AudioError, load_audio
from u2moe.data.augment import spec_augment, spec_sub, speed_perturb
from u2moe.data.config import DataConfig
from u2moe.data.features import INT16_SCALE, compute_fbank, num_frames
from u2moe.data.manifest import BadEntry, Manifest
from u2moe.data.skips import SkipStats
from u2moe.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    """One utterance between loading and batching."""

    key: str
    samples: np.ndarray  # float32 (N,) at 16 kHz, speed-perturbed
    num_frames: int
    tokens: list[int]
    rng: np.random.Generator | None  # None at evaluation: no augmentation


class UtteranceBatches(IterableDataset):
    """Yields collated batches (see `collate`) for one epoch of one rank."""

    def __init__(
        self,
        manifest: Manifest,
        cfg: DataConfig,
        tokenizer: Tokenizer,
        train: bool,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
    ):
        self.manifest = manifest
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.train = train
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.resume: list[int] | None = None  # batches each worker skips (set by BatchLoader)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        shard_id = self.rank * num_workers + worker
        indices = self._order()[shard_id :: self.world_size * num_workers]
        to_skip = self.resume[worker] if self.resume else 0
        skipped: list[tuple[str, str]] = []
        produced = 0
        for bucket_number, bucket in enumerate(self._buckets(indices, skipped)):
            for batch in self._batches(bucket, bucket_number, shard_id):
                produced += 1
                if produced > to_skip:
                    feats = [self._features(item) for item in batch]
                    yield collate(batch, feats, list(skipped), worker)
                    skipped.clear()  # in place: _buckets appends to this same list
        if skipped:
            yield {"skipped": skipped, "worker": worker}

    @property
    def augmenting(self) -> bool:
        return self.train and self.epoch >= self.cfg.augment.start_epoch

    def _order(self) -> np.ndarray:
        if self.train and self.cfg.batch.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.manifest))
        return np.arange(len(self.manifest))

    def _buckets(self, indices: np.ndarray, skipped: list) -> Iterator[list[_Loaded]]:
        bucket = []
        for index in indices:
            item = self._load(int(index), skipped)
            if item is not None:
                bucket.append(item)
            if len(bucket) == self.cfg.batch.bucket_size:
                yield bucket
                bucket = []
        if bucket:
            yield bucket

    def _batches(self, bucket: list[_Loaded], number: int, shard_id: int) -> list[list[_Loaded]]:
        """Sort by length, pack while batch size x longest <= max_frames_in_batch."""
        limit = self.cfg.batch.max_frames_in_batch
        batches, batch, longest = [], [], 0
        for item in sorted(bucket, key=lambda item: item.num_frames):
            longest_with = max(longest, item.num_frames)
            if batch and (len(batch) + 1) * longest_with > limit:
                batches.append(batch)
                batch, longest_with = [], item.num_frames
            batch.append(item)
            longest = longest_with
        if batch:
            batches.append(batch)
        if self.train and self.cfg.batch.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, shard_id, number])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _load(self, index: int, skipped: list) -> _Loaded | None:
        """Read, check and speed-perturb one utterance; None (and a skip noted) if unusable."""
        entry = self.manifest[index]
        if isinstance(entry, BadEntry):
            skipped.append((entry.key, entry.reason))
            return None
        batch_cfg = self.cfg.batch
        reason = _duration_problem(entry.duration, batch_cfg.min_duration, batch_cfg.max_duration)
        tokens = self.tokenizer.encode(entry.text)
        if reason is None and not self.tokenizer.has_known_token(tokens):
            reason = "no known token"
        if reason is None and len(tokens) > batch_cfg.max_tokens:
            reason = "too many tokens"
        if reason is None:
            try:
                samples = load_audio(entry.audio, entry.start, entry.end)
            except AudioError as e:
                reason = e.reason
            except Exception as e:  # a bad file must not end training; the reason names it
                reason = f"audio error {type(e).__name__}"
        if reason is None:
            duration = len(samples) / SAMPLE_RATE
            reason = _duration_problem(duration, batch_cfg.min_duration, batch_cfg.max_duration)
        if reason is not None:
            skipped.append((entry.key, reason))
            return None
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.augmenting:
                speed = float(rng.choice(self.cfg.augment.speed_perturb))
                samples = speed_perturb(samples, speed)
        frames = num_frames(len(samples), self.cfg.features)
        return _Loaded(entry.key, samples, frames, tokens, rng)

    def _features(self, item: _Loaded) -> torch.Tensor:
        """(T, num_mel_bins): fbank, with dither and spectrum augmentation in training."""
        if item.rng is None:
            return torch.from_numpy(compute_fbank(item.samples, 0.0, self.cfg.features))
        # Dither drawn from the utterance's generator: knf's own RNG runs on per process, so
        # it would differ between worker layouts and after a resume that replays batches.
        noise = item.rng.standard_normal(len(item.samples), dtype=np.float32)
        dithered = item.samples + noise * np.float32(self.cfg.features.dither / INT16_SCALE)
        feats = torch.from_numpy(compute_fbank(dithered, 0.0, self.cfg.features))
        if not self.augmenting:
            return feats
        feats = spec_augment(feats, self.cfg.augment.spec_aug, item.rng)
        return spec_sub(feats, self.cfg.augment.spec_sub, item.rng)


def _duration_problem(duration: float | None, low: float, high: float) -> str | None:
    if duration is None:
        return None
    if duration < low:
        return "too short"
    if duration > high:
        return "too long"
    return None


def collate(
    items: list[_Loaded], feats: list[torch.Tensor], skipped: list, worker: int
) -> dict[str, object]:
    """Pad a batch, longest first: feats (B, T, F) with 0, targets (B, L) with -1."""
    order = sorted(range(len(items)), key=lambda i: -feats[i].shape[0])
    targets = [torch.tensor(items[i].tokens, dtype=torch.long) for i in order]
    return {
        "keys": [items[i].key for i in order],
        "feats": pad_sequence([feats[i] for i in order], batch_first=True, padding_value=0.0),
        "feats_lengths": torch.tensor([feats[i].shape[0] for i in order], dtype=torch.long),
        "targets": pad_sequence(targets, batch_first=True, padding_value=-1),
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        "skipped": skipped,
        "worker": worker,
    }


class BatchLoader:
    """Iterate for the batches of one epoch; `stats` holds the skips, `state_dict` the position.

    A completed pass starts the next pass from the beginning; a pass left early (or a
    `load_state_dict`) makes the next pass continue from the first unconsumed batch.
    """

    def __init__(self, dataset: UtteranceBatches, num_workers: int, prefetch_factor: int):
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.stats = SkipStats()
        self.worker_batches = [0] * max(1, num_workers)  # consumed batches per worker

    @property
    def batches(self) -> int:
        """Batches consumed so far in this epoch."""
        return sum(self.worker_batches)

    def __iter__(self) -> Iterator[dict]:
        self.dataset.resume = list(self.worker_batches)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            worker_init_fn=_init_worker,
        )
        for item in loader:
            for key, reason in item.pop("skipped"):
                if self.stats.add(key, reason):
                    log.warning("skipping utterance %s: %s", key, reason)
            worker = item.pop("worker")
            if "feats" in item:
                self.worker_batches[worker] += 1
                yield item
        if self.stats.total:
            log.warning("%s: %s", self.dataset.manifest.path, self.stats.summary())
        self.worker_batches = [0] * len(self.worker_batches)

    def state_dict(self) -> dict:
        dataset = self.dataset
        return {
            "epoch": dataset.epoch,
            "seed": dataset.seed,
            "rank": dataset.rank,
            "world_size": dataset.world_size,
            "num_workers": self.num_workers,
            "worker_batches": list(self.worker_batches),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue an interrupted epoch; a different epoch, seed or layout restarts it."""
        current = self.state_dict()
        layout = ("epoch", "seed", "rank", "world_size", "num_workers")
        if any(state.get(name) != current[name] for name in layout):
            log.warning(
                "data position %s does not match this loader %s: starting the epoch over",
                {name: state.get(name) for name in layout},
                {name: current[name] for name in layout},
            )
            return
        self.worker_batches = list(state["worker_batches"])


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # workers compute fbank; leave the cores to the model


def make_dataloader(
    manifest_path: str | Path,
    data_cfg: DataConfig,
    tokenizer: Tokenizer,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """Batches of one epoch of `manifest_path` (JSON lines, WeNet data.list or Kaldi dir).

    Each batch: keys (B,), feats (B, T, num_mel_bins) float32 padded with 0, feats_lengths
    (B,), targets (B, L) int64 padded with -1, target_lengths (B,). With `train`, the order is
    shuffled per (seed, epoch) and augmentation is on; otherwise neither.
    """
    dataset = UtteranceBatches(
        Manifest(manifest_path), data_cfg, tokenizer, train, seed, epoch, rank, world_size
    )
    return BatchLoader(dataset, data_cfg.batch.num_workers, data_cfg.batch.prefetch_factor)
