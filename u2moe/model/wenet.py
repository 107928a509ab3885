"""WeNet U2++ Conformer checkpoints: config, state dict, global CMVN and units.

WeNet's module names are kept in u2moe, so a dense checkpoint maps by identity; the
differences are MoE layers (WeNet keeps a ModuleList of experts and a `gate`, u2moe
stacks expert weights and calls the gate `router`), a plain `transformer` decoder
(u2moe always nests it as `decoder.left_decoder`), the output layer of x6/x8
subsampling, and the positional-encoding tables that WeNet saves but u2moe recomputes.
"""

import re
from typing import Any

import torch

from u2moe.config import parse_section
from u2moe.data.cmvn import cmvn_from_stats  # noqa: F401 (import-wenet's names)
from u2moe.data.cmvn import load_cmvn as load_wenet_cmvn  # noqa: F401
from u2moe.errors import UserError
from u2moe.model.config import ModelConfig
from u2moe.model.io import load_weights
from u2moe.model.u2 import U2Model

_CMVN_MEAN, _CMVN_ISTD = "encoder.global_cmvn.mean", "encoder.global_cmvn.istd"
_SUBSAMPLING = {"conv2d": 4, "conv2d6": 6, "conv2d8": 8}
_ACTIVATIONS = {"swish", "relu", "gelu"}
_CONV_NORMS = {"batch_norm", "layer_norm"}
_FFN_TYPES = {"position_wise_feed_forward": "dense", "moe": "moe"}

# Options that change nothing at inference and that u2moe sets its own way for training.
_IGNORED = {"gradient_checkpointing", "use_sdpa", "positionwise_conv_kernel_size"}
# Options u2moe implements only with WeNet's default value: key -> accepted value.
_FIXED_ENCODER = {
    "pos_enc_layer_type": "rel_pos",
    "selfattention_layer_type": "rel_selfattn",
    "normalize_before": True,
    "concat_after": False,
    "query_bias": True,
    "key_bias": True,
    "value_bias": True,
    "conv_bias": True,
    "mlp_bias": True,
    "layer_norm_type": "layer_norm",
    "norm_eps": 1e-5,
}
_FIXED_DECODER = {
    "input_layer": "embed",
    "use_output_layer": True,
    "normalize_before": True,
    "concat_after": False,
    "src_attention": True,
    "query_bias": True,
    "key_bias": True,
    "value_bias": True,
    "mlp_bias": True,
    "layer_norm_type": "layer_norm",
    "norm_eps": 1e-5,
}


def config_from_wenet(conf: dict[str, Any], where: str = "train.yaml") -> ModelConfig:
    """WeNet's train.yaml (as a dict) -> ModelConfig, with WeNet's defaults for absent keys.

    Raises UserError naming the first option u2moe does not implement.
    """
    if not isinstance(conf, dict):
        raise UserError(f"{where}: expected a WeNet train.yaml mapping")
    _require(conf, "encoder", ("conformer",), where, default="conformer")
    decoder_type = conf.get("decoder", "bitransformer")
    if decoder_type not in ("bitransformer", "transformer"):
        raise UserError(
            f"{where}: decoder {decoder_type!r} is not supported (bitransformer or transformer)"
        )
    # Recipes spell WeNet's ASRModel both ways.
    _require(conf, "model", ("asr_model", "asrmodel"), where, default="asr_model")
    _require(conf, "ctc", ("ctc",), where, default="ctc")
    if conf.get("cmvn", "global_cmvn") not in ("global_cmvn", None):
        raise UserError(f"{where}: cmvn {conf['cmvn']!r} is not supported (global_cmvn)")
    ctc_conf = _section(conf, "ctc_conf", where)
    if ctc_conf.get("ctc_blank_id", 0) != 0:
        raise UserError(f"{where}: ctc_conf.ctc_blank_id must be 0, got {ctc_conf['ctc_blank_id']}")
    if not isinstance(conf.get("output_dim"), int):
        raise UserError(f"{where}: output_dim (the vocabulary size) must be an integer")

    enc = _section(conf, "encoder_conf", where)
    dec = _section(conf, "decoder_conf", where)
    enc_where, dec_where = f"{where}: encoder_conf", f"{where}: decoder_conf"
    model_conf = _section(conf, "model_conf", where)
    _check_fixed(enc, _FIXED_ENCODER, enc_where)
    _check_fixed(dec, _FIXED_DECODER, dec_where)
    _check_special_tokens(conf, conf["output_dim"], where)

    input_layer = enc.get("input_layer", "conv2d")
    if input_layer not in _SUBSAMPLING:
        raise UserError(
            f"{where}: encoder_conf.input_layer {input_layer!r} is not supported "
            f"({', '.join(_SUBSAMPLING)})"
        )
    encoder_keys = {
        "output_size", "attention_heads", "linear_units", "num_blocks", "dropout_rate",
        "positional_dropout_rate", "attention_dropout_rate", "input_layer", "static_chunk_size",
        "use_dynamic_chunk", "use_dynamic_left_chunk", "macaron_style", "activation_type",
        "use_cnn_module", "cnn_module_kernel", "causal", "cnn_module_norm", "n_kv_head",
        "head_dim", "mlp_type", "n_expert", "n_expert_activated",
    }  # fmt: skip
    decoder_keys = {
        "attention_heads", "linear_units", "num_blocks", "r_num_blocks", "dropout_rate",
        "positional_dropout_rate", "self_attention_dropout_rate", "src_attention_dropout_rate",
        "activation_type", "tie_word_embedding", "n_kv_head", "head_dim", "mlp_type",
        "n_expert", "n_expert_activated",
    }  # fmt: skip
    _check_known(enc, encoder_keys | set(_FIXED_ENCODER) | _IGNORED, enc_where)
    _check_known(dec, decoder_keys | set(_FIXED_DECODER) | _IGNORED, dec_where)
    model_keys = {
        "ctc_weight", "reverse_weight", "lsm_weight", "length_normalized_loss", "ignore_id",
        "special_tokens", "apply_non_blank_embedding",
    }  # fmt: skip
    _check_known(model_conf, model_keys, f"{where}: model_conf")
    if model_conf.get("ignore_id", -1) != -1:
        raise UserError(f"{where}: model_conf.ignore_id must be -1, got {model_conf['ignore_id']}")
    if model_conf.get("apply_non_blank_embedding", False):
        raise UserError(f"{where}: model_conf.apply_non_blank_embedding is not supported")

    d_model = enc.get("output_size", 256)
    enc_heads = enc.get("attention_heads", 4)
    dec_heads = dec.get("attention_heads", 4)
    _check_heads(enc, d_model, enc_heads, enc_where)
    _check_heads(dec, d_model, dec_heads, dec_where)
    encoder = dict(
        d_model=d_model,
        n_heads=enc_heads,
        d_ff=enc.get("linear_units", 2048),
        n_layers=enc.get("num_blocks", 6),
        subsampling=_SUBSAMPLING[input_layer],
        kernel_size=enc.get("cnn_module_kernel", 15),
        causal=enc.get("causal", False),
        conv_norm=_choice(enc, "cnn_module_norm", "batch_norm", _CONV_NORMS, enc_where),
        activation=_choice(enc, "activation_type", "swish", _ACTIVATIONS, enc_where),
        macaron=enc.get("macaron_style", True),
        use_conv=enc.get("use_cnn_module", True),
        dropout=enc.get("dropout_rate", 0.1),
        positional_dropout=enc.get("positional_dropout_rate", 0.1),
        attention_dropout=enc.get("attention_dropout_rate", 0.0),
        ffn=_ffn(enc, enc_where),
    )
    bidirectional = decoder_type == "bitransformer"
    decoder = dict(
        n_heads=dec_heads,
        d_ff=dec.get("linear_units", 2048),
        n_layers=dec.get("num_blocks", 6),
        n_r2l_layers=dec.get("r_num_blocks", 0) if bidirectional else 0,
        activation=_choice(dec, "activation_type", "relu", _ACTIVATIONS, dec_where),
        dropout=dec.get("dropout_rate", 0.1),
        positional_dropout=dec.get("positional_dropout_rate", 0.1),
        self_attention_dropout=dec.get("self_attention_dropout_rate", 0.0),
        src_attention_dropout=dec.get("src_attention_dropout_rate", 0.0),
        ffn=_ffn(dec, dec_where),
    )
    chunk = dict(
        dynamic=enc.get("use_dynamic_chunk", False),
        dynamic_left=enc.get("use_dynamic_left_chunk", False),
        static_chunk_size=enc.get("static_chunk_size", 0),
    )
    model = dict(
        input_dim=conf.get("input_dim", 80),
        vocab_size=conf["output_dim"],
        encoder=encoder,
        decoder=decoder,
        chunk=chunk,
        ctc_weight=model_conf.get("ctc_weight", 0.5),
        reverse_weight=model_conf.get("reverse_weight", 0.0),
        lsm_weight=model_conf.get("lsm_weight", 0.0),
        length_normalized_loss=model_conf.get("length_normalized_loss", False),
    )
    # The strict parser checks types and ranges and names the offending key.
    return parse_section(ModelConfig, model, f"{where} (as u2moe model)")


def convert_state_dict(
    wenet_sd: dict[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """WeNet state dict -> u2moe state dict (names and MoE expert stacking).

    Positional-encoding tables (`...pe`) are dropped: u2moe recomputes them. A plain
    `transformer` decoder becomes `decoder.left_decoder`; an unused right decoder of a
    `bitransformer` with r_num_blocks 0 is dropped; `encoder.embed.linear` (x6 and x8
    subsampling) becomes `encoder.embed.out.0`. Keys are otherwise kept as they are, so
    mismatches surface when the result is loaded into a U2Model.
    """
    sd: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    bidirectional = any(k.startswith("decoder.left_decoder.") for k in wenet_sd)
    for key, value in wenet_sd.items():
        if key.endswith(".pe"):
            continue
        if key.startswith("decoder.") and not bidirectional:
            key = "decoder.left_decoder." + key[len("decoder.") :]
        if key.startswith("decoder.right_decoder.") and cfg.decoder.n_r2l_layers == 0:
            continue
        match = re.fullmatch(r"(.*)\.experts\.(\d+)\.(w_[12]\.(?:weight|bias))", key)
        if match:
            prefix, index, name = match.groups()
            experts.setdefault(prefix, {}).setdefault(int(index), {})[name] = value
            continue
        key = re.sub(r"\.gate\.weight$", ".router.weight", key)
        # WeNet's Conv2dSubsampling6/8 call their output layer `linear`, x4 calls it `out.0`.
        sd[re.sub(r"^encoder\.embed\.linear\.", "encoder.embed.out.0.", key)] = value
    for prefix, by_index in experts.items():
        indices = sorted(by_index)
        if indices != list(range(len(indices))):
            raise UserError(f"checkpoint: experts of {prefix} are not numbered from 0 without gaps")
        for src, dst in (
            ("w_1.weight", "w_1"),
            ("w_1.bias", "b_1"),
            ("w_2.weight", "w_2"),
            ("w_2.bias", "b_2"),
        ):
            parts = [by_index[i].get(src) for i in indices]
            if any(p is None for p in parts):
                raise UserError(f"checkpoint: {prefix}.experts.*.{src} is missing for some experts")
            sd[f"{prefix}.{dst}"] = torch.stack(parts)
    return sd


def build_model(
    conf: dict[str, Any],
    wenet_sd: dict[str, torch.Tensor],
    cmvn: tuple[torch.Tensor, torch.Tensor] | None = None,
    where: str = "checkpoint",
) -> U2Model:
    """A U2Model (eval mode) from WeNet's train.yaml dict and state dict.

    cmvn (mean, istd) replaces the checkpoint's global CMVN; without it the checkpoint's
    own (`encoder.global_cmvn.*`) is used, or the identity if it has none.
    """
    cfg = config_from_wenet(conf)
    sd = convert_state_dict(wenet_sd, cfg)
    model = U2Model(cfg)
    if cmvn is not None:
        sd[_CMVN_MEAN], sd[_CMVN_ISTD] = cmvn
    elif _CMVN_MEAN not in sd and _CMVN_ISTD not in sd:
        # WeNet saves the CMVN buffers of a model that has one: none means none was used.
        sd[_CMVN_MEAN] = model.encoder.global_cmvn.mean
        sd[_CMVN_ISTD] = model.encoder.global_cmvn.istd
    load_weights(model, sd, where)
    return model.eval()


def _require(conf: dict, key: str, accepted: tuple[str, ...], where: str, default: str) -> None:
    value = conf.get(key, default)
    if value not in accepted:
        raise UserError(f"{where}: {key} {value!r} is not supported (only {accepted[0]!r})")


def _section(conf: dict, key: str, where: str) -> dict:
    value = conf.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a mapping")
    return value


def _check_fixed(section: dict, fixed: dict[str, Any], where: str) -> None:
    for key, accepted in fixed.items():
        if key in section and section[key] != accepted:
            raise UserError(f"{where}.{key} {section[key]!r} is not supported (only {accepted!r})")


def _check_known(section: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise UserError(f"{where}.{unknown[0]} is not a WeNet U2++ option u2moe supports")


def _check_heads(section: dict, d_model: int, n_heads: int, where: str) -> None:
    # Grouped-query attention and non-default head sizes are LLM options, not U2++ ones.
    n_kv_head, head_dim = section.get("n_kv_head"), section.get("head_dim")
    if n_kv_head is not None and n_kv_head != n_heads:
        raise UserError(f"{where}.n_kv_head {n_kv_head} is not supported (only attention_heads)")
    if head_dim is not None and head_dim * n_heads != d_model:
        raise UserError(f"{where}.head_dim {head_dim} is not supported (only d_model / heads)")


def _choice(section: dict, key: str, default: str, allowed, where: str) -> str:
    value = section.get(key, default)
    if value not in allowed:
        raise UserError(f"{where}: {key} {value!r} is not supported ({', '.join(sorted(allowed))})")
    return value


def _ffn(section: dict, where: str) -> dict:
    mlp_type = section.get("mlp_type", "position_wise_feed_forward")
    if mlp_type not in _FFN_TYPES:
        raise UserError(f"{where}.mlp_type {mlp_type!r} is not supported ({', '.join(_FFN_TYPES)})")
    return dict(
        type=_FFN_TYPES[mlp_type],
        n_experts=section.get("n_expert", 8),
        top_k=section.get("n_expert_activated", 2),
    )


def _check_special_tokens(conf: dict, vocab_size: int, where: str) -> None:
    """u2moe fixes blank 0 and sos = eos = vocab_size - 1, WeNet's defaults."""
    tokens = dict((conf.get("tokenizer_conf") or {}).get("special_tokens") or {})
    tokens.update((conf.get("model_conf") or {}).get("special_tokens") or {})
    expected = {"<blank>": 0, "<sos>": vocab_size - 1, "<eos>": vocab_size - 1}
    for name, token_id in expected.items():
        if name in tokens and tokens[name] != token_id:
            raise UserError(
                f"{where}: special token {name} is {tokens[name]}, u2moe needs {token_id}"
            )
