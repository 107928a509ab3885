"""`u2moe train --init MODEL_DIR`: start from a model directory's weights, at step 0 (a
dense model's, and the MoE model `u2moe upcycle` makes of it)."""

import pytest
import torch
from test_train_loop import run_train
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helpers)

from u2moe.cli import main
from u2moe.config import load_yaml
from u2moe.errors import UserError
from u2moe.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=8, n_dev=2)


def dense_config() -> dict:
    config = load_yaml(CONFIG)
    for side in ("encoder", "decoder"):
        config["model"][side]["ffn"] = {"type": "dense"}
    return config


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
    """A dense model directory trained 2 steps: its weights are not a fresh model's."""
    exp = tmp_path_factory.mktemp("base") / "exp"
    return run_train(data_dir, exp, dense_config(), max_steps=2)


def still(config: dict) -> dict:
    config["train"]["lr"] = 1e-12  # one step that leaves the weights where they start
    return config


@pytest.mark.parametrize("init", [True, False])
def test_init_starts_from_the_model_weights(data_dir, base, tmp_path, init):
    exp = tmp_path / "exp"
    run_train(data_dir, exp, still(dense_config()), max_steps=1, init=base if init else None)
    ckpt = load_checkpoint(exp / "checkpoints" / "step-1.pt")
    assert ckpt["step"] == 1  # a fresh schedule: step 0 was the first
    weights = torch.load(base / "model.pt", weights_only=True)
    same = all(
        torch.allclose(ckpt["model"][key], value, rtol=0, atol=1e-6)
        for key, value in weights.items()
    )
    assert same == init
    assert ("initialized from" in (exp / "train.log").read_text()) == init
    if init:  # a checkpoint to resume wins over --init: rerunning the command continues
        run_train(data_dir, exp, still(dense_config()), max_steps=2, init=base, resume=True)
        assert "ignored: resuming from" in (exp / "train.log").read_text()
        assert load_checkpoint(exp / "checkpoints" / "step-2.pt")["step"] == 2


def test_upcycled_model_trains_on_with_its_own_config(data_dir, base, tmp_path, capsys):
    upcycled = tmp_path / "upcycled"
    assert main(["upcycle", "--model", str(base), "--out", str(upcycled), "--experts", "3"]) == 0
    exp = tmp_path / "exp"
    config = load_yaml(upcycled / "config.yaml")
    run_train(data_dir, exp, still(config), max_steps=1, init=upcycled)
    ckpt = load_checkpoint(exp / "checkpoints" / "step-1.pt")
    weights = torch.load(upcycled / "model.pt", weights_only=True)
    assert ckpt["model"].keys() == weights.keys()
    assert any(".router." in key for key in weights)
    for key, value in weights.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=0, atol=1e-6, msg=key)


def test_init_that_does_not_fit_the_config(data_dir, base, tmp_path, capsys):
    config = dense_config()
    config["model"]["encoder"]["d_ff"] = 48
    first = r"encoder\.encoders\.0\.feed_forward\.w_1\.weight \(32, 32\) \(model \(48, 32\)\)"
    with pytest.raises(UserError, match=rf"fit the config: mis-shaped {first}"):
        run_train(data_dir, tmp_path / "exp", config, init=base)
    moe = ["--config", str(CONFIG), "--data", str(data_dir), "--exp", str(tmp_path / "exp")]
    assert main(["train", *moe, "--init", str(base)]) == 2  # a dense model for a MoE config
    err = capsys.readouterr().err
    assert err.startswith("u2moe train: error: --init ") and "missing" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="model.pt: no such"):
        run_train(data_dir, tmp_path / "exp", init=tmp_path)
    assert not (tmp_path / "exp").exists()
