"""Two CPU processes (gloo): DDP ranks stay in sync with MoE; torchrun trains with DDP and FSDP2."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.config import load_yaml, parse_section
from u2moe.model.config import ModelConfig
from u2moe.model.u2 import U2Model
from u2moe.train import distributed
from u2moe.train.checkpoint import load_checkpoint
from u2moe.train.monitor import ExpertMonitor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )  # fmt: skip
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    try:
        cfg = parse_section(ModelConfig, load_yaml(CONFIG)["model"], "tiny")
        cfg.vocab_size = 10
        torch.manual_seed(0)
        model = U2Model(cfg)
        monitor = ExpertMonitor(model)
        wrapped = distributed.wrap(model, info, "ddp")
        optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
        before = [p.detach().clone() for p in model.parameters()]
        torch.manual_seed(1 + rank)  # different data and dropout on each rank
        # Rank 1 sees 7 frames: one encoder frame, so most experts of a layer get nothing.
        frames = 200 if rank == 0 else 7
        for micro in range(4):  # 2 optimizer steps of 2 accumulated micro-batches
            feats = torch.randn(2, frames, 80)
            lengths = torch.tensor([frames, frames - 2])
            targets = torch.randint(2, 9, (2, 3))
            with distributed.gradient_sync(wrapped, enabled=micro % 2 == 1):
                wrapped(feats, lengths, targets, torch.tensor([3, 2]))["loss"].backward()
            monitor.add()
            if micro % 2 == 1:
                optimizer.step()
                optimizer.zero_grad()
        idle = sum(int((counts.sum(dim=0) == 0).sum()) for counts in monitor.counts.values())
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "DDP ranks diverged"
        assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        if rank == 1:
            assert idle > 0, "the test meant some experts to get no frames on rank 1"
        distributed.synchronize()
    finally:
        distributed.cleanup()


def test_ddp_ranks_stay_in_sync_when_experts_idle_on_one_rank():
    mp.spawn(_ddp_worker, args=(_free_port(),), nprocs=2, join=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=24, n_dev=4)


def _torchrun(data_dir, exp, strategy: str, tmp_path) -> subprocess.CompletedProcess:
    config = load_yaml(CONFIG)
    config["train"]["strategy"] = strategy
    config_path = tmp_path / f"{strategy}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "u2moe", "train", "--config", str(config_path), "--data", str(data_dir),
        "--exp", str(exp), "--device", "cpu", "--max-steps", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_trains_with_ddp_and_fsdp2_alike(data_dir, tmp_path):
    runs = {}
    for strategy in ("ddp", "fsdp"):
        exp = tmp_path / strategy
        done = _torchrun(data_dir, exp, strategy, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        log = (exp / "train.log").read_text()
        assert f"2 process(es) on cpu ({strategy})" in log
        assert log.count("model: ") == 1  # only rank 0 writes the log
        metrics = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
        runs[strategy] = (load_checkpoint(exp / "checkpoints" / "step-4.pt"), metrics)
        assert (exp / "model.pt").is_file()
    (ddp, ddp_metrics), (fsdp, fsdp_metrics) = runs["ddp"], runs["fsdp"]
    # Same data shards, seeds and averaged gradients: FSDP2 trains the model DDP trains.
    assert len(ddp["rng"]) == 2 and ddp["model"].keys() == fsdp["model"].keys()
    for key, value in ddp["model"].items():
        torch.testing.assert_close(fsdp["model"][key], value, rtol=1e-4, atol=1e-4, msg=key)

    def losses(metrics):
        return {m["step"]: m["train/loss"] for m in metrics if "train/loss" in m}

    assert list(losses(ddp_metrics)) == [2, 4]
    assert losses(fsdp_metrics) == pytest.approx(losses(ddp_metrics), rel=1e-4)
    assert fsdp["dev_loss"] == pytest.approx(ddp["dev_loss"], rel=1e-4)
