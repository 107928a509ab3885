"""u2moe export (ONNX, WeNet's layout): each file equals its PyTorch module; bad input."""

import contextlib
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from u2moe.cli import main as cli
from u2moe.config import load_yaml
from u2moe.errors import UserError
from u2moe.export import export_model
from u2moe.export.moe import FORMS
from u2moe.export.onnx import add_metadata, encoder_metadata, export_encoder, export_onnx
from u2moe.model.config import DecoderConfig, EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.io import load_model_dir, save_model_dir
from u2moe.model.u2 import U2Model, decoder_inputs

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]
FFN = {"dense": FFNConfig(type="dense"), "moe": FFNConfig(type="moe", n_experts=4, top_k=2)}


def tiny_model(ffn: str, seed: int = 0) -> U2Model:
    """A random tiny causal model whose CTC greedy output is not empty on speech-like audio."""
    cfg = ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1),
    )
    cfg.encoder.ffn = cfg.decoder.ffn = FFN[ffn]
    torch.manual_seed(seed)
    model = U2Model(cfg).eval()
    with torch.no_grad():
        model.ctc.ctc_lo.weight.mul_(8.0)
        model.ctc.ctc_lo.bias[0] -= 3.0  # blank less often: text from random weights
    model.set_cmvn(torch.full((80,), 18.0) + torch.randn(80), torch.full((80,), 0.5))
    return model


def quiet():
    """The exporter prints its progress; tests keep it out of their output."""
    return contextlib.redirect_stdout(io.StringIO())


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def stream_like_wenet_runtime(sess, feats, chunk_size, left_chunks):
    """Run encoder.onnx over feats (1, T, 80) as WeNet's and sherpa-onnx's runtimes do:
    a zero cache of chunk * left_chunks slots, offset counted from its end, a mask opened
    chunk by chunk; without left chunks a cache growing from empty. -> (1, T', d)."""
    meta = sess.get_modelmeta().custom_metadata_map
    blocks, heads, d = int(meta["num_blocks"]), int(meta["head"]), int(meta["output_size"])
    rate, context = int(meta["subsampling_rate"]), int(meta["right_context"]) + 1
    window, stride = (chunk_size - 1) * rate + context, chunk_size * rate
    cache = chunk_size * left_chunks if left_chunks >= 0 else 0
    att_cache = np.zeros((blocks, heads, cache, 2 * d // heads), np.float32)
    cnn_cache = np.zeros((blocks, 1, d, int(meta["cnn_module_kernel"]) - 1), np.float32)
    opened, offset, outputs = 0, cache, []
    for start in range(0, feats.shape[1] - context + 1, stride):
        chunk = feats[:, start : start + window]
        t = (chunk.shape[1] - context) // rate + 1
        keys = att_cache.shape[2] + t
        att_mask = np.arange(keys)[None, None] >= att_cache.shape[2] - opened
        out, att_cache, cnn_cache = sess.run(
            None,
            {
                "chunk": chunk,
                "offset": np.array(offset),
                "required_cache_size": np.array(cache if left_chunks >= 0 else -1),
                "att_cache": att_cache,
                "cnn_cache": cnn_cache,
                "att_mask": att_mask,
            },
        )
        outputs.append(out)
        offset += out.shape[1]
        opened = min(opened + out.shape[1], att_cache.shape[2])
    return np.concatenate(outputs, axis=1)


@pytest.mark.parametrize(
    "ffn, chunk_size, left_chunks",
    [("moe", 4, 4), ("moe", 16, -1), ("dense", 4, -1), ("dense", 16, 4)],
)
def test_encoder_onnx_chunk_by_chunk_equals_forward_chunk(tmp_path, ffn, chunk_size, left_chunks):
    model = tiny_model(ffn)
    with quiet():
        export_encoder(model, tmp_path / "encoder.onnx", chunk_size, left_chunks, "contrib")
    add_metadata(tmp_path / "encoder.onnx", encoder_metadata(model, chunk_size, left_chunks, "c"))
    torch.manual_seed(1)
    feats = torch.randn(1, 250, 80)  # 61 encoder frames: a shorter last chunk
    with torch.no_grad():
        want, _ = model.encoder.forward_chunk_by_chunk(feats, chunk_size, left_chunks)
    sess = session(tmp_path / "encoder.onnx")
    got = stream_like_wenet_runtime(sess, feats.numpy(), chunk_size, left_chunks)
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk_size, form", [(4, "sorted"), (-1, "contrib")])
def test_encoder_batch_onnx_equals_forward_chunk_for_streams_of_any_age(tmp_path, chunk_size, form):
    # a cache of all left chunks (it grows) or a full-context export (no cache)
    model = tiny_model("moe")
    with quiet():
        export_encoder(model, tmp_path / "b.onnx", chunk_size, -1, form, batched=True)
    sess = session(tmp_path / "b.onnx")
    enc = model.encoder
    attn = enc.encoders[0].self_attn
    frames = (max(chunk_size, 16) - 1) * enc.subsampling_rate + enc.right_context + 1
    t = enc.embed.output_length(frames)
    torch.manual_seed(2)
    for batch, cache in [(3, 8 if chunk_size > 0 else 0), (1, 0), (5, 0)]:
        chunk = torch.randn(batch, frames, 80) * 2 + 18
        offset = torch.arange(batch) + cache  # streams of different ages
        att_cache = torch.randn(batch, len(enc.encoders), attn.h, cache, 2 * attn.d_k)
        kernel = enc.encoders[0].conv_module.lorder
        cnn_cache = torch.randn(batch, len(enc.encoders), enc.output_size, kernel)
        att_mask = torch.ones(batch, 1, cache + t, dtype=torch.bool)
        att_mask[0, :, : cache // 2] = False  # a younger stream's left padding
        with torch.no_grad():
            want = enc.forward_chunk(chunk, offset, -1, att_cache, cnn_cache, att_mask)
        inputs = (chunk, offset, torch.tensor(-1), att_cache, cnn_cache, att_mask)
        names = ["chunk", "offset", "required_cache_size", "att_cache", "cnn_cache", "att_mask"]
        got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_every_moe_form_equals_the_pytorch_layer(tmp_path, form):
    from u2moe.model.moe import MoEFeedForward

    torch.manual_seed(0)
    layer = MoEFeedForward(16, 24, torch.nn.ReLU(), n_experts=4, top_k=2).eval()
    auto = torch.export.Dim.AUTO
    export_onnx(
        layer, (torch.randn(1, 7, 16),), tmp_path / "moe.onnx", ["x"], ["y"], ({1: auto},), form
    )
    sess = session(tmp_path / "moe.onnx")
    for frames in (1, 5, 33):
        x = torch.randn(1, frames, 16)
        with torch.no_grad():
            want = layer.forward_reference(x)
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want.numpy(), atol=1e-5)
    nodes = {node.op_type for node in onnx.load(str(tmp_path / "moe.onnx")).graph.node}
    assert ("MoE" in nodes) == (form == "contrib")


@pytest.fixture(scope="module")
def full_export(tmp_path_factory):
    """A MoE model directory and its full-context export with int8 files."""
    root = tmp_path_factory.mktemp("full")
    model = tiny_model("moe")
    save_model_dir(root / "model", model, {}, UNITS)
    with quiet():
        export_model(root / "model", root / "onnx", chunk_size=-1, int8=True, batch_encoder=False)
    return model, root


def run_full_context(path, feats):
    sess = session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    blocks, heads, d = int(meta["num_blocks"]), int(meta["head"]), int(meta["output_size"])
    t = (feats.shape[1] - 7) // 4 + 1
    inputs = {
        "chunk": feats,
        "offset": np.array(0),
        "required_cache_size": np.array(-1),
        "att_cache": np.zeros((blocks, heads, 0, 2 * d // heads), np.float32),
        "cnn_cache": np.zeros((blocks, 1, d, int(meta["cnn_module_kernel"]) - 1), np.float32),
        "att_mask": np.ones((1, 1, t), bool),
    }
    return sess.run(None, inputs)[0]


def test_full_context_export_equals_forward_ctc_and_decoders(full_export):
    model, root = full_export
    out = root / "onnx"
    config = load_yaml(out / "config.yaml")
    assert config["export"]["chunk_size"] == -1 and config["export"]["moe_form"] == "sorted"
    assert (out / "units.txt").read_text().split()[::2] == UNITS
    torch.manual_seed(2)
    for frames in (300, 41):  # dynamic number of frames
        feats = torch.randn(1, frames, 80)
        with torch.no_grad():
            want, _ = model.encode(feats, torch.tensor([frames]))
        got = run_full_context(out / "encoder.onnx", feats.numpy())
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)

    with torch.no_grad():
        enc, lengths = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
        log_probs = model.ctc_log_probs(enc)
    got = session(out / "ctc.onnx").run(None, {"hidden": enc.numpy()})[0]
    np.testing.assert_allclose(got, log_probs.numpy(), atol=1e-4, rtol=0)

    hyps = [[2, 3, 4, 5], [6], [], [7, 2, 2, 3, 4, 5, 6]]
    hyps_in, hyps_lens, r_hyps = decoder_inputs(hyps, model.sos, model.eos)
    score, r_score = session(out / "decoder.onnx").run(
        None,
        {
            "encoder_out": enc.numpy(),
            "hyps": hyps_in.numpy(),
            "hyps_lens": hyps_lens.numpy(),
            "r_hyps": r_hyps.numpy(),
        },
    )
    n = len(hyps)
    with torch.no_grad():
        l2r, r2l = model.decoder_log_probs(
            enc.expand(n, -1, -1), lengths.expand(n), hyps_in, hyps_lens, r_hyps
        )
    for i, hyp in enumerate(hyps):
        targets = hyp + [model.eos]
        want_l2r = sum(l2r[i, j, tok].item() for j, tok in enumerate(targets))
        want_r2l = sum(r2l[i, j, tok].item() for j, tok in enumerate(hyp[::-1] + [model.eos]))
        assert score[i] == pytest.approx(want_l2r, abs=1e-4)
        assert r_score[i] == pytest.approx(want_r2l, abs=1e-4)


def test_int8_files_run_and_stay_close(full_export):
    model, root = full_export
    out = root / "onnx"
    torch.manual_seed(3)
    feats = torch.randn(1, 200, 80).numpy()
    fp32 = run_full_context(out / "encoder.onnx", feats)
    int8 = run_full_context(out / "encoder.int8.onnx", feats)
    assert not np.array_equal(fp32, int8)  # quantized for real
    assert np.abs(int8 - fp32).mean() < 0.1 * np.abs(fp32).mean()
    ctc32 = session(out / "ctc.onnx").run(None, {"hidden": fp32})[0]
    ctc8 = session(out / "ctc.int8.onnx").run(None, {"hidden": fp32})[0]
    assert (ctc8.argmax(-1) == ctc32.argmax(-1)).mean() > 0.9


def test_export_errors_are_one_line(tmp_path, full_export, capsys):
    model, root = full_export
    cases = [
        (["--model", str(tmp_path / "nothing")], "no such model directory"),
        (["--model", str(root / "model"), "--format", "tflite"], "--format: unsupported format"),
        (["--model", str(root / "model"), "--chunk-size", "0"], "--chunk-size"),
        (["--model", str(root / "model"), "--format", "wenet", "--int8"], "--int8: not supported"),
        (
            ["--model", str(root / "model"), "--format", "sherpa-onnx", "--left-chunks", "-1"],
            "--left-chunks -1: not supported",
        ),
    ]
    for args, message in cases:
        assert cli(["export", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()

    other = tmp_path / "other"
    save_model_dir(other, tiny_model("dense", seed=5), {}, UNITS)
    assert cli(["export", "--model", str(other), "--out", str(root / "onnx")]) == 2
    err = capsys.readouterr().err
    assert "holds the export of another model" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and not an export"):
        export_model(other, tmp_path / "busy")
    _, _, units = load_model_dir(root / "model")
    assert units == UNITS


@pytest.mark.parametrize("ffn", ["moe", "dense"])
def test_wenet_format_round_trips_through_import_wenet(tmp_path, ffn, capsys):
    model = tiny_model(ffn)
    save_model_dir(tmp_path / "model", model, {}, UNITS)
    assert (
        cli(
            ["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "wenet")]
            + ["--format", "wenet"]
        )
        == 0
    )
    exp = tmp_path / "wenet"
    assert {"train.yaml", "final.pt", "global_cmvn", "units.txt"} <= {p.name for p in exp.iterdir()}
    raw = torch.load(exp / "final.pt", weights_only=True)
    if ffn == "moe":  # WeNet's names: a gate and a list of experts
        assert "encoder.encoders.0.feed_forward.gate.weight" in raw
        assert "encoder.encoders.0.feed_forward.experts.3.w_2.bias" in raw
    args = ["import-wenet", "--config", str(exp / "train.yaml"), "--checkpoint"]
    assert cli([*args, str(exp / "final.pt"), "--out", str(tmp_path / "back")]) == 0
    back, _, units = load_model_dir(tmp_path / "back")
    assert units == UNITS
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    feats = torch.randn(2, 120, 80)
    with torch.no_grad():
        want, _ = model.encode(feats, torch.tensor([120, 90]))
        got, _ = back.encode(feats, torch.tensor([120, 90]))
    assert torch.equal(got, want)
    # WeNet's global_cmvn (JSON statistics) gives back the model's CMVN
    from u2moe.model.wenet import load_wenet_cmvn

    mean, istd = load_wenet_cmvn(exp / "global_cmvn")
    torch.testing.assert_close(mean, model.encoder.global_cmvn.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(istd, model.encoder.global_cmvn.istd, rtol=1e-5, atol=1e-6)


def test_int8_of_a_model_kept_in_external_data(tmp_path, full_export, monkeypatch):
    """Models over protobuf's 2 GB (MoE-1B) are saved with external data; the int8 copy
    must be too (shown with the threshold lowered to a few bytes)."""
    import u2moe.export.onnx as onnx_export

    model, _ = full_export
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 16)
    onnx_export.export_ctc(model, tmp_path / "ctc.onnx")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ctc.onnx.")]
    onnx_export.quantize(tmp_path / "ctc.onnx")
    hidden = np.random.default_rng(0).standard_normal((1, 30, 32)).astype(np.float32)
    fp32 = session(tmp_path / "ctc.onnx").run(None, {"hidden": hidden})[0]
    int8 = session(tmp_path / "ctc.int8.onnx").run(None, {"hidden": hidden})[0]
    assert (int8.argmax(-1) == fp32.argmax(-1)).mean() > 0.9
