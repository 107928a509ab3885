"""`prepare` and `train` on the other data sources: a tar shard list and lhotse cuts."""

import json
from pathlib import Path

import numpy as np
import pytest
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helper)

from u2moe.cli import main as cli_main
from u2moe.data.audio import decode_audio, load_audio
from u2moe.data.config import DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.manifest import Manifest, detect_data_type, read_manifest
from u2moe.data.shards import read_shard, write_shards
from u2moe.data.tokenizer import load_tokenizer
from u2moe.train.checkpoint import read_index


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), n_train=12, n_dev=4)


def test_prepare_and_train_from_a_shard_list(data_dir, tmp_path, monkeypatch):
    shards, _, _ = write_shards(data_dir / "train.jsonl", tmp_path / "shards", per_shard=5)
    relative = tmp_path / "relative.list"  # a WeNet list: paths relative to the current dir
    relative.write_text("".join(f"shards/{Path(p).name}\n" for p in shards.read_text().split()))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "prepared"
    args = ["prepare", "--train", "relative.list", "--dev", str(data_dir / "dev.jsonl")]
    assert cli_main(args + ["--out", str(out), "--jobs", "1", "--cmvn-utterances", "6"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["utterances"] == 12 and summary["train"]["skipped"] == 0
    assert summary["cmvn"]["utterances"] == 6  # the first 2 of each of the 3 shards
    assert (out / "train.list").read_text() == shards.read_text()  # made absolute
    assert not (out / "train.jsonl").exists() and (out / "dev.jsonl").is_file()
    args = ["train", "--config", str(CONFIG), "--data", str(out), "--exp", str(tmp_path / "exp")]
    assert cli_main(args + ["--device", "cpu", "--max-steps", "2"]) == 0
    assert [r["step"] for r in read_index(tmp_path / "exp" / "checkpoints")] == [2]


def test_lhotse_cuts_are_a_manifest(data_dir, tmp_path):
    lhotse = pytest.importorskip("lhotse")
    utterances = list(read_manifest(data_dir / "train.jsonl"))[:4]
    recordings = lhotse.RecordingSet.from_recordings(
        lhotse.Recording.from_file(u.audio, recording_id=u.key) for u in utterances
    )
    supervisions = lhotse.SupervisionSet.from_segments(
        lhotse.SupervisionSegment(u.key, u.key, start, 0.4, text=u.text, speaker="s1")
        for u, start in zip(utterances, [0.0, 0.1, 0.0, 0.05], strict=True)
    )
    cuts = lhotse.CutSet.from_manifests(recordings, supervisions).trim_to_supervisions()
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    assert detect_data_type(tmp_path / "cuts.jsonl.gz") == "lhotse"
    entries = list(Manifest(tmp_path / "cuts.jsonl.gz"))
    assert [e.text for e in entries] == [u.text for u in utterances]
    assert entries[1].start == pytest.approx(0.1) and entries[1].end == pytest.approx(0.5)
    assert entries[1].extra == {"speaker": "s1"}
    whole = load_audio(utterances[1].audio)
    part = load_audio(entries[1].audio, entries[1].start, entries[1].end)
    assert np.array_equal(part, whole[1600:8000])

    out = tmp_path / "prepared"
    args = ["prepare", "--train", str(tmp_path / "cuts.jsonl.gz"), "--data-type", "lhotse"]
    args += ["--dev", str(tmp_path / "cuts.jsonl.gz"), "--out", str(out), "--jobs", "1"]
    assert cli_main(args) == 0
    prepared = list(read_manifest(out / "train.jsonl"))
    assert [(u.start, u.duration) for u in prepared][1] == pytest.approx((0.1, 0.4))
    tokenizer = load_tokenizer(data_dir)
    loader = make_dataloader(tmp_path / "cuts.jsonl.gz", DataConfig(), tokenizer, train=True)
    keys = sorted(k for batch in loader for k in batch["keys"])
    assert keys == sorted(e.key for e in entries) and loader.stats.total == 0

    # cuts into shards: a part of a recording is stored decoded, as 16-bit WAV
    shards, written, _ = write_shards(tmp_path / "cuts.jsonl.gz", tmp_path / "shards", 2)
    item = list(read_shard(shards.read_text().split()[0], 0))[1]
    assert written == 4 and (item.key, item.text) == (entries[1].key, entries[1].text)
    np.testing.assert_allclose(decode_audio(item.audio, item.name), part, atol=1 / 32768)
