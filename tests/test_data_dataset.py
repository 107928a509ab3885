"""Dynamic batching, sharding, augmentation on/off, bad utterances, resumable position."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from u2moe.data.audio import load_audio
from u2moe.data.config import AugmentConfig, BatchConfig, DataConfig, FeatureConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import TokenizerConfig, train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog".split()
MAX_FRAMES = 600
BAD = {
    "empty": "empty audio",
    "truncated": "truncated audio",
    "garbage": "unreadable audio",
    "missing": "audio file not found",
    "unknown_text": "no known token",
    "too_long": "too long",
    "too_many_tokens": "too many tokens",
    "data.jsonl:3": "invalid JSON",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 good utterances (0.2-2 s) and one of each kind of bad one."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines, texts = [], {}
    for i in range(30):
        n = int(16000 * rng.uniform(0.2, 2.0))
        wave = 0.1 * np.sin(np.arange(n) * 0.02 * (i + 1)) + 0.01 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        texts[f"u{i}"] = " ".join(rng.choice(WORDS, 3))
        lines.append(json.dumps({"key": f"u{i}", "audio": f"u{i}.wav", "text": texts[f"u{i}"]}))
    good = (root / "u0.wav").read_bytes()
    (root / "empty.wav").write_bytes(b"")
    (root / "truncated.wav").write_bytes(good[: len(good) // 2])
    (root / "garbage.wav").write_bytes(rng.bytes(3000))
    sf.write(root / "long.wav", np.zeros(16000 * 4, np.float32), 16000)
    bad = {
        "empty": ("empty.wav", "the dog"),
        "truncated": ("truncated.wav", "the dog"),
        "garbage": ("garbage.wav", "the dog"),
        "missing": ("nowhere.wav", "the dog"),
        "unknown_text": ("u1.wav", "ÆØÅ 123"),
        "too_long": ("long.wav", "the dog"),
        "too_many_tokens": ("u2.wav", "the lazy dog " * 10),
    }
    for key, (audio, text) in bad.items():
        lines.insert(2 * len(lines) // 3, json.dumps({"key": key, "audio": audio, "text": text}))
    lines.insert(2, "{broken json")
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = train_tokenizer(texts.values(), TokenizerConfig(type="char"), root)
    return root / "data.jsonl", tokenizer, texts


def config(workers=0, augment=None, dither=1.0, shuffle=True):
    return DataConfig(
        features=FeatureConfig(dither=dither),
        augment=augment or AugmentConfig(),
        batch=BatchConfig(
            max_frames_in_batch=MAX_FRAMES,
            bucket_size=8,
            num_workers=workers,
            max_duration=3.0,
            max_tokens=30,
            shuffle=shuffle,
        ),
    )


def epoch_batches(corpus, cfg, train, **kwargs):
    manifest, tokenizer, _ = corpus
    loader = make_dataloader(manifest, cfg, tokenizer, train=train, **kwargs)
    return list(loader), loader


def all_keys(batches):
    return [key for batch in batches for key in batch["keys"]]


def test_eval_epoch_is_exact(corpus):
    batches, loader = epoch_batches(corpus, config(), train=False)
    _, tokenizer, texts = corpus
    assert sorted(all_keys(batches)) == sorted(texts)
    for batch in batches:
        feats, lengths = batch["feats"], batch["feats_lengths"]
        assert feats.shape[0] * feats.shape[1] <= MAX_FRAMES and feats.shape[2] == 80
        assert lengths.tolist() == sorted(lengths.tolist(), reverse=True)
        for i, key in enumerate(batch["keys"]):
            n = int(lengths[i])
            audio = load_audio(corpus[0].parent / f"{key}.wav")
            assert torch.equal(
                feats[i, :n], torch.from_numpy(compute_fbank(audio))
            )  # no dither, no augmentation
            assert torch.all(feats[i, n:] == 0)
            tokens = tokenizer.encode(texts[key])
            m = int(batch["target_lengths"][i])
            assert batch["targets"][i, :m].tolist() == tokens
            assert torch.all(batch["targets"][i, m:] == -1)
    assert dict(loader.stats.counts) == {reason: 1 for reason in BAD.values()}
    assert {reason: keys[0] for reason, keys in loader.stats.examples.items()} == {
        reason: key for key, reason in BAD.items()
    }


def test_batches_pack_sorted_lengths(corpus):
    batches, _ = epoch_batches(corpus, config(), train=False)
    sizes = [b["feats"].shape[0] for b in batches]
    assert max(sizes) > 1  # short utterances share batches
    padding = sum(
        int(b["feats"].shape[0] * b["feats"].shape[1] - b["feats_lengths"].sum()) for b in batches
    )
    frames = sum(int(b["feats_lengths"].sum()) for b in batches)
    assert padding < 0.5 * frames  # length bucketing keeps padding small


def test_train_epoch_with_workers_covers_everything_once(corpus):
    batches, loader = epoch_batches(corpus, config(workers=2), train=True, seed=3, epoch=1)
    keys = all_keys(batches)
    assert sorted(keys) == sorted(corpus[2]) and len(keys) == len(set(keys))
    assert all(b["feats"].shape[0] * b["feats"].shape[1] <= MAX_FRAMES for b in batches)
    assert loader.stats.total == len(BAD)  # skips reported from the worker processes


def test_two_ranks_are_disjoint_and_complete(corpus):
    shards = [
        all_keys(epoch_batches(corpus, config(), True, seed=0, epoch=2, rank=r, world_size=2)[0])
        for r in (0, 1)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(corpus[2])
    assert abs(len(shards[0]) - len(shards[1])) <= 2


def test_order_depends_on_seed_and_epoch(corpus):
    def order(**kwargs):
        return all_keys(epoch_batches(corpus, config(), True, **kwargs)[0])

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    fixed = config(augment=AugmentConfig(speed_perturb=[1.0]), shuffle=False)
    unshuffled = [all_keys(epoch_batches(corpus, fixed, True, seed=s)[0]) for s in (1, 2)]
    assert unshuffled[0] == unshuffled[1] == all_keys(epoch_batches(corpus, config(), False)[0])


def feats_by_key(corpus, cfg, train, epoch=0):
    batches, _ = epoch_batches(corpus, cfg, train, seed=5, epoch=epoch)
    return {
        key: b["feats"][i, : b["feats_lengths"][i]]
        for b in batches
        for i, key in enumerate(b["keys"])
    }


def test_augmentation_only_in_training(corpus):
    evaluation = feats_by_key(corpus, config(), False)
    trained = feats_by_key(corpus, config(), True)
    assert all(not torch.equal(trained[k], evaluation[k]) for k in evaluation)
    changed_length = sum(trained[k].shape[0] != evaluation[k].shape[0] for k in evaluation)
    assert changed_length > 5  # speed perturbation 0.9 / 1.1 on about two thirds
    masked = sum(bool((trained[k] == 0).all(dim=1).any()) for k in evaluation)
    assert masked > 20  # SpecAugment time masks
    plain = AugmentConfig(speed_perturb=[1.0])
    plain.spec_aug.num_t_mask = plain.spec_aug.num_f_mask = plain.spec_sub.num_t_sub = 0
    unaugmented = feats_by_key(corpus, config(augment=plain, dither=0.0), True)
    assert all(torch.equal(unaugmented[k], evaluation[k]) for k in evaluation)


def test_augmentation_starts_at_start_epoch(corpus):
    late = config(augment=AugmentConfig(start_epoch=2), dither=0.0)
    evaluation = feats_by_key(corpus, late, False)
    for epoch in (0, 1):
        clean = feats_by_key(corpus, late, True, epoch)
        assert all(torch.equal(clean[k], evaluation[k]) for k in evaluation)
    augmented = feats_by_key(corpus, late, True, epoch=2)
    assert sum(not torch.equal(augmented[k], evaluation[k]) for k in evaluation) > 20


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_within_an_epoch(corpus, workers):
    cfg = config(workers=workers)
    manifest, tokenizer, texts = corpus
    full = all_keys(epoch_batches(corpus, cfg, True, seed=7, epoch=4)[0])
    loader = make_dataloader(manifest, cfg, tokenizer, train=True, seed=7, epoch=4)
    first = []
    for index, batch in enumerate(loader):
        first += batch["keys"]
        if index == 2:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # survives a checkpoint
    assert loader.batches == 3
    resumed = make_dataloader(manifest, cfg, tokenizer, train=True, seed=7, epoch=4)
    resumed.load_state_dict(state)
    rest = all_keys(resumed)
    assert sorted(first + rest) == sorted(full) == sorted(texts)
    if workers == 0:
        assert first + rest == full  # one worker: exactly the uninterrupted order
    other_epoch = make_dataloader(manifest, cfg, tokenizer, train=True, seed=7, epoch=5)
    other_epoch.load_state_dict(state)  # a different epoch starts over
    assert sorted(all_keys(other_epoch)) == sorted(texts)
