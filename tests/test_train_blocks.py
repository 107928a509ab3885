"""Training building blocks that need no model: schedule, checkpoints, averaging, RNG, config."""

import random

import numpy as np
import pytest
import torch

from u2moe.config import ConfigError, parse_section
from u2moe.data.files import save_torch_atomic
from u2moe.errors import UserError
from u2moe.train.checkpoint import (
    average_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    read_index,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from u2moe.train.config import TrainConfig
from u2moe.train.distributed import lockstep
from u2moe.train.monitor import fractions_from_record
from u2moe.train.scheduler import WarmupLR, warmup_factor


def test_warmuplr_rises_linearly_then_decays_as_inverse_sqrt():
    warmup = 100
    assert warmup_factor(1, warmup) == pytest.approx(1 / warmup)
    assert warmup_factor(50, warmup) == pytest.approx(0.5)
    assert warmup_factor(warmup, warmup) == pytest.approx(1.0)
    assert warmup_factor(4 * warmup, warmup) == pytest.approx(0.5)
    assert warmup_factor(9, 0) == pytest.approx(1 / 3)


def test_warmuplr_drives_the_optimizer_and_resumes_from_state():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=2e-3)
    sched = WarmupLR(opt, warmup_steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 / 10)  # the first step's lr
    for _ in range(9):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)  # step 10: the peak
    opt2 = torch.optim.Adam([param], lr=2e-3)
    sched2 = WarmupLR(opt2, warmup_steps=10)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * (10 / 11) ** 0.5)


def _state(step: int, value: float) -> dict:
    return {"step": step, "model": {"w": torch.full((2,), value), "n": torch.tensor(step)}}


def test_checkpoints_keep_the_best_n_by_dev_loss_and_the_latest(tmp_path):
    losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 2.0, 5: 6.0}
    for step, loss in losses.items():
        save_checkpoint(tmp_path, _state(step, step), loss, keep_best=2)
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert files == ["step-2.pt", "step-4.pt", "step-5.pt"]  # best two, plus the latest
    assert [r["step"] for r in read_index(tmp_path)] == [2, 4, 5]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-5.pt"
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_write_loses_nothing(tmp_path):
    save_checkpoint(tmp_path, _state(1, 1.0), 1.0, keep_best=1)
    before = (tmp_path / "step-1.pt").read_bytes()
    unpicklable = {"step": 2, "model": {}, "bad": lambda: None}
    with pytest.raises(Exception):  # noqa: B017 (pickle raises one of several types)
        save_checkpoint(tmp_path, unpicklable, 0.5, keep_best=1)
    assert (tmp_path / "step-1.pt").read_bytes() == before
    assert [r["file"] for r in read_index(tmp_path)] == ["step-1.pt"]


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "step-1.pt"
    save_torch_atomic(_state(1, 1.0), path)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as after a full disk
    with pytest.raises(UserError, match="corrupt or unreadable checkpoint"):
        load_checkpoint(path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt checkpoint index"):
        read_index(tmp_path)


def test_average_is_the_elementwise_mean(tmp_path):
    paths = []
    for step, value in [(1, 1.0), (2, 2.0), (3, 6.0)]:
        paths.append(tmp_path / f"step-{step}.pt")
        save_torch_atomic(_state(step, value), paths[-1])
    avg = average_checkpoints(paths)
    torch.testing.assert_close(avg["w"], torch.full((2,), 3.0))
    assert avg["n"].item() == 3 and avg["n"].dtype == torch.int64  # integers: from the last


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_torch_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_train_config_is_validated():
    assert parse_section(TrainConfig, {"lr": 1}, "t").lr == 1.0
    with pytest.raises(ConfigError, match="average_num must be in"):
        parse_section(TrainConfig, {"keep_best": 2, "average_num": 5}, "x.yaml: train")
    with pytest.raises(ConfigError, match="x.yaml: train: unknown key 'lrate'"):
        parse_section(TrainConfig, {"lrate": 1}, "x.yaml: train")


def test_lockstep_alone_yields_every_batch():
    assert list(lockstep(iter([1, 2, 3]), torch.device("cpu"), pad=False)) == [
        (1, True),
        (2, True),
        (3, True),
    ]


def test_expert_fractions_are_read_back_from_the_last_record():
    records = [
        {"step": 1, "dev_experts/enc.0/0": 0.1, "dev_experts/enc.0/1": 1.9},
        {"step": 2, "train/loss": 3.0},
        {"step": 3, "dev_experts/enc.0/1": 1.2, "dev_experts/enc.0/0": 0.8},
    ]
    assert fractions_from_record(records, "dev_experts") == {"enc.0": [0.8, 1.2]}
