"""Trainer state and safety: fp16 loss scaling saved and resumed, one run per experiment,
a lost checkpoint index rebuilt, and atomic writes that leave nothing on failure."""

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from train_data import make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.config import load_yaml
from u2moe.data import files
from u2moe.data.files import append_text, save_torch_atomic, write_text_atomic
from u2moe.errors import UserError
from u2moe.train.checkpoint import load_checkpoint, read_index, save_checkpoint
from u2moe.train.lock import LOCK, ExperimentLock
from u2moe.train.trainer import train

EXP_V0 = Path(__file__).resolve().parent / "data" / "exp_v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"))


def small_config(**train) -> dict:
    """The smallest MoE config of tests/data/exp_v0 (each run takes about a second)."""
    config = load_yaml(EXP_V0 / "config.yaml")
    config["train"].update(train)
    return config


def run(data_dir: Path, exp: Path, config: dict, **kwargs) -> Path:
    return train(
        config,
        train_manifest=data_dir / "train.jsonl",
        dev_manifest=data_dir / "dev.jsonl",
        data_dir=data_dir,
        exp_dir=exp,
        device="cpu",
        **kwargs,
    )


def test_fp16_trains_and_its_loss_scale_resumes_exactly(data_dir, tmp_path):
    with torch.autocast("cpu", dtype=torch.float16):  # skip where CPU autocast lacks fp16
        if torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype != torch.float16:
            pytest.skip("this torch has no fp16 autocast on CPU")
    config = small_config(precision="fp16", max_steps=4, valid_interval=2, keep_best=3)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(data_dir, reference, config)
    assert "fp16 autocast with loss scaling" in (reference / "train.log").read_text()
    run(data_dir, resumed, config, max_steps=2)
    at_2 = load_checkpoint(resumed / "checkpoints" / "step-2.pt")
    assert at_2["scaler"]["scale"] > 0 and "_growth_tracker" in at_2["scaler"]
    run(data_dir, resumed, config, resume=True)
    expected = load_checkpoint(reference / "checkpoints" / "step-4.pt")
    final = load_checkpoint(resumed / "checkpoints" / "step-4.pt")
    assert final["scaler"] == expected["scaler"]
    for key, value in expected["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_second_run_on_the_same_experiment_is_refused(data_dir, tmp_path):
    exp = tmp_path / "exp"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from u2moe.train.lock import ExperimentLock
            with ExperimentLock(Path({str(exp)!r})):
                print("locked", flush=True)
                sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another training run \(pid {holder.pid} "):
            run(data_dir, exp, small_config())
        assert not (exp / "checkpoints").exists() and not (exp / "config.yaml").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (exp / LOCK).exists()  # released and removed when the holder ended


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / LOCK).write_text('{"pid": 999999, "host": "gone", "started": "yesterday"}\n')
    with ExperimentLock(exp) as lock:
        assert "pid 999999 on gone" in lock.stale_note()
        assert str(os.getpid()) in (exp / LOCK).read_text()
        with pytest.raises(UserError, match="in use by another training run"):
            ExperimentLock(exp).__enter__()  # a second holder, even in the same process
    assert not (exp / LOCK).exists()


def _checkpoint(step: int, dev_loss: float) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "dev_loss": dev_loss}


def test_a_lost_index_is_rebuilt_from_the_files_not_overwritten(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step, loss in [(2, 3.0), (4, 1.0), (6, 2.0)]:
        save_checkpoint(ckpt_dir, _checkpoint(step, loss), loss, keep_best=3)
    (ckpt_dir / "index.json").unlink()
    before = {p.name: p.read_bytes() for p in ckpt_dir.glob("step-*.pt")}
    records = read_index(ckpt_dir)
    assert [(r["step"], r["dev_loss"]) for r in records] == [(2, 3.0), (4, 1.0), (6, 2.0)]
    assert (ckpt_dir / "index.json").is_file()
    # A new checkpoint now keeps the best (step 4) and the latest, deleting only known files.
    save_checkpoint(ckpt_dir, _checkpoint(8, 5.0), 5.0, keep_best=1)
    assert sorted(p.name for p in ckpt_dir.glob("step-*.pt")) == ["step-4.pt", "step-8.pt"]
    assert (ckpt_dir / "step-4.pt").read_bytes() == before["step-4.pt"]


def test_a_first_checkpoint_does_not_warn_of_a_lost_index(tmp_path, caplog):
    save_checkpoint(tmp_path / "checkpoints", _checkpoint(2, 1.0), 1.0, keep_best=3)
    assert "rebuilding" not in caplog.text
    assert [r["step"] for r in read_index(tmp_path / "checkpoints")] == [2]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "step-2.pt"
    save_torch_atomic(_checkpoint(2, 1.0), path)
    good = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(
        UserError, match=r"step-2.pt: disk full: writing it needs at least 8 bytes, \d+ free"
    ):
        save_torch_atomic(_checkpoint(2, 9.0), path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    with pytest.raises(KeyError):  # any other failure propagates as it is
        save_torch_atomic(_checkpoint(2, 9.0), path)
    monkeypatch.undo()
    monkeypatch.setattr(files, "_fsync", fail)  # the disk fills at the flush
    with pytest.raises(UserError, match=r"notes.txt: disk full: writing it needs at least 5 bytes"):
        write_text_atomic(tmp_path / "notes.txt", "hello")
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) -> a fresh tmpfs of that size ("256k"), unmounted after the test
    (root only; skipped where mounting is not permitted)."""
    mounts = []

    def mount(size: str) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_keeps_the_last_good_checkpoint(small_disk):
    disk = small_disk("256k")
    ckpt_dir = disk / "checkpoints"
    save_checkpoint(ckpt_dir, _checkpoint(2, 1.0), 1.0, keep_best=1)
    big = {"model": {"w": torch.zeros(100_000)}, "step": 4, "dev_loss": 0.5}  # 400 kB
    needs = r"step-4.pt: disk full: writing it needs at least 400000 bytes"
    with pytest.raises(UserError, match=needs):
        save_checkpoint(ckpt_dir, big, 0.5, keep_best=1)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["index.json", "step-2.pt"]
    assert [r["step"] for r in read_index(ckpt_dir)] == [2]
    assert load_checkpoint(ckpt_dir / "step-2.pt")["step"] == 2
    with pytest.raises(UserError, match=r"metrics.jsonl: disk full: writing it needs \d+ more"):
        while True:  # a log that grows until the disk is full
            append_text(disk / "metrics.jsonl", "x" * 4096 + "\n")


def test_training_takes_over_a_killed_runs_lock_and_says_so(data_dir, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / LOCK).write_text('{"pid": 999999, "host": "gone", "started": "yesterday"}\n')
    run(data_dir, exp, small_config(max_steps=1, valid_interval=1))
    log = (exp / "train.log").read_text()
    assert "took over the lock of a run that ended (pid 999999 on gone" in log
    assert [r["step"] for r in read_index(exp / "checkpoints")] == [1]
    assert not (exp / LOCK).exists()


def test_average_waits_for_no_run(tmp_path, capsys):
    from u2moe.cli import main as cli_main

    exp = shutil.copytree(EXP_V0, tmp_path / "exp")
    before = (exp / "model.pt").read_bytes()
    with ExperimentLock(exp):
        assert cli_main(["average", "--exp", str(exp), "--num", "1"]) == 2
    err = capsys.readouterr().err
    assert "in use by another training run" in err and err.count("\n") == 1
    assert (exp / "model.pt").read_bytes() == before
    assert cli_main(["average", "--exp", str(exp), "--num", "1"]) == 0
    assert not (exp / LOCK).exists()


def test_training_on_a_full_disk_ends_in_one_line_and_keeps_its_checkpoint(
    data_dir, tmp_path, small_disk
):
    exp = small_disk("700k") / "exp"  # room for one checkpoint of this model, not two
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config(max_steps=4, valid_interval=2, keep_best=3)))
    command = [
        sys.executable, "-m", "u2moe", "train", "--config", str(config), "--data",
        str(data_dir), "--exp", str(exp), "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = re.findall(r"u2moe train: error: (.*)", done.stderr)
    assert len(errors) == 1
    assert re.match(r".*step-4.pt: disk full: writing it needs at least \d+ bytes", errors[0])
    assert [r["step"] for r in read_index(exp / "checkpoints")] == [2]
    assert load_checkpoint(exp / "checkpoints" / "step-2.pt")["step"] == 2
    assert not [p for p in exp.rglob("*") if ".tmp" in p.name or p.name == LOCK]
