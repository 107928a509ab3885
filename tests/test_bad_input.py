"""Bad input through the command line: a non-zero exit, one error line naming the input, no
traceback, and no file lost or overwritten. Then the library paths behind the same inputs:
decode, prepare and training go on with the rest; the API and a recognizer name the problem.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from train_data import CONFIG, make_prepared_dir  # noqa: I001 (tests/ helper)

import u2moe
from u2moe.cli import main
from u2moe.config import load_yaml, parse_section
from u2moe.data.audio import AudioError
from u2moe.data.config import BatchConfig, DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.tokenizer import load_tokenizer
from u2moe.errors import UserError
from u2moe.model.config import ModelConfig
from u2moe.model.io import save_model_dir
from u2moe.model.u2 import U2Model

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.02 * rng.standard_normal(len(t))).astype(
        np.float32
    )


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model directory of configs/tiny.yaml, good and bad audio, a FIFO, a folder."""
    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    tiny = {**load_yaml(CONFIG)["model"], "vocab_size": len(UNITS)}
    cfg = parse_section(ModelConfig, tiny, f"{CONFIG}: model")
    config = {"data": {}, "decode": {"modes": ["ctc_greedy_search"], "beam_size": 2}}
    save_model_dir(root / "model", U2Model(cfg).eval(), config, UNITS)
    sf.write(root / "good.wav", tone(1.0), 16000)
    nan = tone(1.0, 1)
    nan[1000] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(root / "loud.wav", tone(1.0, 2) * 32768, 16000, subtype="FLOAT")
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo")
    (root / "existing.txt").write_text("keep me\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """path -> content hash of every regular file under root (a FIFO is never opened)."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`u2moe ARGV` in this process -> (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(argv, capsys, root: Path, names: str, status: int = 2) -> str:
    """The command exits with `status`, one error line names `names`, files are untouched."""
    before = snapshot(root)
    got, _, err = run(argv, capsys)
    assert got == status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and names in errors[0], err
    assert snapshot(root) == before
    return errors[0]


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        ("nan.wav", "nan.wav: non-finite samples (1 NaN or Inf of 16000)"),
        ("folder", "folder: not an audio file (a directory)"),
        ("fifo", "fifo: not an audio file (a FIFO)"),
    ],
)
def test_transcribe_names_what_is_wrong_with_the_audio(root, capsys, audio, message):
    line = assert_refused(
        ["transcribe", "--model", root / "model", root / audio], capsys, root, message, status=1
    )
    assert "not found" not in line


def test_transcribe_goes_on_after_a_bad_file_and_warns_about_int16_as_float(root, capsys, caplog):
    argv = ["transcribe", "--model", root / "model", root / "nan.wav", root / "loud.wav"]
    status, out, err = run(argv, capsys)
    assert status == 1 and out.startswith(f"{root / 'loud.wav'}\t") and "Traceback" not in err
    assert "loud.wav: float samples reach" in caplog.text
    assert "likely int16 values stored as float" in caplog.text


def test_command_arguments_are_checked_before_any_work(root, capsys):
    model, good = root / "model", root / "good.wav"
    write_jsonl(root / "one.jsonl", [{"key": "a", "audio": str(good), "text": "a"}])
    cases = [
        (["decode", "--model", model, "--data", root / "one.jsonl", "--out", root / "d",
          "--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["decode", "--model", model, "--data", root / "one.jsonl", "--out",
          root / "existing.txt"], "existing.txt is a file, not a directory"),
        (["decode", "--model", model, "--data", root / "one.jsonl", "--out", root / "d",
          "--batch-size", "x"], "argument --batch-size: expected a whole number, got 'x'"),
        (["transcribe", "--model", model, "--beam-size", "-3", good], "argument --beam-size"),
        (["corpus", "--tiny", "--out", root / "existing.txt" / "sub"], "existing.txt is a file"),
        (["corpus", "--tiny", "--out", root / "c", "--workers", "0"], "argument --workers"),
        (["corpus", "--tiny", "--out", root / "c", "--hours", "nan"], "argument --hours"),
        (["prepare", "--train", "t", "--dev", "d", "--out", root / "p", "--jobs", "0"],
         "argument --jobs"),
        (["verify-wenet", good], "good.wav: corrupt or unreadable fixture file (not a file"),
        (["average", "--exp", root / "e", "--num", "0"], "argument --num"),
        (["lm", "--units", model, "--text", "t.txt", "--out", root / "l", "--order", "0"],
         "argument --order"),
        (["train", "--config", CONFIG, "--data", root, "--exp", root / "existing.txt"],
         "existing.txt is a file"),
        (["train", "--config", good, "--data", root, "--exp", root / "e"],
         "good.wav: not a YAML config"),
        (["decode", "--model", model, "--data", good, "--out", root / "d"],
         "good.wav: not a text manifest (binary data; an audio file?)"),
        (["prepare", "--train", good, "--dev", good, "--out", root / "p"], "good.wav: not a text"),
    ]  # fmt: skip
    for argv, names in cases:
        assert_refused(argv, capsys, root, names)
    assert not any((root / name).exists() for name in ("c", "d", "e", "p"))


@pytest.mark.parametrize(
    ("section", "value", "names"),
    [
        ("model", {"encoder": {"dropout": 1.5}}, "model.encoder.dropout must be in [0, 1]"),
        ("model", {"decoder": {"dropout": -0.1}}, "model.decoder.dropout must be in [0, 1]"),
        ("model", {"encoder": {"n_heads": 0}}, "model.encoder.n_heads must be >= 1, got 0"),
        ("model", {"encoder": {"d_model": 0}}, "model.encoder.d_model must be >= 1, got 0"),
        ("model", {"encoder": {"d_ff": -5}}, "model.encoder.d_ff must be >= 1, got -5"),
        ("model", {"encoder": {"n_layers": -2}}, "model.encoder.n_layers must be >= 1, got -2"),
        ("data", {"features": {"frame_shift": 0}}, "data.features.frame_shift must be > 0"),
        ("data", {"augment": {"speed_perturb": [0.0]}}, "augment.speed_perturb must list"),
        ("decode", {"beam_size": 0}, "decode: beam_size must be >= 1, got 0"),
        ("trainer", {"lr": 1}, "unknown section 'trainer'"),
    ],
)
def test_bad_config_values_are_refused_when_read(root, capsys, tmp_path, section, value, names):
    config = load_yaml(CONFIG)
    config[section] = {**config.get(section, {}), **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["train", "--config", path, "--data", root, "--exp", tmp_path / "exp"]
    line = assert_refused(argv, capsys, tmp_path, names)
    assert str(path) in line
    assert_refused(["prepare", "--config", path, "--train", "t", "--dev", "d", "--out",
                    tmp_path / "p"], capsys, tmp_path, names)  # fmt: skip
    assert not (tmp_path / "exp").exists() and not (tmp_path / "p").exists()


def test_decode_refuses_duplicated_keys(root, capsys, tmp_path):
    line = {"audio": str(root / "good.wav"), "text": "a"}
    keys = ["u1", "u2", "u1"]
    write_jsonl(tmp_path / "dup.jsonl", [{"key": k, **line} for k in keys])
    argv = ["decode", "--model", root / "model", "--data", tmp_path / "dup.jsonl", "--out",
            tmp_path / "out"]  # fmt: skip
    assert_refused(argv, capsys, tmp_path, "dup.jsonl: duplicated keys u1;")
    assert not (tmp_path / "out").exists()


def test_decode_names_each_bad_entry_and_decodes_the_rest(root, capsys, tmp_path):
    good = str(root / "good.wav")
    entries = [
        {"key": "ok", "audio": good, "text": "a  b"},
        {"key": "past_end", "wav": good, "txt": "a", "start": 0.5, "end": 3.0},
        {"key": "negative", "wav": good, "txt": "a", "start": -1.0, "end": 0.5},
        {"key": "backwards", "wav": good, "txt": "a", "start": 0.8, "end": 0.2},
        {"key": "number", "audio": good, "text": 12345},
        {"key": "nan", "audio": str(root / "nan.wav"), "text": "a"},
    ]
    write_jsonl(tmp_path / "data.list", entries)
    argv = ["decode", "--model", root / "model", "--data", tmp_path / "data.list", "--out",
            tmp_path / "out"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 1 and "Traceback" not in err
    failed = dict(line.split("\t") for line in (tmp_path / "out" / "failed.txt").read_text()
                  .splitlines())  # fmt: skip
    assert sorted(failed) == ["backwards", "nan", "negative", "number", "past_end"]
    assert "segment outside the audio" in failed["past_end"]
    assert failed["negative"] == failed["backwards"] == "invalid segment"
    assert failed["number"] == "field 'text' is not a string"
    assert "non-finite samples" in failed["nan"]
    for key, reason in failed.items():
        assert f"u2moe decode: error: {key}: {reason}" in err
    ref = (tmp_path / "out" / "ref.txt").read_text()
    assert ref == "ok\ta b\n"  # the run of spaces is one


def test_a_model_file_of_python_objects_is_a_plain_message(root, capsys, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.yaml", "units.txt"):
        (model / name).write_bytes((root / "model" / name).read_bytes())
    torch.save({"weights": io.StringIO("not a tensor")}, model / "model.pt")
    line = assert_refused(
        ["transcribe", "--model", model, root / "good.wav"], capsys, tmp_path, "model.pt"
    )
    assert "holds Python objects" in line and "weights_only" not in line


def test_no_traceback_reaches_a_real_process(tmp_path):
    """The same through a separate `u2moe` process (what a user runs): an argument error and
    an error found by the command itself."""
    (tmp_path / "not_a_dir").write_text("x")
    for args, message in [
        (["--out", str(tmp_path / "not_a_dir")], "u2moe corpus: error: argument --out: "),
        (["--out", str(tmp_path / "c"), "--engines", "bogus"], "u2moe corpus: error: unknown"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "u2moe.cli", "corpus", *args], capture_output=True, text=True
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]


def test_api_names_the_problem(root):
    transcriber = u2moe.load_model(root / "model")
    with pytest.raises(UserError, match="expected a model directory path, got None"):
        u2moe.load_model(None)
    with pytest.raises(AudioError, match="audio: invalid sample rate \\('16000'; give a number"):
        transcriber.transcribe(tone(1.0), sample_rate="16000")
    for rate in (float("nan"), 4000, 10**7):  # NaN once sent the resampler into a loop
        with pytest.raises(AudioError, match="unsupported sample rate"):
            transcriber.transcribe(tone(1.0), sample_rate=rate)
    with pytest.raises(AudioError, match="^<BytesIO>: unreadable audio"):
        transcriber.transcribe(io.BytesIO(b"not audio"))
    wav = io.BytesIO((root / "good.wav").read_bytes())
    assert transcriber.transcribe(wav).text == transcriber.transcribe(root / "good.wav").text
    nan = tone(1.0)
    nan[5] = np.inf
    with pytest.raises(AudioError, match="audio: non-finite samples"):
        transcriber.transcribe(nan)


def test_a_recognizer_refuses_non_finite_samples_and_stays_usable(root):
    recognizer = u2moe.load_model(root / "model", chunk_size=4).recognizer()
    audio = tone(1.0)
    partials = recognizer.accept_waveform(audio)
    expected = recognizer.finish()
    nan = tone(0.5)
    nan[7] = np.nan
    got = recognizer.accept_waveform(audio[:8000])
    with pytest.raises(AudioError, match="non-finite samples"):
        recognizer.accept_waveform(nan)
    got += recognizer.accept_waveform(audio[8000:])  # the refused piece left no trace
    assert got == partials and recognizer.finish() == expected


def test_prepare_and_training_skip_and_count_non_finite_audio(tmp_path, capsys):
    data = make_prepared_dir(tmp_path / "data", n_train=6, n_dev=2)
    lines = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    nan = tone(0.6)
    nan[100] = np.nan
    sf.write(data / "wavs" / "nan.wav", nan, 16000, subtype="FLOAT")
    bad = [
        {"key": "nan", "audio": str(data / "wavs" / "nan.wav"), "text": "ab"},
        {**lines[0], "key": "past_end", "start": 0.1, "end": 30.0},
    ]
    write_jsonl(data / "mixed.jsonl", lines + bad)

    status, out, err = run(["prepare", "--train", data / "mixed.jsonl", "--dev",
                            data / "dev.jsonl", "--out", tmp_path / "p", "--jobs", "1"],
                           capsys)  # fmt: skip
    assert status == 0 and "\r" not in err
    problems = json.loads((tmp_path / "p" / "summary.json").read_text())["train"]["problems"]
    assert problems["non-finite samples"]["first_keys"] == ["nan"]
    assert problems["segment outside the audio"]["first_keys"] == ["past_end"]
    kept = [json.loads(line)["key"] for line in (tmp_path / "p" / "train.jsonl").open()]
    assert kept == [line["key"] for line in lines]

    cfg = DataConfig(batch=BatchConfig(num_workers=0))
    loader = make_dataloader(data / "mixed.jsonl", cfg, load_tokenizer(data), train=True)
    keys = sorted(key for batch in loader for key in batch["keys"])
    assert keys == sorted(line["key"] for line in lines)
    assert dict(loader.stats.counts) == {
        "non-finite samples": 1,
        "segment outside the audio": 1,
    }
