"""WeNet import: verify-wenet on WeNet's fixtures, import-wenet end to end, every U2++ option."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from u2moe.cli import main as cli
from u2moe.commands.wenet import data_section
from u2moe.errors import UserError
from u2moe.model.io import load_model_dir
from u2moe.model.u2 import U2Model, decoder_inputs
from u2moe.model.wenet import (
    build_model,
    config_from_wenet,
    convert_state_dict,
    load_wenet_cmvn,
)

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
FIXTURE_NAMES = ["wenet_u2pp_dense.pt", "wenet_u2pp_moe.pt"]


def fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_verify_wenet_passes_on_fixture(name, capsys):
    if not (FIXTURES / name).is_file():
        pytest.skip("fixture not available")
    assert cli(["verify-wenet", str(FIXTURES / name)]) == 0
    out = capsys.readouterr().out
    for output in ("encoder_full", "stream0_chunk4_left2", "forward_chunk[2].att_cache"):
        assert re.search(rf"^{re.escape(output)} .* ok$", out, re.M), output
    assert "decoder_r2l_log_probs" in out and "losses.loss " in out


def test_verify_wenet_fails_on_perturbed_weights(tmp_path, capsys):
    raw = fixture("wenet_u2pp_moe.pt")
    # Two experts of the R2L decoder swapped: the mistake a wrong expert mapping makes.
    sd, prefix = raw["state_dict"], "decoder.right_decoder.decoders.0.feed_forward.experts"
    for name in ("w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"):
        sd[f"{prefix}.0.{name}"], sd[f"{prefix}.1.{name}"] = (
            sd[f"{prefix}.1.{name}"],
            sd[f"{prefix}.0.{name}"],
        )
    path = tmp_path / "perturbed.pt"
    torch.save(raw, path)
    assert cli(["verify-wenet", str(path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^decoder_r2l_log_probs .* FAIL$", out, re.M)
    assert re.search(r"^encoder_full .* ok$", out, re.M)
    assert "FAILED" in out


def test_verify_wenet_malformed_fixture_is_one_line_error(tmp_path, capsys):
    raw = fixture("wenet_u2pp_dense.pt")
    del raw["outputs"]["decoder"]["hyps"]
    path = tmp_path / "broken.pt"
    torch.save(raw, path)
    assert cli(["verify-wenet", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("u2moe verify-wenet: error:") and "decoder" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli(["verify-wenet", str(tmp_path / "junk.pt")]) == 2
    assert cli(["verify-wenet", str(tmp_path / "missing.pt")]) == 2


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def write_wenet_experiment(raw: dict, directory: Path, with_cmvn_in_checkpoint: bool) -> None:
    """The files of a WeNet experiment: train.yaml, final.pt, global_cmvn, units.txt."""
    directory.mkdir()
    conf = dict(raw["config"])
    conf["dataset_conf"] = {"fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "dither": 0.1}}
    (directory / "train.yaml").write_text(yaml.safe_dump(conf))
    state = dict(raw["state_dict"])
    if not with_cmvn_in_checkpoint:
        del state["encoder.global_cmvn.mean"], state["encoder.global_cmvn.istd"]
    torch.save(state, directory / "final.pt")
    (directory / "global_cmvn").write_text(json.dumps(raw["cmvn"]["json"]))
    vocab = raw["config"]["output_dim"]
    units = ["<blank>", "<unk>", *(f"u{i}" for i in range(vocab - 3)), "<sos/eos>"]
    (directory / "units.txt").write_text("".join(f"{u} {i}\n" for i, u in enumerate(units)))


@pytest.mark.parametrize("cmvn_in_checkpoint", [True, False])
def test_import_wenet_end_to_end(tmp_path, cmvn_in_checkpoint):
    raw = fixture("wenet_u2pp_moe.pt")
    exp = tmp_path / "exp"
    write_wenet_experiment(raw, exp, cmvn_in_checkpoint)
    args = ["import-wenet", "--config", str(exp / "train.yaml")]
    args += ["--checkpoint", str(exp / "final.pt"), "--out", str(tmp_path / "model")]
    if not cmvn_in_checkpoint:
        args += ["--cmvn", str(exp / "global_cmvn")]
    assert cli(args) == 0  # units.txt found beside the checkpoint

    model, config, units = load_model_dir(tmp_path / "model")
    assert len(units) == 40 and units[-1] == "<sos/eos>"
    assert config["model"]["encoder"]["ffn"]["type"] == "moe"
    assert config["data"]["features"]["dither"] == 0.1
    inputs, outputs = raw["inputs"], raw["outputs"]
    with torch.no_grad():
        enc, lengths = model.encode(inputs["feats"], inputs["feats_lengths"])
        assert lengths.tolist() == outputs["encoder_full_lengths"].tolist()
        real = lengths[1]
        torch.testing.assert_close(
            enc[1, :real], outputs["encoder_full"][1, :real], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            model.ctc_log_probs(enc)[0], outputs["ctc_log_probs"][0], atol=2e-5, rtol=0
        )
        ref = outputs["decoder"]
        hyps_in, hyps_lengths, r2l_in = decoder_inputs(ref["hyps"], model.sos, model.eos)
        n = len(ref["hyps"])
        l2r, r2l = model.decoder_log_probs(
            enc[:1].expand(n, -1, -1), lengths[:1].expand(n), hyps_in, hyps_lengths, r2l_in
        )
        close(l2r, ref["l2r_log_probs"], atol=1e-5)
        close(r2l, ref["r2l_log_probs"], atol=1e-5)
    assert not list((tmp_path / "model").glob("*.tmp"))


def test_import_wenet_errors_are_one_line(tmp_path, capsys):
    raw = fixture("wenet_u2pp_dense.pt")
    exp = tmp_path / "exp"
    write_wenet_experiment(raw, exp, True)
    base = ["import-wenet", "--config", str(exp / "train.yaml"), "--out", str(tmp_path / "m")]
    # A checkpoint of another config: 3 encoder blocks asked for, 2 in the file.
    conf = yaml.safe_load((exp / "train.yaml").read_text())
    conf["encoder_conf"]["num_blocks"] = 3
    (exp / "deeper.yaml").write_text(yaml.safe_dump(conf))
    deeper = ["import-wenet", "--config", str(exp / "deeper.yaml"), "--out", str(tmp_path / "m")]
    assert cli([*deeper, "--checkpoint", str(exp / "final.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing encoder.encoders.2." in err
    # Units of another vocabulary.
    (exp / "small_units.txt").write_text("<blank> 0\n<unk> 1\na 2\n<sos/eos> 3\n")
    args = [*base, "--checkpoint", str(exp / "final.pt"), "--units", str(exp / "small_units.txt")]
    assert cli(args) == 2
    assert "4 units" in capsys.readouterr().err
    assert cli([*base, "--checkpoint", str(exp / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_kaldi_text_cmvn_equals_json(tmp_path):
    stats = {"mean_stat": [10.0, -4.0, 30.0], "var_stat": [60.0, 9.0, 200.0], "frame_num": 5}
    (tmp_path / "cmvn.json").write_text(json.dumps(stats))
    row1 = " ".join(map(str, stats["mean_stat"])) + " 5"
    row2 = " ".join(map(str, stats["var_stat"])) + " 0"
    (tmp_path / "cmvn.ark").write_text(f" [\n  {row1}\n  {row2} ]\n")
    mean, istd = load_wenet_cmvn(tmp_path / "cmvn.json")
    torch.testing.assert_close(mean, torch.tensor([2.0, -0.8, 6.0]))
    torch.testing.assert_close(
        istd, torch.tensor([1 / (12 - 4) ** 0.5, 1 / (1.8 - 0.64) ** 0.5, 1 / 2.0])
    )
    kaldi_mean, kaldi_istd = load_wenet_cmvn(tmp_path / "cmvn.ark")
    assert torch.equal(kaldi_mean, mean) and torch.equal(kaldi_istd, istd)
    (tmp_path / "bad").write_text("[ 1 2 ]")
    with pytest.raises(UserError, match="bad"):
        load_wenet_cmvn(tmp_path / "bad")


# ---- every U2++ option, checked by a round trip through WeNet's naming ----

TINY = {
    "input_dim": 80,
    "output_dim": 12,
    "encoder": "conformer",
    "encoder_conf": {
        "output_size": 32, "attention_heads": 2, "linear_units": 48, "num_blocks": 2,
        "input_layer": "conv2d", "cnn_module_kernel": 5, "causal": True,
        "cnn_module_norm": "layer_norm", "use_dynamic_chunk": True,
    },
    "decoder": "bitransformer",
    "decoder_conf": {"attention_heads": 2, "linear_units": 48, "num_blocks": 1, "r_num_blocks": 1},
    "model_conf": {"ctc_weight": 0.3, "reverse_weight": 0.3, "lsm_weight": 0.1},
}  # fmt: skip


def wenet_conf(enc: dict | None = None, dec: dict | None = None, **top) -> dict:
    """TINY with encoder_conf / decoder_conf entries and top-level keys replaced."""
    return {
        **TINY,
        **top,
        "encoder_conf": {**TINY["encoder_conf"], **(enc or {})},
        "decoder_conf": {**TINY["decoder_conf"], **(dec or {})},
    }


WENET_EXPERT_NAMES = {
    "w_1": "w_1.weight",
    "b_1": "w_1.bias",
    "w_2": "w_2.weight",
    "b_2": "w_2.bias",
}


def to_wenet_names(sd: dict[str, torch.Tensor], conf: dict) -> dict[str, torch.Tensor]:
    """u2moe state dict -> WeNet's names (the inverse of convert_state_dict), for tests."""
    out = {}
    for key, value in sd.items():
        match = re.fullmatch(r"(.*)\.(w_1|b_1|w_2|b_2)", key)
        if match and value.dim() >= 2 and ".feed_forward" in key:
            prefix, name = match.groups()
            target = {
                "w_1": "w_1.weight",
                "b_1": "w_1.bias",
                "w_2": "w_2.weight",
                "b_2": "w_2.bias",
            }
            for i, expert in enumerate(value):
                out[f"{prefix}.experts.{i}.{target[name]}"] = expert.clone()
            continue
        key = key.replace(".router.weight", ".gate.weight")
        if conf["encoder_conf"].get("input_layer") in ("conv2d6", "conv2d8"):
            key = key.replace("encoder.embed.out.0.", "encoder.embed.linear.")
        if conf.get("decoder") == "transformer":
            key = key.replace("decoder.left_decoder.", "decoder.")
        out[key] = value.clone()
    out["encoder.embed.pos_enc.pe"] = torch.zeros(1, 5000, 32)  # WeNet saves the tables
    if conf.get("decoder") == "bitransformer" and conf["decoder_conf"]["r_num_blocks"] == 0:
        out["decoder.right_decoder.after_norm.weight"] = torch.ones(32)  # built, never used
    return out


VARIANTS = {
    "conv2d6": wenet_conf({"input_layer": "conv2d6"}),
    "conv2d8": wenet_conf({"input_layer": "conv2d8"}),
    "batchnorm_noncausal_k15": wenet_conf(
        {"cnn_module_norm": "batch_norm", "causal": False, "cnn_module_kernel": 15}
    ),
    "no_cnn_no_macaron_relu": wenet_conf(
        {"use_cnn_module": False, "macaron_style": False, "activation_type": "relu"}
    ),
    "moe_4x1_gelu": wenet_conf(
        {"mlp_type": "moe", "n_expert": 4, "n_expert_activated": 1, "activation_type": "gelu"},
        {"mlp_type": "moe", "n_expert": 4, "n_expert_activated": 1, "num_blocks": 3},
    ),
    "transformer_decoder": wenet_conf(decoder="transformer", model_conf={"reverse_weight": 0.0}),
    "no_r2l_blocks": wenet_conf(dec={"r_num_blocks": 0}, model_conf={"reverse_weight": 0.0}),
    "dynamic_left_static": wenet_conf({"use_dynamic_left_chunk": True, "static_chunk_size": 8}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_option_round_trips_through_wenet_names(name):
    conf = VARIANTS[name]
    cfg = config_from_wenet(conf)
    torch.manual_seed(0)
    reference = U2Model(cfg).eval()
    saved = reference.state_dict()
    for name, buffer in reference.named_buffers():  # non-trivial BatchNorm statistics, CMVN
        if name in saved and buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
    model = build_model(conf, to_wenet_names(reference.state_dict(), conf))
    feats, lengths = torch.randn(2, 60, 80), torch.tensor([60, 41])
    targets, target_lengths = torch.tensor([[3, 4, 5], [6, 7, -1]]), torch.tensor([3, 2])
    with torch.no_grad():
        expected = reference(feats, lengths, targets, target_lengths)["loss"]
        assert torch.equal(model(feats, lengths, targets, target_lengths)["loss"], expected)


def test_config_from_wenet_maps_options_and_defaults():
    cfg = config_from_wenet(VARIANTS["moe_4x1_gelu"])
    assert (cfg.encoder.d_model, cfg.encoder.n_heads, cfg.encoder.d_ff) == (32, 2, 48)
    assert (cfg.encoder.ffn.type, cfg.encoder.ffn.n_experts, cfg.encoder.ffn.top_k) == ("moe", 4, 1)
    assert (cfg.decoder.n_layers, cfg.decoder.n_r2l_layers, cfg.decoder.ffn.n_experts) == (3, 1, 4)
    assert cfg.encoder.activation == "gelu" and cfg.decoder.activation == "relu"
    assert (cfg.vocab_size, cfg.ctc_weight, cfg.reverse_weight, cfg.lsm_weight) == (
        12,
        0.3,
        0.3,
        0.1,
    )
    left = config_from_wenet(VARIANTS["dynamic_left_static"]).chunk
    assert left.dynamic and left.dynamic_left and left.static_chunk_size == 8
    assert config_from_wenet(VARIANTS["conv2d8"]).encoder.subsampling == 8
    # WeNet's own defaults where the yaml is silent (ConformerEncoder, ASRModel).
    bare = config_from_wenet({"output_dim": 12, "encoder_conf": {}, "decoder_conf": {}})
    assert bare.encoder.conv_norm == "batch_norm" and not bare.encoder.causal
    assert bare.encoder.kernel_size == 15 and bare.encoder.n_layers == 6
    assert not bare.chunk.dynamic and bare.decoder.n_r2l_layers == 0
    assert (bare.ctc_weight, bare.reverse_weight, bare.lsm_weight) == (0.5, 0.0, 0.0)


@pytest.mark.parametrize(
    "conf, named",
    [
        (wenet_conf({"normalize_before": False}), "normalize_before"),
        (wenet_conf({"pos_enc_layer_type": "abs_pos"}), "pos_enc_layer_type"),
        (wenet_conf({"selfattention_layer_type": "selfattn"}), "selfattention_layer_type"),
        (wenet_conf({"input_layer": "linear"}), "input_layer"),
        (wenet_conf({"mlp_type": "gated"}), "mlp_type"),
        (wenet_conf({"activation_type": "hardtanh"}), "activation_type"),
        (wenet_conf({"efficient_conf": {}}), "efficient_conf"),
        (wenet_conf(dec={"use_output_layer": False}), "use_output_layer"),
        (wenet_conf(encoder="squeezeformer"), "squeezeformer"),
        (wenet_conf(decoder="transducer"), "transducer"),
        (wenet_conf(model_conf={"ctc_weight": 1.5}), "ctc_weight"),
        (wenet_conf(output_dim="many"), "output_dim"),
        (wenet_conf({"num_blocks": "two"}), "n_layers"),
    ],
)
def test_unsupported_wenet_options_are_named(conf, named):
    with pytest.raises(UserError, match=re.escape(named)) as info:
        config_from_wenet(conf)
    assert "\n" not in str(info.value)


def test_convert_state_dict_stacks_experts():
    raw = fixture("wenet_u2pp_moe.pt")
    cfg = config_from_wenet(raw["config"])
    sd = convert_state_dict(raw["state_dict"], cfg)
    prefix = "encoder.encoders.1.feed_forward_macaron"
    assert sd[f"{prefix}.w_1"].shape == (8, 128, 64) and sd[f"{prefix}.b_2"].shape == (8, 64)
    wenet = raw["state_dict"]
    assert torch.equal(sd[f"{prefix}.w_2"][5], wenet[f"{prefix}.experts.5.w_2.weight"])
    assert torch.equal(sd[f"{prefix}.router.weight"], wenet[f"{prefix}.gate.weight"])
    assert not any(k.endswith(".pe") or ".experts." in k for k in sd)


def test_recipe_spellings_and_training_only_options_are_accepted():
    conf = wenet_conf(
        {"concat_after": False, "gradient_checkpointing": True, "use_sdpa": True},
        {"concat_after": False, "tie_word_embedding": False},
        model="asrmodel",
        cmvn_file="data/train/global_cmvn",  # WeNet 2.x kept these at the top level
        is_json_cmvn=True,
    )
    assert config_from_wenet(conf).encoder.d_model == 32
    with pytest.raises(UserError, match="concat_after"):
        config_from_wenet(wenet_conf({"concat_after": True}))


def test_data_section_from_current_and_2021_train_yaml():
    current = {
        "dataset_conf": {"fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "dither": 1.0}}
    }
    assert data_section(current, bpe=True, where="t.yaml") == {
        "features": {"num_mel_bins": 80, "frame_length": 25, "frame_shift": 10, "dither": 1.0},
        "tokenizer": {"type": "bpe"},
    }
    old = {
        "collate_conf": {
            "wav_distortion_conf": {"wav_dither": 0.5},
            "feature_extraction_conf": {"feature_type": "fbank", "mel_bins": 80, "frame_shift": 10},
        }
    }
    assert data_section(old, bpe=False, where="t.yaml")["features"]["dither"] == 0.5
    with pytest.raises(UserError, match="mfcc"):
        data_section({"dataset_conf": {"feats_type": "mfcc"}}, bpe=False, where="t.yaml")
    with pytest.raises(UserError, match="input_dim"):
        data_section({"input_dim": 40, **current}, bpe=False, where="t.yaml")
