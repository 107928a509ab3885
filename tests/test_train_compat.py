"""A model directory and checkpoint written before the Trainer/routing refactor still work.

tests/data/exp_v0 was made with the code of commit 0422b8f (before `Trainer`, the routing
record and `TrainState`): `train()` on `make_prepared_dir(...)` with configs/tiny.yaml
changed to d_model 16, d_ff 16, one encoder layer, one L2R and one R2L decoder layer,
MoE everywhere (4 experts, top-2, aux_loss_weight 0.01), max_steps 2, valid_interval 2,
log_interval 1, keep_best 1, average_num 1. Kept from its experiment directory:
config.yaml, units.txt, model.pt, metrics.jsonl, checkpoints/index.json and step-2.pt.
The numbers below were printed by that same code: the eval-mode losses of model.pt on a
fixed input, and the dev loss of the checkpoint a resumed run wrote at step 4.
"""

import shutil
from pathlib import Path

import pytest
import torch
from train_data import make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.config import load_yaml
from u2moe.model.io import load_model_dir
from u2moe.train.checkpoint import load_checkpoint, read_index
from u2moe.train.trainer import train

EXP_V0 = Path(__file__).resolve().parent / "data" / "exp_v0"


def test_old_model_directory_loads_and_gives_the_same_losses():
    model, config, units = load_model_dir(EXP_V0)
    assert len(units) == config["model"]["vocab_size"] == 8
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 40, 80, generator=g) * 3 + 5
    targets = torch.tensor([[2, 3, 4], [5, 6, -1]])
    with torch.no_grad():
        out = model(feats, torch.tensor([40, 31]), targets, torch.tensor([3, 2]))
    expected = {
        "loss": 7.5138840675354,
        "loss_ctc": 9.919601440429688,
        "loss_att": 6.450594902038574,
        "loss_aux": 0.022587403655052185,
    }
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-5), key


def test_old_checkpoint_resumes(tmp_path):
    data = make_prepared_dir(tmp_path / "prepared")
    exp = tmp_path / "exp"
    shutil.copytree(EXP_V0, exp)
    train(
        load_yaml(exp / "config.yaml"),
        train_manifest=data / "train.jsonl",
        dev_manifest=data / "dev.jsonl",
        data_dir=data,
        exp_dir=exp,
        device="cpu",
        resume=True,
        max_steps=4,
    )
    records = read_index(exp / "checkpoints")
    assert [r["step"] for r in records] == [4]
    assert records[0]["dev_loss"] == pytest.approx(15.966667175292969, rel=1e-5)
    ckpt = load_checkpoint(exp / "checkpoints" / "step-4.pt")
    assert ckpt["step"] == 4 and ckpt["epoch"] == 1
    model, _, _ = load_model_dir(exp)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ckpt["model"][key])
