"""Tar shards: written from a manifest, read back exactly, broken ones skipped, resumable."""

import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from train_data import make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.cli import main as cli_main
from u2moe.data.audio import decode_audio, load_audio
from u2moe.data.config import BatchConfig, DataConfig, TokenizerConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.manifest import BadEntry, detect_data_type, read_manifest
from u2moe.data.shards import read_shard
from u2moe.data.tokenizer import load_tokenizer
from u2moe.errors import UserError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=20, n_dev=2)


@pytest.fixture(scope="module")
def shards(data_dir) -> Path:
    """data_dir/shards/shards.list: 7 shards of at most 3 utterances."""
    status = cli_main(
        ["shard", "--data", str(data_dir / "train.jsonl"), "--out", str(data_dir / "shards"),
         "--per-shard", "3", "--workers", "2"]
    )  # fmt: skip
    assert status == 0
    return data_dir / "shards" / "shards.list"


def config(workers: int = 0, shuffle: bool = True) -> DataConfig:
    batch = BatchConfig(
        max_frames_in_batch=2000, bucket_size=8, num_workers=workers, max_duration=10.0,
        shuffle=shuffle,
    )  # fmt: skip
    return DataConfig(batch=batch)


def load_batches(path: Path, data_dir: Path, cfg: DataConfig, train: bool, **kwargs):
    tokenizer = load_tokenizer(data_dir, TokenizerConfig())
    loader = make_dataloader(path, cfg, tokenizer, train=train, **kwargs)
    return list(loader), loader


def feats_by_key(batches) -> dict[str, torch.Tensor]:
    return {
        key: batch["feats"][i, : batch["feats_lengths"][i]]
        for batch in batches
        for i, key in enumerate(batch["keys"])
    }


def test_shards_hold_the_manifest_exactly(data_dir, shards):
    utterances = list(read_manifest(data_dir / "train.jsonl"))
    entries = shards.read_text().splitlines()
    assert len(entries) == 7 and all(Path(e).is_absolute() for e in entries)
    assert detect_data_type(shards) == "shard"
    assert detect_data_type(data_dir / "train.jsonl") == "raw"
    with tarfile.open(entries[0]) as tar:  # WeNet's layout: KEY.txt then KEY.wav
        assert tar.getnames() == [f"{u.key}.{s}" for u in utterances[:3] for s in ("txt", "wav")]
    read = [item for i, entry in enumerate(entries) for item in read_shard(entry, i)]
    assert [item.key for item in read] == [u.key for u in utterances]
    assert [(item.shard, item.position) for item in read[3:5]] == [(1, 0), (1, 1)]
    for item, utterance in zip(read, utterances, strict=True):
        assert item.text == utterance.text
        assert np.array_equal(decode_audio(item.audio, item.name), load_audio(utterance.audio))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_loader_reads_the_same_utterances_from_shards(data_dir, shards, workers):
    manifest = feats_by_key(load_batches(data_dir / "train.jsonl", data_dir, config(), False)[0])
    batches, loader = load_batches(shards, data_dir, config(workers), train=False)
    from_shards = feats_by_key(batches)
    assert sorted(from_shards) == sorted(manifest) and loader.stats.total == 0
    assert all(torch.equal(from_shards[k], manifest[k]) for k in manifest)
    # training: every utterance once per epoch, in an order that depends on the epoch
    epochs = [load_batches(shards, data_dir, config(workers), True, epoch=e)[0] for e in (0, 1)]
    orders = [[k for b in batches for k in b["keys"]] for batches in epochs]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(manifest)
    assert orders[0] != orders[1]


def test_ranks_and_workers_split_the_shards(data_dir, shards):
    keys = []
    for rank in range(2):
        batches, _ = load_batches(shards, data_dir, config(2), True, rank=rank, world_size=2)
        keys.append({k for b in batches for k in b["keys"]})
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 20
    with pytest.raises(UserError, match="7 shard.* for 8 processes"):
        load_batches(shards, data_dir, config(), True, rank=0, world_size=8)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_within_an_epoch_of_shards(data_dir, shards, workers, caplog):
    cfg = config(workers)
    full = [k for b in load_batches(shards, data_dir, cfg, True, seed=3)[0] for k in b["keys"]]
    tokenizer = load_tokenizer(data_dir, TokenizerConfig())
    loader = make_dataloader(shards, cfg, tokenizer, train=True, seed=3)
    first = []
    for index, batch in enumerate(loader):
        first += batch["keys"]
        if index == 1:
            break
    state = json.loads(json.dumps(loader.state_dict()))
    assert sum(p is not None for p in state["worker_positions"]) >= 1  # shard and position
    resumed = make_dataloader(shards, cfg, tokenizer, train=True, seed=3)
    resumed.load_state_dict(state)
    rest = [k for b in resumed for k in b["keys"]]
    assert sorted(first + rest) == sorted(full)
    if workers == 0:
        assert first + rest == full
        assert "shard list changed" not in caplog.text
        state["worker_positions"][0][1] += 1  # as if the shard had changed
        moved = make_dataloader(shards, cfg, tokenizer, train=True, seed=3)
        moved.load_state_dict(state)
        assert [k for b in moved for k in b["keys"]] == rest
        assert "the checkpoint had" in caplog.text and "shard list changed" in caplog.text


@pytest.fixture
def broken(data_dir, shards, tmp_path) -> tuple[Path, Path]:
    """A shard list with one good shard and one of each kind of broken one."""
    good = shards.read_text().splitlines()
    data = Path(good[1]).read_bytes()
    (tmp_path / "truncated.tar").write_bytes(data[: len(data) // 2])
    wav = (data_dir / "wavs" / "utt05.wav").read_bytes()
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        for name, contents in [
            ("notext.wav", wav),  # a member without its text
            ("noise.txt", b"ab ba"), ("noise.wav", b"not audio at all" * 50),  # not audio
            ("readme.md", b"hello"),  # neither audio nor text
            ("fine.txt", b"dad bad"), ("fine.wav", wav),
        ]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(contents)
            tar.addfile(info, io.BytesIO(contents))
    entries = [
        good[0], str(tmp_path / "truncated.tar"), str(tmp_path / "odd.tar"),
        str(tmp_path / "missing.tar"), "http://127.0.0.1:9/shard.tar",
        f"pipe:cat {good[2]}; exit 3",
    ]  # fmt: skip
    (tmp_path / "broken.list").write_text("".join(e + "\n" for e in entries))
    return tmp_path / "broken.list", tmp_path


def test_broken_shards_are_counted_and_skipped(data_dir, broken):
    shard_list, tmp_path = broken
    batches, loader = load_batches(shard_list, data_dir, config(), train=False)
    keys = {k for b in batches for k in b["keys"]}
    # the good shard, what the truncated and the failing pipe gave before failing, and "fine"
    assert {"utt02", "utt03", "utt04", "fine"} <= keys
    assert not keys & {"notext", "noise", "readme"}
    assert dict(loader.stats.counts) == {
        "truncated shard": 1, "no audio in shard": 1, "no text in shard": 1,
        "unreadable audio": 1, "shard not found": 1, "shard download failed": 1,
        "shard command failed": 1,
    }  # fmt: skip
    assert loader.stats.examples["no text in shard"] == ["notext"]
    assert loader.stats.examples["no audio in shard"] == ["readme"]
    assert loader.stats.examples["shard command failed"][0].endswith("exit 3")

    # resumed after its last batch: nothing new to read is not "nothing readable"
    some = tmp_path / "some.list"
    some.write_text(f"{broken[0].read_text().split()[0]}\n{tmp_path / 'missing.tar'}\n")
    tokenizer = load_tokenizer(data_dir, TokenizerConfig())
    loader = make_dataloader(some, config(), tokenizer, train=True)
    total = len(list(make_dataloader(some, config(), tokenizer, train=True)))
    for index, _ in enumerate(loader):
        if index == total - 1:
            break
    resumed = make_dataloader(some, config(), tokenizer, train=True)
    resumed.load_state_dict(loader.state_dict())
    assert list(resumed) == [] and resumed.stats.counts == {"shard not found": 1}

    nothing = tmp_path / "nothing.list"
    nothing.write_text("pipe:exit 1\n" + str(tmp_path / "missing.tar") + "\n")
    with pytest.raises(UserError, match=r"nothing.list: no readable shard \(2 skipped"):
        load_batches(nothing, data_dir, config(), train=True)


def test_shards_over_http(data_dir, shards, tmp_path):
    folder = Path(shards.read_text().splitlines()[0]).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shards_000000001.tar"
        assert [item.key for item in read_shard(url)] == ["utt05", "utt06", "utt07"]
        missing = list(read_shard(url.replace("001.tar", "099.tar")))
        assert missing == [BadEntry(url.replace("001.tar", "099.tar"), "shard download failed")]
    finally:
        server.shutdown()


def test_shard_command_counts_bad_entries_and_refuses_bad_input(data_dir, tmp_path, capsys):
    lines = (data_dir / "train.jsonl").read_text().splitlines()[:3]
    lines.insert(1, json.dumps({"key": "gone", "audio": "nowhere.wav", "text": "ab"}))
    (tmp_path / "m.jsonl").write_text("\n".join([*lines, "{broken"]) + "\n")
    args = ["shard", "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "s")]
    assert cli_main(args + ["--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "3 utterances, 2 skipped: 1 audio file not found (gone); 1 invalid JSON" in printed
    assert cli_main(args + ["--per-shard", "0"]) == 2
    assert capsys.readouterr().err.strip() == "u2moe shard: error: --per-shard must be >= 1, got 0"
    (tmp_path / "bad.jsonl").write_text("{broken\n")
    args = ["shard", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "none")]
    assert cli_main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("u2moe shard: error: ") and error.endswith(
        "bad.jsonl: no usable utterance to shard (1 skipped: 1 invalid JSON (bad.jsonl:1))"
    )
    assert list((tmp_path / "none").iterdir()) == []  # no empty shard left behind
