import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import u2moe
from u2moe.cli import main
from u2moe.decode.batch import decode_batch, load_summary
from u2moe.decode.scoring import char_errors, word_errors
from u2moe.errors import UserError
from u2moe.model.config import DecoderConfig, EncoderConfig, ModelConfig
from u2moe.model.io import save_model_dir
from u2moe.model.u2 import U2Model

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]
MODES = "ctc_greedy_search,ctc_prefix_beam_search,attention,attention_rescoring"


def tone(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = np.sin(2 * np.pi * (200 + 100 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.3 * wave + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1),
    )
    model = U2Model(cfg).eval()
    with torch.no_grad():  # a peaky CTC head: no near-ties between batched and single decoding
        model.ctc.ctc_lo.weight.mul_(8.0)
    model.set_cmvn(torch.full((80,), 8.0), torch.full((80,), 0.25))
    config = {"data": {}, "decode": {"modes": ["attention_rescoring"], "beam_size": 3}}
    save_model_dir(root / "model", model, config, UNITS)

    lines = []
    for i, seconds in enumerate([1.0, 1.7, 0.6, 1.3]):
        sf.write(root / f"u{i}.wav", tone(seconds, i), 16000)
        lines.append({"key": f"u{i}", "audio": f"u{i}.wav", "text": "ab cd" if i % 2 else "e"})
    sf.write(root / "silent.wav", np.zeros(8000, np.float32), 16000)
    (root / "noise.wav").write_text("this is not audio")
    sf.write(root / "low.wav", tone(1.0, 5)[::4], 4000)
    good = "".join(json.dumps(line) + "\n" for line in lines)
    (root / "good.jsonl").write_text(good)
    bad = [
        {"key": "silent", "audio": "silent.wav", "text": "a"},
        {"key": "noise", "audio": "noise.wav", "text": "a"},
        {"key": "low", "audio": "low.wav", "text": "a"},
    ]
    mixed = good[: good.index("\n") + 1] + "".join(json.dumps(b) + "\n" for b in bad)
    (root / "mixed.jsonl").write_text(mixed + "{not json\n" + good[good.index("\n") + 1 :])
    return root


def read_table(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_decode_writes_hyps_errors_and_summary_for_every_mode(corpus, capsys):
    out = corpus / "out"
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "good.jsonl")]
    assert main([*args, "--out", str(out), "--mode", MODES, "--chunk-size", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utterances"] == 4 and summary["failed"] == 0
    assert summary["decode"]["chunk_size"] == 4 and summary["decode"]["beam_size"] == 3
    assert summary["audio_seconds"] == pytest.approx(4.6, abs=0.05)
    assert summary["model_parameters"] > 0
    refs = dict(read_table(out / "ref.txt"))
    api = u2moe.load_model(corpus / "model", chunk_size=4, modes=MODES.split(","))
    alone = {}  # each file decoded on its own, in every mode at once
    for key in refs:
        feats = api.features(corpus / f"{key}.wav")
        lengths = torch.tensor([len(feats)])
        alone[key] = decode_batch(api.backend, feats[None], lengths, api.decode_cfg)
    for mode in MODES.split(","):
        hyps = read_table(out / mode / "hyps.txt")
        assert [key for key, _ in hyps] == ["u0", "u1", "u2", "u3"]  # manifest order
        words = chars = 0
        for (key, text), row in zip(hyps, read_table(out / mode / "errors.txt")[1:], strict=True):
            # batched (padded) decoding gives what decoding the file alone gives
            assert text == api.tokenizer.decode(alone[key].hyps[mode][0].tokens)
            w, c = word_errors(refs[key], text), char_errors(refs[key], text)
            assert row[0] == key and row[-2:] == [refs[key], text]
            assert [int(x) for x in row[1:9]] == [
                w.substitutions,
                w.deletions,
                w.insertions,
                w.ref_length,
                c.substitutions,
                c.deletions,
                c.insertions,
                c.ref_length,
            ]
            words, chars = words + w.errors, chars + c.errors
        result = summary["modes"][mode]
        assert result["wer"]["errors"] == words and result["wer"]["ref_length"] == 6
        assert result["cer"]["errors"] == chars and result["cer"]["ref_length"] == 12
        seconds = result["processing_seconds"] / summary["audio_seconds"]
        assert result["rtf"] == pytest.approx(seconds, rel=0.01, abs=1e-3)
    text = (out / "summary.txt").read_text()
    assert all(mode in text for mode in MODES.split(",")) and "RTF" in text
    typed = load_summary(out / "summary.json")  # what the demo reads
    assert typed.as_dict() == summary and typed.decode.chunk_size == 4
    assert typed.modes["attention"].wer.errors == summary["modes"]["attention"]["wer"]["errors"]


def test_streaming_decode_equals_chunk_masked_decode(corpus, capsys):
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "good.jsonl")]
    args += ["--mode", MODES, "--chunk-size", "3", "--left-chunks", "2"]
    assert main([*args, "--out", str(corpus / "masked")]) == 0
    assert main([*args, "--out", str(corpus / "streamed"), "--streaming"]) == 0
    summary = json.loads((corpus / "streamed" / "summary.json").read_text())
    assert summary["decode"]["streaming"] is True
    for mode in MODES.split(","):
        masked = (corpus / "masked" / mode / "hyps.txt").read_text()
        assert (corpus / "streamed" / mode / "hyps.txt").read_text() == masked


def test_packed_cpu_weights_decode_like_eager(corpus, capsys):
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "good.jsonl")]
    args += ["--mode", MODES, "--chunk-size", "4"]
    assert main([*args, "--out", str(corpus / "eager")]) == 0
    assert main([*args, "--out", str(corpus / "fp32"), "--cpu-weights", "float32"]) == 0
    assert main([*args, "--out", str(corpus / "int8"), "--cpu-weights", "int8"]) == 0
    eager = json.loads((corpus / "eager" / "summary.json").read_text())
    int8 = json.loads((corpus / "int8" / "summary.json").read_text())
    assert int8["cpu_weights"] == "int8"
    assert int8["model_parameters"] == eager["model_parameters"]
    for mode in MODES.split(","):
        hyps = (corpus / "eager" / mode / "hyps.txt").read_text()
        assert (corpus / "fp32" / mode / "hyps.txt").read_text() == hyps
        assert len(read_table(corpus / "int8" / mode / "hyps.txt")) == 4


def test_streaming_needs_a_chunk_size(corpus, capsys):
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "good.jsonl")]
    assert main([*args, "--out", str(corpus / "bad"), "--streaming"]) == 2
    assert "streaming decoding needs chunk_size > 0" in capsys.readouterr().err


def test_lexicon_search_decodes_only_words_of_the_lm_text(corpus, capsys):
    lm, out = corpus / "lm", corpus / "lexicon_out"
    assert main(["lm", "--units", str(corpus / "model"), "--text", str(corpus / "good.jsonl"),
                 "--out", str(lm)]) == 0  # fmt: skip
    assert "3-gram LM of 4 sentences, lexicon of 3 words" in capsys.readouterr().out
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "good.jsonl")]
    args += ["--out", str(out), "--mode", "ctc_greedy_search,ctc_lexicon_beam_search"]
    assert main(args) == 2
    assert "ctc_lexicon_beam_search needs lm" in capsys.readouterr().err
    assert main([*args, "--lm", str(lm), "--word-score", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decode"]["lm"] == str(lm)
    hyps = read_table(out / "ctc_lexicon_beam_search" / "hyps.txt")
    words = {word for _, text in hyps for word in text.split()}
    assert len(hyps) == 4 and words and words <= {"ab", "cd", "e"}
    model = u2moe.load_model(corpus / "model", lm=str(lm), word_score=5.0)
    text = model.transcribe(corpus / "u1.wav", mode="ctc_lexicon_beam_search").text
    assert text == dict(hyps)["u1"]


def test_bad_utterances_are_reported_and_the_rest_decoded(corpus, capsys):
    out = corpus / "mixed_out"
    args = ["decode", "--model", str(corpus / "model"), "--data", str(corpus / "mixed.jsonl")]
    assert main([*args, "--out", str(out), "--mode", "ctc_greedy_search"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    failed = dict(read_table(out / "failed.txt"))
    assert sorted(failed) == ["low", "mixed.jsonl:5", "noise", "silent"]
    assert "silent audio" in failed["silent"] and "unreadable audio" in failed["noise"]
    assert "unsupported sample rate" in failed["low"]
    assert len(errors) == 4 and all(e.startswith("u2moe decode: error: ") for e in errors)
    hyps = read_table(out / "ctc_greedy_search" / "hyps.txt")
    assert [key for key, _ in hyps] == ["u0", "u1", "u2", "u3"]


def test_an_incomplete_model_directory_is_one_line_error(corpus, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((corpus / "model" / "config.yaml").read_text())
    (tmp_path / "units.txt").write_text((corpus / "model" / "units.txt").read_text())
    args = ["--model", str(tmp_path), "--data", str(corpus / "good.jsonl"), "--out", "x"]
    assert main(["decode", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("u2moe decode: error:") and "model.pt" in err and "\n" not in err
    assert main(["decode", *args[:4], "--out", str(tmp_path / "o"), "--mode", "beam"]) == 2
    assert "unknown mode 'beam'" in capsys.readouterr().err


def test_transcribe_prints_text_timestamps_and_json(corpus, capsys):
    files = [str(corpus / "u1.wav"), str(corpus / "noise.wav"), str(corpus / "u3.wav")]
    model = ["transcribe", "--model", str(corpus / "model")]
    assert main([*model, *files]) == 1  # the bad file in the middle does not stop the rest
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [files[0], files[2]]
    assert captured.err.strip().startswith("u2moe transcribe: error: ")
    assert "noise.wav: unreadable audio" in captured.err

    assert main([*model, "--timestamps", "--json", files[0], files[2]]) == 0
    api = u2moe.load_model(corpus / "model")
    for line, path in zip(capsys.readouterr().out.splitlines(), [files[0], files[2]], strict=True):
        result = json.loads(line)
        expected = api.transcribe(path, timestamps=True)
        assert result["file"] == path and result["text"] == expected.text
        assert " ".join(w["text"] for w in result["words"]) == " ".join(expected.text.split())
        times = [(p["start"], p["end"]) for p in result["pieces"]]
        assert times == sorted(times) and all(0 <= s <= e <= 1.7 for s, e in times)


def test_import_u2moe_stays_light():
    assert (
        "torch"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, u2moe; print(sorted(sys.modules))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_api_transcribes_arrays_like_files(corpus):
    model = u2moe.load_model(corpus / "model", modes=["ctc_prefix_beam_search"])
    from_file = model.transcribe(corpus / "u1.wav")
    samples, _ = sf.read(corpus / "u1.wav", dtype="int16")
    assert model.transcribe(samples).tokens == from_file.tokens
    assert str(model.transcribe(samples.astype(np.float32) / 32768)) == from_file.text
    with pytest.raises(UserError, match="unsupported sample rate"):
        model.transcribe(samples, sample_rate=4000)
    with pytest.raises(UserError, match="too short"):
        model.transcribe(samples[:1000])


def test_a_model_without_right_to_left_decoder_rescores_left_to_right(tmp_path):
    cfg = ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=1, kernel_size=5),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=0),
        reverse_weight=0.0,
    )
    save_model_dir(tmp_path, U2Model(cfg), {}, UNITS)
    sf.write(tmp_path / "a.wav", tone(0.5, 0), 16000)
    model = u2moe.load_model(tmp_path)  # the default reverse_weight 0.5 falls back to 0
    assert model.decode_cfg.reverse_weight == 0.0
    assert isinstance(model.transcribe(tmp_path / "a.wav").text, str)
    with pytest.raises(UserError, match="needs a right-to-left decoder"):
        u2moe.load_model(tmp_path, reverse_weight=0.5)


def test_encoder_probe_reports_every_stage_and_the_audio_swap(corpus):
    script = Path(__file__).resolve().parents[1] / "scripts" / "probe_encoder.py"
    argv = ["--model", corpus / "model", "--data", corpus / "good.jsonl", "--batches", "1"]
    out = subprocess.run(
        [sys.executable, str(script), *map(str, argv)], capture_output=True, text=True, check=True
    ).stdout
    rows = {line[:12].strip(): line[12:].split() for line in out.splitlines()[1:5]}
    assert list(rows) == ["front end", "block 0", "block 1", "final norm"]
    assert all(0.0 <= float(share) <= 1.0 and float(norm) > 0 for share, norm in rows.values())
    losses = out.splitlines()[-1].removeprefix("batch 0:").split("|")
    assert len(losses) == 3 and all(float(loss) > 0 for loss in losses)
