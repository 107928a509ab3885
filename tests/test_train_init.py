"""`u2moe train --init MODEL_DIR`: start from a model directory's weights, at step 0."""

import pytest
import torch
from test_train_loop import run_train
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helpers)

from u2moe.config import load_yaml
from u2moe.errors import UserError
from u2moe.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=8, n_dev=2)


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
    """A model directory trained 2 steps: its weights are not those of a fresh model."""
    return run_train(data_dir, tmp_path_factory.mktemp("base") / "exp", max_steps=2)


def still(config: dict) -> dict:
    config["train"]["lr"] = 1e-12  # one step that leaves the weights where they start
    return config


@pytest.mark.parametrize("init", [True, False])
def test_init_starts_from_the_model_weights(data_dir, base, tmp_path, init):
    exp = tmp_path / "exp"
    run_train(data_dir, exp, still(load_yaml(CONFIG)), max_steps=1, init=base if init else None)
    ckpt = load_checkpoint(exp / "checkpoints" / "step-1.pt")
    assert ckpt["step"] == 1  # a fresh schedule: step 0 was the first
    weights = torch.load(base / "model.pt", weights_only=True)
    same = all(
        torch.allclose(ckpt["model"][key], value, rtol=0, atol=1e-6)
        for key, value in weights.items()
    )
    assert same == init
    assert ("initialized from" in (exp / "train.log").read_text()) == init


def test_init_that_does_not_fit_the_config(data_dir, base, tmp_path):
    config = load_yaml(CONFIG)
    config["model"]["encoder"]["d_ff"] = 48
    with pytest.raises(UserError, match=r"--init .* do not fit the config: .*w_1 .*\(model"):
        run_train(data_dir, tmp_path / "exp", config, init=base)
    with pytest.raises(UserError, match="model.pt: no such"):
        run_train(data_dir, tmp_path / "exp", init=tmp_path)
    assert not (tmp_path / "exp").exists()
