"""`u2moe prepare` end to end on a tiny synthetic corpus in all three input formats."""

import json

import numpy as np
import soundfile as sf
import torch

from u2moe.cli import main
from u2moe.data.audio import load_audio
from u2moe.data.cmvn import load_cmvn
from u2moe.data.config import BatchConfig, DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import load_tokenizer

SENTENCES = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it's easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
]


def write_wav(path, seconds, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.02 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")


def make_sources(root):
    (root / "wavs").mkdir()
    train = []
    for i, text in enumerate(SENTENCES * 2):
        write_wav(root / "wavs" / f"tr{i}.wav", 0.5 + 0.1 * i, seed=i)
        train.append({"key": f"tr{i}", "audio": f"wavs/tr{i}.wav", "text": text, "speaker": "s"})
    (root / "wavs" / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    train.append({"key": "bad", "audio": "wavs/bad.wav", "text": "the well"})
    train.append({"key": "tr0", "audio": "wavs/tr1.wav", "text": "duplicate key"})
    lines = [json.dumps(x) for x in train] + ["not json"]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")

    kaldi = root / "dev"  # a Kaldi directory with 8 kHz FLAC and segments
    kaldi.mkdir()
    sf.write(kaldi / "rec.flac", np.zeros(8000 * 3, np.float32) + 0.1, 8000)
    (kaldi / "wav.scp").write_text(f"rec {kaldi / 'rec.flac'}\n")
    (kaldi / "segments").write_text("d1 rec 0.0 1.0\nd2 rec 1.0 2.5\n")
    (kaldi / "text").write_text("d1 the blue canoe\nd2 round bowls\n")

    write_wav(root / "wavs" / "te0.wav", 1.0, seed=9)
    test = [{"key": "te0", "wav": str(root / "wavs" / "te0.wav"), "txt": "a rare dish"}]
    test.append({"key": "te1", "wav": "/nonexistent.wav", "txt": "lost"})
    (root / "data.list").write_text("".join(json.dumps(x) + "\n" for x in test))


def test_prepare_char_end_to_end(tmp_path, capsys):
    make_sources(tmp_path)
    out = tmp_path / "prepared"
    args = ["prepare", "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev")]
    args += ["--test", str(tmp_path / "data.list"), "--out", str(out), "--jobs", "2"]
    assert main(args + ["--cmvn-utterances", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: 12 utterances" in printed and "1 duplicate key (tr0)" in printed

    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [u["key"] for u in train] == [f"tr{i}" for i in range(12)]
    assert train[3]["audio"] == str(tmp_path / "wavs" / "tr3.wav")
    assert train[3]["duration"] == 0.8 and train[3]["speaker"] == "s"
    dev = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    assert [(u["key"], u["duration"], u["start"], u["end"]) for u in dev] == [
        ("d1", 1.0, 0.0, 1.0),
        ("d2", 1.5, 1.0, 2.5),
    ]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert [u["key"] for u in test] == ["te0"] and test[0]["text"] == "a rare dish"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["problems"] == {
        "unreadable audio": {"count": 1, "first_keys": ["bad"]},
        "duplicate key": {"count": 1, "first_keys": ["tr0"]},
        "invalid JSON": {"count": 1, "first_keys": ["train.jsonl:15"]},
    }
    assert summary["test"]["problems"] == {
        "audio file not found": {"count": 1, "first_keys": ["te1"]}
    }

    # CMVN over all training utterances equals a direct computation.
    feats = [torch.from_numpy(compute_fbank(load_audio(u["audio"]))) for u in train]
    feats = torch.cat(feats).double()
    stats = json.loads((out / "global_cmvn").read_text())
    assert stats["frame_num"] == feats.shape[0]
    np.testing.assert_allclose(stats["mean_stat"], feats.sum(0).numpy(), rtol=1e-9)
    mean, istd = load_cmvn(out / "global_cmvn")
    np.testing.assert_allclose(mean.numpy(), feats.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(istd.numpy(), 1 / feats.std(0, unbiased=False).numpy(), rtol=1e-4)

    tokenizer = load_tokenizer(out)
    assert (
        tokenizer.bpe is None and tokenizer.decode(tokenizer.encode(SENTENCES[2])) == SENTENCES[2]
    )
    cfg = DataConfig(batch=BatchConfig(num_workers=0))
    loader = make_dataloader(out / "dev.jsonl", cfg, tokenizer, train=False)
    assert sorted(k for batch in loader for k in batch["keys"]) == ["d1", "d2"]
    assert loader.stats.total == 0


def test_prepare_bpe_and_errors(tmp_path, capsys):
    make_sources(tmp_path)
    out = tmp_path / "bpe"
    args = ["prepare", "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev")]
    args += ["--out", str(out), "--jobs", "1", "--tokenizer", "bpe", "--vocab-size", "40"]
    assert main(args + ["--cmvn-utterances", "3"]) == 0
    assert (out / "bpe.model").is_file() and not (out / "test.jsonl").exists()
    tokenizer = load_tokenizer(out)
    assert (
        tokenizer.bpe is not None
        and tokenizer.decode(tokenizer.encode(SENTENCES[0])) == SENTENCES[0]
    )
    cmvn = json.loads((out / "summary.json").read_text())["cmvn"]
    assert cmvn["utterances"] == 3
    assert cmvn["features"] == {
        "num_mel_bins": 80,
        "frame_length": 25.0,
        "frame_shift": 10.0,
        "log_floor": None,
    }
    capsys.readouterr()

    missing = ["prepare", "--train", str(tmp_path / "nope.jsonl"), "--dev", str(tmp_path / "dev")]
    assert main(missing + ["--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    expected = f"{tmp_path / 'nope.jsonl'}: no such manifest file or Kaldi data directory"
    assert error == f"u2moe prepare: error: {expected}"
    assert not (tmp_path / "x").exists()
