"""Multi-node torchrun on one machine: two "nodes" of one process each train the model that one
node of two processes trains (the command docs/TRAINING.md gives for a cluster)."""

import os
import subprocess
import sys

import pytest
import torch
from test_train_distributed import _free_port, _torchrun  # noqa: I001 (tests/ helpers)
from train_data import make_prepared_dir

from u2moe.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=24, n_dev=4)


def node_command(node_rank: int, port: int, data_dir, exp, config) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
        "--node-rank", str(node_rank), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1",
        "-m", "u2moe", "train", "--config", str(config), "--data", str(data_dir),
        "--exp", str(exp), "--device", "cpu", "--max-steps", "4",
    ]  # fmt: skip


def test_two_nodes_train_what_one_node_of_two_processes_trains(data_dir, tmp_path):
    single = _torchrun(data_dir, tmp_path / "single", "ddp", tmp_path)  # writes ddp.yaml
    assert single.returncode == 0, single.stderr[-3000:]

    exp, port = tmp_path / "nodes", _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            node_command(rank, port, data_dir, exp, tmp_path / "ddp.yaml"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    log = (exp / "train.log").read_text()
    assert "2 process(es) on cpu (ddp)" in log and log.count("model: ") == 1
    nodes_ckpt = load_checkpoint(exp / "checkpoints" / "step-4.pt")
    single_ckpt = load_checkpoint(tmp_path / "single" / "checkpoints" / "step-4.pt")
    assert nodes_ckpt["data"] == single_ckpt["data"] and len(nodes_ckpt["rng"]) == 2
    for key, value in single_ckpt["model"].items():
        torch.testing.assert_close(nodes_ckpt["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert nodes_ckpt["dev_loss"] == pytest.approx(single_ckpt["dev_loss"], abs=1e-6)
