"""`u2moe train` end to end on a tiny MoE model: outputs, exact resume, averaging, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_at_first_checkpoint
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.cli import main as cli_main
from u2moe.config import load_yaml
from u2moe.data.config import FeatureConfig
from u2moe.data.prepare import cmvn_features
from u2moe.errors import UserError
from u2moe.model.io import load_model_dir
from u2moe.train.checkpoint import load_checkpoint, read_index
from u2moe.train.trainer import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """An experiment of 8 steps (dev evaluation and a checkpoint every 4)."""
    exp = tmp_path_factory.mktemp("exp") / "tiny"
    run_train(data_dir, exp)
    return exp


def run_train(data_dir: Path, exp: Path, config: dict | None = None, **kwargs) -> Path:
    return train(
        config or load_yaml(CONFIG),
        train_manifest=data_dir / "train.jsonl",
        dev_manifest=data_dir / "dev.jsonl",
        data_dir=data_dir,
        exp_dir=exp,
        device="cpu",
        **kwargs,
    )


def cli_command(data_dir: Path, exp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "u2moe", "train", "--config", str(CONFIG),
        "--train", str(data_dir / "train.jsonl"), "--dev", str(data_dir / "dev.jsonl"),
        "--exp", str(exp), "--device", "cpu", *extra,
    ]  # fmt: skip


def test_experiment_is_a_complete_model_directory(trained, data_dir):
    for name in ["config.yaml", "units.txt", "model.pt", "train.log", "metrics.jsonl"]:
        assert (trained / name).is_file(), name
    assert (trained / "plots" / "loss.png").stat().st_size > 1000
    assert (trained / "plots" / "experts.png").stat().st_size > 1000
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    config = load_yaml(trained / "config.yaml")
    assert set(config) >= {"model", "data", "train"}
    assert config["model"]["vocab_size"] == len((data_dir / "units.txt").read_text().splitlines())
    records = read_index(trained / "checkpoints")
    assert [r["step"] for r in records] == [4, 8]
    assert all(r["dev_loss"] > 0 for r in records)
    model, _, units = load_model_dir(trained)
    assert units[0] == "<blank>" and len(units) == config["model"]["vocab_size"]
    # model.pt is the mean of the two kept checkpoints (average_num 2), CMVN included
    states = [load_checkpoint(trained / "checkpoints" / r["file"])["model"] for r in records]
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2)
    log = (trained / "train.log").read_text()
    assert "dev: loss" in log and "WER" in log and "busiest expert" in log
    metrics = [
        yaml.safe_load(line) for line in (trained / "metrics.jsonl").read_text().split("\n") if line
    ]
    assert any("dev/wer" in m for m in metrics)
    assert any(k.startswith("experts/encoder.") for m in metrics for k in m)


def test_average_command_picks_the_best(trained, tmp_path):
    exp = shutil.copytree(trained, tmp_path / "exp")
    assert cli_main(["average", "--exp", str(exp), "--num", "1"]) == 0
    best = min(read_index(exp / "checkpoints"), key=lambda r: r["dev_loss"])
    expected = load_checkpoint(exp / "checkpoints" / best["file"])["model"]
    actual = torch.load(exp / "model.pt", weights_only=True)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value)


def test_killed_run_resumes_to_the_same_parameters(data_dir, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    steps = ["--max-steps", "12"]
    subprocess.run(
        cli_command(data_dir, reference, *steps), env=ENV, check=True, capture_output=True
    )

    argv = cli_command(data_dir, interrupted, *steps)
    killed_at = kill_at_first_checkpoint(argv, interrupted, ENV)
    assert killed_at < 12, "the run finished before it was killed"

    done = subprocess.run(
        cli_command(data_dir, interrupted, *steps, "--resume"),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in (interrupted / "train.log").read_text()
    final = load_checkpoint(interrupted / "checkpoints" / "step-12.pt")
    expected = load_checkpoint(reference / "checkpoints" / "step-12.pt")
    for key, value in expected["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert final["dev_loss"] == pytest.approx(expected["dev_loss"], abs=1e-6)


def _tiny(**model_changes) -> dict:
    config = load_yaml(CONFIG)
    config["model"].update(model_changes)
    return config


def test_config_that_does_not_fit_the_data(data_dir, tmp_path):
    with pytest.raises(UserError, match="model.vocab_size is 99 but the units file has"):
        run_train(data_dir, tmp_path / "a", _tiny(vocab_size=99))
    with pytest.raises(UserError, match="model.input_dim 40 does not match"):
        run_train(data_dir, tmp_path / "b", _tiny(input_dim=40))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_features_other_than_the_cmvn_were_measured_with(data_dir, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / "data")
    summary = {"cmvn": {"features": cmvn_features(FeatureConfig())}}  # as `prepare` records
    (data / "summary.json").write_text(json.dumps(summary))
    config = _tiny()
    config["data"].setdefault("features", {})["log_floor"] = 3.0
    with pytest.raises(
        UserError, match=r"log_floor is 3.0, but .*global_cmvn was measured with None"
    ):
        run_train(data, tmp_path / "a", config)
    assert not (tmp_path / "a").exists()


def test_existing_experiment_is_never_overwritten(trained, data_dir, tmp_path):
    exp = shutil.copytree(trained, tmp_path / "exp")
    before = {p: p.read_bytes() for p in (exp / "checkpoints").iterdir()}
    other = _tiny()
    other["model"]["encoder"]["d_model"] = 48
    with pytest.raises(UserError, match=r"different config \(model.encoder.d_model differs"):
        run_train(data_dir, exp, other, resume=True)
    with pytest.raises(UserError, match="already has checkpoints .* pass --resume"):
        run_train(data_dir, exp)
    latest = exp / "checkpoints" / "step-8.pt"
    latest.write_bytes(latest.read_bytes()[: 1 << 12])  # a truncated file
    before[latest] = latest.read_bytes()
    with pytest.raises(UserError, match="step-8.pt: corrupt or unreadable checkpoint"):
        run_train(data_dir, exp, resume=True)
    assert {p: p.read_bytes() for p in (exp / "checkpoints").iterdir()} == before


def test_cli_reports_bad_input_in_one_line(data_dir, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_tiny(vocab_size=99)))
    args = ["train", "--config", str(config), "--data", str(data_dir), "--exp", str(tmp_path / "x")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("u2moe train: error: ") and "vocab_size" in err and "\n" not in err


def test_reference_bigru_reports_its_ctc_loss(data_dir):
    script = Path(__file__).resolve().parents[1] / "scripts" / "reference_bigru_ctc.py"
    argv = ["--config", str(CONFIG), "--data", str(data_dir), "--steps", "50"]
    out = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, check=True
    ).stdout
    line = out.splitlines()[-1].split()
    assert line[:2] == ["step", "50"] and float(line[line.index("ctc") + 1]) > 0
