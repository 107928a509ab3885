"""u2moe.runtime (onnxruntime, no torch) gives the PyTorch recognizer's results."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from test_export import UNITS, tiny_model
from test_recognizer import synthetic_speech

import u2moe
from u2moe.backends.onnx_backend import OnnxBackend
from u2moe.cli import main as cli
from u2moe.decode.stream import EncoderStream, encoder_step_batch
from u2moe.export import export_model
from u2moe.model.io import save_model_dir

MODES = ["ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"]
NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")

    sys.meta_path.insert(0, NoTorch())
    """
)
RUNTIME = NO_TORCH + textwrap.dedent(
    """
    from u2moe.runtime import load_model

    out_dir, wav, chunk_size, left_chunks = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    model = load_model(out_dir, chunk_size=chunk_size, num_left_chunks=left_chunks, beam_size=4)
    results = {}
    for mode in MODES:
        result = model.transcribe(wav, timestamps=True, mode=mode)
        results[mode] = [result.tokens, [[w.start, w.end, w.text] for w in result.words]]
    recognizer = model.recognizer()
    partials = recognizer.accept_waveform(open(wav, "rb").read()[44:])  # 16-bit PCM
    final = recognizer.finish()
    results["stream"] = [[p.tokens for p in partials], final.tokens]
    assert "torch" not in sys.modules
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A MoE model, a streaming export (chunk 4, 4 left chunks, int8) and a full-context one
    without encoder_batch.onnx (its streams run one by one through encoder.onnx)."""
    root = tmp_path_factory.mktemp("runtime")
    save_model_dir(root / "model", tiny_model("moe"), {}, UNITS)
    with contextlib.redirect_stdout(io.StringIO()):
        export_model(root / "model", root / "chunk4", 4, 4, int8=True)
        export_model(root / "model", root / "full", -1, batch_encoder=False)
    sf.write(root / "a.wav", synthetic_speech(3.1), 16000, subtype="PCM_16")
    return root


def torch_results(root, chunk_size, left_chunks):
    model = u2moe.load_model(
        root / "model", chunk_size=chunk_size, num_left_chunks=left_chunks, beam_size=4
    )
    results = {}
    for mode in MODES:
        result = model.transcribe(root / "a.wav", timestamps=True, mode=mode)
        results[mode] = [result.tokens, [[w.start, w.end, w.text] for w in result.words]]
    recognizer = model.recognizer()
    partials = recognizer.accept_waveform(sf.read(root / "a.wav", dtype="int16")[0])
    final = recognizer.finish()
    results["stream"] = [[p.tokens for p in partials], final.tokens]
    return results


@pytest.mark.parametrize("export, chunk_size, left_chunks", [("chunk4", 4, 4), ("full", -1, -1)])
def test_runtime_without_torch_equals_pytorch(exports, export, chunk_size, left_chunks):
    script = f"MODES = {MODES!r}\n" + RUNTIME
    args = [str(exports / export), str(exports / "a.wav"), str(chunk_size), str(left_chunks)]
    run = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    want = torch_results(exports, chunk_size, left_chunks)
    assert got["ctc_greedy_search"][0]  # not an empty comparison
    for key in [*MODES, "stream"]:
        assert got[key][0] == want[key][0], key
    for mode in MODES:  # word times
        for (s1, e1, w1), (s2, e2, w2) in zip(got[mode][1], want[mode][1], strict=True):
            assert w1 == w2 and s1 == pytest.approx(s2) and e1 == pytest.approx(e2)
    assert got["stream"][1] == want["stream"][1]
    if chunk_size > 0:
        assert len(got["stream"][0]) > 3  # partial results per chunk


def streams_in_rounds(backend, feats: list[np.ndarray]) -> list[np.ndarray]:
    """Each of `feats` as a stream (chunk 4, 4 left chunks), the first two chunks ahead of the
    others (so caches of different ages share calls), every ready chunk in one round ->
    per stream its encoder frames."""
    streams = [EncoderStream(backend.info, 4, 4) for _ in feats]
    outputs = [[] for _ in feats]
    streams[0].accept_feats(feats[0][:40])
    outputs[0] += [streams[0].step(backend), streams[0].step(backend)]
    streams[0].accept_feats(feats[0][40:])
    for stream, frames in zip(streams[1:], feats[1:], strict=True):
        stream.accept_feats(frames)
    for stream in streams:
        stream.input_finished()
    while any(stream.ready() for stream in streams):
        for found, out in zip(outputs, encoder_step_batch(backend, streams), strict=True):
            if out is not None:
                found.append(out)
    return [np.concatenate(found) for found in outputs]


def test_encoder_batch_onnx_runs_a_round_in_one_call_as_each_stream_alone(exports, tmp_path):
    one_by_one = tmp_path / "one_by_one"
    shutil.copytree(exports / "chunk4", one_by_one)
    for path in one_by_one.glob("encoder_batch*.onnx"):
        path.unlink()
    batched, unbatched = OnnxBackend(exports / "chunk4"), OnnxBackend(one_by_one)
    assert batched.batched and not unbatched.batched
    calls = []
    session = batched.encoder
    batched.encoder = SimpleNamespace(
        run=lambda names, inputs: calls.append(len(inputs["chunk"])) or session.run(names, inputs)
    )
    rng = np.random.default_rng(0)
    feats = [rng.normal(18.0, 2.0, (n, 80)).astype(np.float32) for n in (90, 70, 53)]
    got = streams_in_rounds(batched, feats)
    assert max(calls) == 3 and len(calls) < sum(len(out) for out in got) / 4  # shared calls
    want = streams_in_rounds(unbatched, feats)
    alone = [streams_in_rounds(batched, [frames])[0] for frames in feats]
    for g, w, a in zip(got, want, alone, strict=True):
        assert g.shape == w.shape and len(g) > 8
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
        np.testing.assert_allclose(g, a, atol=1e-5, rtol=0)


def test_transcribe_onnx_command_runs_without_torch(exports):
    script = NO_TORCH + "from u2moe.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["transcribe", "--onnx", str(exports / "chunk4"), "--int8", str(exports / "a.wav")]
    run = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    path, text = run.stdout.strip().split("\t")
    assert path == str(exports / "a.wav") and text


def test_runtime_errors_are_one_line(exports, tmp_path, capsys):
    broken, broken_batch = tmp_path / "broken", tmp_path / "broken_batch"
    shutil.copytree(exports / "full", broken)
    shutil.copytree(exports / "chunk4", broken_batch)
    for path in (broken / "encoder.onnx", broken_batch / "encoder_batch.onnx"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated
    cases = [
        (["--onnx", str(broken)], "encoder.onnx: not a usable ONNX model"),
        (["--onnx", str(broken_batch)], "encoder_batch.onnx: not a usable ONNX model"),
        (["--onnx", str(exports / "model")], "not an `u2moe export`"),
        (["--onnx", str(exports / "full"), "--int8"], "exported without --int8"),
    ]
    for args, message in cases:
        assert cli(["transcribe", *args, str(exports / "a.wav")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wav file")
    assert cli(["transcribe", "--onnx", str(exports / "full"), str(tmp_path / "noise.wav")]) == 1
    err = capsys.readouterr().err
    assert "noise.wav" in err and len(err.strip().splitlines()) == 1, err
