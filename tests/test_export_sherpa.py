"""--format sherpa-onnx: sherpa-onnx itself loads the export and gives u2moe's CTC greedy text.

sherpa-onnx computes fbank with its own defaults (high_freq -400 Hz, snip_edges false), not
WeNet's (Nyquist, snip_edges true); u2moe's side here runs on the same features, so the
comparison is of the models, token for token.
"""

import contextlib
import io
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch
from test_export import UNITS, tiny_model
from test_recognizer import synthetic_speech

from u2moe.export import export_model
from u2moe.model.io import save_model_dir
from u2moe.model.wenet import build_model

sherpa_onnx = pytest.importorskip("sherpa_onnx")
FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "wenet_u2pp_moe.pt"


def sherpa_fbank(samples: np.ndarray) -> torch.Tensor:
    """int16 samples -> (1, T, 80): fbank as sherpa-onnx computes it for WeNet models."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.high_freq = -400.0
    opts.energy_floor = 0.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples.astype(np.float32).tolist())
    fbank.input_finished()
    frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    return torch.tensor(np.stack(frames)).unsqueeze(0)


def u2moe_greedy_text(model, units, feats, chunk_size, left_chunks) -> str:
    with torch.no_grad():
        if chunk_size > 0:
            enc, _ = model.encoder.forward_chunk_by_chunk(feats, chunk_size, left_chunks)
        else:
            enc, _ = model.encode(feats, torch.tensor([feats.size(1)]))
        best = model.ctc_log_probs(enc)[0].argmax(-1).tolist()
    tokens = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
    return "".join(units[t] for t in tokens).replace("\u2581", " ").strip()


def sherpa_text(out: Path, samples: np.ndarray, chunk_size, left_chunks) -> str:
    tokens, model = str(out / "tokens.txt"), str(out / "model.onnx")
    audio = samples.astype(np.float32) / 32768
    if chunk_size > 0:
        recognizer = sherpa_onnx.OnlineRecognizer.from_wenet_ctc(
            tokens=tokens,
            model=model,
            chunk_size=chunk_size,
            num_left_chunks=left_chunks,
            num_threads=1,
        )
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, audio)
        stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
        return recognizer.get_result(stream).strip()
    recognizer = sherpa_onnx.OfflineRecognizer.from_wenet_ctc(
        model=model, tokens=tokens, num_threads=1
    )
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, audio)
    recognizer.decode_stream(stream)
    return stream.result.text.strip()


def wenet_fixture_model():
    """The WeNet MoE fixture imported, its CTC blank made rarer so random weights give text."""
    if not FIXTURE.is_file():
        pytest.skip(f"{FIXTURE} not available")
    raw = torch.load(FIXTURE, weights_only=True)
    model = build_model(raw["config"], raw["state_dict"])
    with torch.no_grad():
        model.ctc.ctc_lo.bias[0] -= 4.0
    units = ["<blank>", "<unk>"] + [chr(ord("A") + i) for i in range(37)] + ["<sos/eos>"]
    return model, units


@pytest.mark.parametrize(
    "source, chunk_size, left_chunks",
    [("moe", 4, 4), ("dense", -1, -1), ("wenet", 4, 2), ("wenet", -1, -1)],
)
def test_sherpa_onnx_gives_u2moe_greedy_text(tmp_path, source, chunk_size, left_chunks):
    if source == "wenet":
        model, units = wenet_fixture_model()
    else:
        model, units = tiny_model(source), UNITS
    save_model_dir(tmp_path / "model", model, {}, units)
    with contextlib.redirect_stdout(io.StringIO()):
        export_model(
            tmp_path / "model", tmp_path / "sherpa", chunk_size, left_chunks, fmt="sherpa-onnx"
        )
    samples = synthetic_speech(seconds=3.1)
    want = u2moe_greedy_text(model, units, sherpa_fbank(samples), chunk_size, left_chunks)
    assert want  # a comparison of something
    assert sherpa_text(tmp_path / "sherpa", samples, chunk_size, left_chunks) == want
