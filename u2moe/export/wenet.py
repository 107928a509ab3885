"""`--format wenet`: a WeNet experiment directory (train.yaml, final.pt, global_cmvn, units.txt
[, bpe.model]) that WeNet's own code loads and `u2moe import-wenet` turns back into the same
model.

This is the inverse of u2moe/model/wenet.py's import; the export checks itself against it:
train.yaml must parse back (`config_from_wenet`) to the model's config and final.pt must
convert back (`convert_state_dict`) to its state dict, tensor for tensor, or nothing is written.
"""

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch

from u2moe.config import save_yaml
from u2moe.data.tokenizer import write_units
from u2moe.model.u2 import U2Model
from u2moe.model.wenet import config_from_wenet, convert_state_dict

_INPUT_LAYERS = {4: "conv2d", 6: "conv2d6", 8: "conv2d8"}


def ffn_conf(ffn) -> dict:
    if ffn.type != "moe":
        return {}
    return {"mlp_type": "moe", "n_expert": ffn.n_experts, "n_expert_activated": ffn.top_k}


def wenet_config(model: U2Model, data: dict, bpe: bool) -> dict:
    """WeNet's train.yaml (a dict) for the model."""
    cfg, enc, dec = model.cfg, model.cfg.encoder, model.cfg.decoder
    v = model.vocab_size
    features = (data or {}).get("features") or {}
    bidirectional = dec.n_r2l_layers > 0
    tokenizer_conf = {
        "symbol_table_path": "units.txt",
        "split_with_space": False,
        "non_lang_syms_path": None,
        "special_tokens": {"<blank>": 0, "<unk>": 1, "<sos>": v - 1, "<eos>": v - 1},
    }
    if bpe:
        tokenizer_conf["bpe_path"] = "bpe.model"
    encoder_conf = {
        "output_size": enc.d_model,
        "attention_heads": enc.n_heads,
        "linear_units": enc.d_ff,
        "num_blocks": enc.n_layers,
        "dropout_rate": enc.dropout,
        "positional_dropout_rate": enc.positional_dropout,
        "attention_dropout_rate": enc.attention_dropout,
        "input_layer": _INPUT_LAYERS[enc.subsampling],
        "normalize_before": True,
        "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn",
        "activation_type": enc.activation,
        "macaron_style": enc.macaron,
        "use_cnn_module": enc.use_conv,
        "cnn_module_kernel": enc.kernel_size,
        "causal": enc.causal,
        "cnn_module_norm": enc.conv_norm,
        "use_dynamic_chunk": cfg.chunk.dynamic,
        "use_dynamic_left_chunk": cfg.chunk.dynamic_left,
        "static_chunk_size": cfg.chunk.static_chunk_size,
    } | ffn_conf(enc.ffn)
    decoder_conf = {
        "attention_heads": dec.n_heads,
        "linear_units": dec.d_ff,
        "num_blocks": dec.n_layers,
        "r_num_blocks": dec.n_r2l_layers,
        "dropout_rate": dec.dropout,
        "positional_dropout_rate": dec.positional_dropout,
        "self_attention_dropout_rate": dec.self_attention_dropout,
        "src_attention_dropout_rate": dec.src_attention_dropout,
        "activation_type": dec.activation,
    } | ffn_conf(dec.ffn)
    return {
        "input_dim": cfg.input_dim,
        "output_dim": v,
        "encoder": "conformer",
        "encoder_conf": encoder_conf,
        "decoder": "bitransformer" if bidirectional else "transformer",
        "decoder_conf": decoder_conf,
        "tokenizer": "bpe" if bpe else "char",
        "tokenizer_conf": tokenizer_conf,
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "cmvn": "global_cmvn",
        "cmvn_conf": {"cmvn_file": "global_cmvn", "is_json_cmvn": True},
        "model": "asr_model",
        "model_conf": {
            "ctc_weight": cfg.ctc_weight,
            "reverse_weight": cfg.reverse_weight,
            "lsm_weight": cfg.lsm_weight,
            "length_normalized_loss": cfg.length_normalized_loss,
        },
        "dataset_conf": {
            "feats_type": "fbank",
            "fbank_conf": {
                "num_mel_bins": features.get("num_mel_bins", cfg.input_dim),
                "frame_shift": features.get("frame_shift", 10),
                "frame_length": features.get("frame_length", 25),
                "dither": features.get("dither", 0.0),
            },
        },
    }


def wenet_state_dict(model: U2Model) -> dict[str, torch.Tensor]:
    """u2moe state dict -> WeNet's names: stacked experts split into `experts.{i}.w_1/w_2`,
    `router` -> `gate`, x6/x8 subsampling's `out.0` -> `linear`, a decoder without a right
    half un-nested from `left_decoder`."""
    bidirectional = model.decoder.right_decoder is not None
    rate = model.cfg.encoder.subsampling
    sd = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if not bidirectional:
            key = re.sub(r"^decoder\.left_decoder\.", "decoder.", key)
        if rate != 4:
            key = re.sub(r"^encoder\.embed\.out\.0\.", "encoder.embed.linear.", key)
        match = re.fullmatch(r"(.*)\.(w_1|b_1|w_2|b_2)", key)
        if match and key.rsplit(".", 1)[0] + ".router.weight" in model.state_dict():
            prefix, name = match.groups()
            layer, part = {"w_1": ("w_1", "weight"), "b_1": ("w_1", "bias")}.get(
                name, ("w_2", "weight" if name == "w_2" else "bias")
            )
            for i, expert in enumerate(value):
                sd[f"{prefix}.experts.{i}.{layer}.{part}"] = expert.clone()
            continue
        sd[re.sub(r"\.router\.weight$", ".gate.weight", key)] = value
    return sd


def wenet_cmvn(model: U2Model) -> dict:
    """global_cmvn (WeNet's JSON statistics) that gives back the model's mean and istd:
    one frame whose sum is the mean and whose sum of squares is var + mean^2."""
    mean = model.encoder.global_cmvn.mean.double()
    var = model.encoder.global_cmvn.istd.double() ** -2
    return {"mean_stat": mean.tolist(), "var_stat": (var + mean**2).tolist(), "frame_num": 1}


def export_wenet(model: U2Model, config: dict, units: list[str], out: Path, bpe: Path | None):
    """train.yaml, final.pt, global_cmvn, units.txt (+ bpe.model) into `out`."""
    conf = wenet_config(model, config.get("data"), bpe is not None)
    sd = wenet_state_dict(model)
    if asdict(config_from_wenet(conf)) != asdict(model.cfg):
        raise RuntimeError("train.yaml does not parse back to the model's config")
    back = convert_state_dict(sd, model.cfg)
    own = model.state_dict()
    if back.keys() != own.keys() or any(not torch.equal(back[k], own[k]) for k in own):
        raise RuntimeError("final.pt does not convert back to the model's state dict")
    save_yaml(conf, out / "train.yaml")
    torch.save(sd, out / "final.pt")
    (out / "global_cmvn").write_text(json.dumps(wenet_cmvn(model)) + "\n")
    write_units(out / "units.txt", units)
    if bpe is not None:
        (out / "bpe.model").write_bytes(bpe.read_bytes())
