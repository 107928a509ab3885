"""`u2moe import-wenet`: turn a WeNet U2++ Conformer checkpoint into a u2moe model directory.

    u2moe import-wenet --config exp/train.yaml --checkpoint exp/final.pt --out model/

The units table comes from --units, else `units.txt` beside the checkpoint, else the
train.yaml's `tokenizer_conf.symbol_table_path`; the global CMVN from --cmvn, else the
checkpoint's own buffers. A BPE model (--bpe-model, else `tokenizer_conf.bpe_path`) is
copied beside. The written `config.yaml` has a `model` section and a `data` section with
WeNet's fbank options, so `u2moe decode` / `transcribe` read audio as WeNet did.
"""

import argparse
import logging
from pathlib import Path
from typing import Any

from u2moe.commands.arguments import output_dir
from u2moe.config import load_yaml, parse_section
from u2moe.data.config import DataConfig
from u2moe.data.tokenizer import read_units
from u2moe.errors import UserError
from u2moe.model.io import read_state_dict, save_model_dir
from u2moe.model.wenet import build_model, load_wenet_cmvn

log = logging.getLogger("u2moe.wenet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="WeNet train.yaml")
    parser.add_argument("--checkpoint", required=True, type=Path, help="WeNet model (final.pt)")
    parser.add_argument("--cmvn", type=Path, help="global_cmvn (WeNet JSON or Kaldi text)")
    parser.add_argument("--units", type=Path, help="units.txt / lang_char.txt of the model")
    parser.add_argument("--bpe-model", type=Path, help="sentencepiece model of BPE units")
    parser.add_argument("--out", required=True, type=output_dir, help="model directory to write")


def main(args: argparse.Namespace) -> int:
    conf = load_yaml(args.config)
    tokenizer_conf = conf.get("tokenizer_conf") or {}
    units_path = args.units or _find(
        args,
        [args.checkpoint.parent / "units.txt", tokenizer_conf.get("symbol_table_path")],
        "units file (--units)",
    )
    units = read_units(units_path)
    if len(units) != conf.get("output_dim"):
        raise UserError(
            f"{units_path}: {len(units)} units, but {args.config} has output_dim "
            f"{conf.get('output_dim')}"
        )
    bpe_model = args.bpe_model
    if bpe_model is None and conf.get("tokenizer") == "bpe":
        bpe_model = _find(args, [tokenizer_conf.get("bpe_path")], "BPE model (--bpe-model)")
    if bpe_model is not None and not bpe_model.is_file():
        raise UserError(f"{bpe_model}: no such BPE model")
    cmvn = load_wenet_cmvn(args.cmvn) if args.cmvn else None
    model = build_model(conf, read_state_dict(args.checkpoint), cmvn, where=str(args.checkpoint))
    data = data_section(conf, bpe=bpe_model is not None, where=str(args.config))
    save_model_dir(args.out, model, {"data": data}, units, bpe_model)
    enc, ffn = model.cfg.encoder, model.cfg.encoder.ffn
    ffn_text = f"MoE {ffn.n_experts} experts top-{ffn.top_k}" if ffn.type == "moe" else "dense"
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out}: {enc.n_layers}-block Conformer d_model {enc.d_model}, {ffn_text} "
        f"FFN, vocab {model.vocab_size}, {n_params / 1e6:.2f}M parameters"
    )
    return 0


def data_section(conf: dict[str, Any], bpe: bool, where: str) -> dict[str, Any]:
    """The `data` config section for WeNet's fbank options and units.

    Current train.yaml files keep the options in `dataset_conf.fbank_conf`; those of 2021
    in `collate_conf.feature_extraction_conf` (with `wav_dither` beside it).
    """
    dataset_conf = conf.get("dataset_conf") or {}
    collate_conf = conf.get("collate_conf") or {}
    if "feature_extraction_conf" in collate_conf and "fbank_conf" not in dataset_conf:
        old = collate_conf["feature_extraction_conf"] or {}
        feats_type = old.get("feature_type", "fbank")
        fbank = {
            "num_mel_bins": old.get("mel_bins", 80),
            "frame_shift": old.get("frame_shift", 10),
            "frame_length": old.get("frame_length", 25),
            "dither": (collate_conf.get("wav_distortion_conf") or {}).get("wav_dither", 0.0),
        }
    else:
        feats_type = dataset_conf.get("feats_type", "fbank")
        fbank = dataset_conf.get("fbank_conf") or {}
    if feats_type != "fbank":
        raise UserError(f"{where}: feature type {feats_type!r} is not supported (fbank)")
    features = {
        "num_mel_bins": fbank.get("num_mel_bins", 80),
        "frame_length": fbank.get("frame_length", 25),
        "frame_shift": fbank.get("frame_shift", 10),
        "dither": fbank.get("dither", 0.0),
    }
    if features["num_mel_bins"] != conf.get("input_dim", 80):
        raise UserError(
            f"{where}: {features['num_mel_bins']} mel bins in the feature options, but "
            f"input_dim is {conf.get('input_dim', 80)}"
        )
    data = {"features": features, "tokenizer": {"type": "bpe" if bpe else "char"}}
    parse_section(DataConfig, data, f"{where} (as u2moe data)")  # validate
    return data


def _find(args: argparse.Namespace, candidates: list, what: str) -> Path:
    """The first existing file among candidates (as given, or relative to the config)."""
    tried = []
    for candidate in candidates:
        if not candidate:
            continue
        for path in (Path(candidate), args.config.parent / candidate):
            if path.is_file():
                log.info("using %s", path)
                return path
            tried.append(str(path))
    raise UserError(f"no {what} found (looked for {', '.join(dict.fromkeys(tried))})")
