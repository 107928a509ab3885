"""Training from tar shards: the same model as from the manifest, and an exact resume."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_at_first_checkpoint
from test_train_loop import ENV  # noqa: I001
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.config import load_yaml
from u2moe.data.shards import write_shards
from u2moe.train.checkpoint import load_checkpoint
from u2moe.train.trainer import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = make_prepared_dir(tmp_path_factory.mktemp("prepared"))
    write_shards(root / "train.jsonl", root / "shards", per_shard=4, workers=1)
    write_shards(root / "dev.jsonl", root / "dev_shards", per_shard=4, workers=1)
    return root


def test_shards_train_the_model_the_manifest_trains(data_dir, tmp_path):
    """Shuffling off, no augmentation or dither: both read the utterances in the same order.

    (Their per-utterance random streams are seeded differently: by manifest index, by shard
    and position; so augmentation would differ.)
    """
    config = load_yaml(CONFIG)
    config["data"]["batch"]["shuffle"] = False
    config["data"]["augment"]["start_epoch"] = 100
    config["data"]["features"] = {"dither": 0.0}
    states = {}
    for name, path in [("manifest", "train.jsonl"), ("shards", "shards/shards.list")]:
        exp = tmp_path / name
        train(
            config, train_manifest=data_dir / path, dev_manifest=data_dir / "dev.jsonl",
            data_dir=data_dir, exp_dir=exp, device="cpu", max_steps=4,
        )  # fmt: skip
        states[name] = load_checkpoint(exp / "checkpoints" / "step-4.pt")
    assert states["shards"]["data"]["worker_positions"] != [None]
    for key, value in states["manifest"]["model"].items():
        torch.testing.assert_close(states["shards"]["model"][key], value, rtol=0, atol=0, msg=key)


def command(data_dir: Path, exp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "u2moe", "train", "--config", str(CONFIG),
        "--train", str(data_dir / "shards" / "shards.list"), "--data-type", "shard",
        "--dev", str(data_dir / "dev_shards" / "shards.list"), "--data", str(data_dir),
        "--exp", str(exp), "--device", "cpu", "--max-steps", "12", *extra,
    ]  # fmt: skip


def test_killed_run_resumes_from_shards_to_the_same_parameters(data_dir, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(command(data_dir, reference), env=ENV, check=True, capture_output=True)
    killed_at = kill_at_first_checkpoint(command(data_dir, interrupted), interrupted, ENV)
    assert killed_at < 12, "the run finished before it was killed"
    done = subprocess.run(
        command(data_dir, interrupted, "--resume"), env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    log = (interrupted / "train.log").read_text()
    assert "resumed from" in log and "shard list changed" not in done.stderr + log
    final = load_checkpoint(interrupted / "checkpoints" / "step-12.pt")
    expected = load_checkpoint(reference / "checkpoints" / "step-12.pt")
    # an epoch is 12 utterances in 3 shards, so the kill falls inside an epoch's shards
    assert final["data"] == expected["data"]
    for key, value in expected["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert final["dev_loss"] == pytest.approx(expected["dev_loss"], abs=1e-6)
