"""`u2moe info CONFIG`: parameter counts of a model config, total and active per frame.

CONFIG is a config YAML (its `model:` section) or a model directory (its config.yaml,
with the vocabulary from units.txt when the config leaves vocab_size unset). The model
is built on the meta device, so a 1B-parameter config costs no memory.
"""

import dataclasses
import json
from pathlib import Path

from u2moe.commands.arguments import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="config YAML or model directory")
    parser.add_argument(
        "--vocab-size", type=positive_int, help="vocabulary size, when the config has none"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--top-k", type=positive_int, help="count with this many experts per frame (MoE only)"
    )


def main(args) -> int:
    from u2moe.config import ConfigError, load_yaml, parse_section
    from u2moe.model.config import ModelConfig
    from u2moe.model.params import count_config

    path = args.config / "config.yaml" if args.config.is_dir() else args.config
    config = load_yaml(path)
    if "model" not in config:
        raise ConfigError(f"{path}: no 'model' section")
    cfg = parse_section(ModelConfig, config["model"], f"{path}: model")
    units = args.config / "units.txt"
    if args.vocab_size is not None:
        cfg.vocab_size = args.vocab_size
    elif cfg.vocab_size is None and args.config.is_dir() and units.is_file():
        cfg.vocab_size = sum(1 for line in units.open() if line.strip())
    if cfg.vocab_size is None or cfg.vocab_size < 3:
        raise ConfigError(f"{path}: model.vocab_size is not set (>= 3); pass --vocab-size N")
    if args.top_k is not None:
        cfg = with_top_k(cfg, args.top_k)
    parts = count_config(cfg)
    total = sum(p.total for p in parts)
    active = sum(p.active for p in parts)
    ffn = {
        side: (
            {"type": "moe", "n_experts": c.ffn.n_experts, "top_k": c.ffn.top_k}
            if c.ffn.type == "moe"
            else {"type": "dense"}
        )
        for side, c in (("encoder", cfg.encoder), ("decoder", cfg.decoder))
    }
    if args.json:
        report = {
            "config": str(path),
            "vocab_size": cfg.vocab_size,
            "ffn": ffn,
            "total": total,
            "active_per_frame": active,
            "parts": [vars(p) for p in parts],
        }
        print(json.dumps(report, indent=2))
        return 0
    describe = {
        side: f"MoE {f['n_experts']} experts top-{f['top_k']}" if f["type"] == "moe" else "dense"
        for side, f in ffn.items()
    }
    print(
        f"{path}: vocabulary {cfg.vocab_size}; encoder {cfg.encoder.n_layers} blocks "
        f"d_model {cfg.encoder.d_model}, FFN {describe['encoder']}; decoder "
        f"{cfg.decoder.n_layers} L2R + {cfg.decoder.n_r2l_layers} R2L blocks, "
        f"FFN {describe['decoder']}"
    )
    print(f"{'part':<24}{'parameters':>16}{'active/frame':>16}")
    for p in parts:
        print(f"{p.name:<24}{_millions(p.total):>16}{_millions(p.active):>16}")
    print(f"{'total':<24}{_millions(total):>16}{_millions(active):>16}")
    print(
        "active/frame: all parameters outside the experts (embeddings and output layers in "
        "full) plus, per MoE layer, the router and top-k experts"
    )
    return 0


def with_top_k(cfg, top_k: int):
    """cfg with top_k experts per frame in every MoE FFN; a UserError for a dense model or
    a k outside [1, n_experts]."""
    from u2moe.errors import UserError

    changes = {}
    for side in ("encoder", "decoder"):
        ffn = getattr(cfg, side).ffn
        if ffn.type != "moe":
            continue
        if not 1 <= top_k <= ffn.n_experts:
            raise UserError(f"--top-k {top_k} must be in [1, {side} experts {ffn.n_experts}]")
        changes[side] = dataclasses.replace(
            getattr(cfg, side), ffn=dataclasses.replace(ffn, top_k=top_k)
        )
    if not changes:
        raise UserError("--top-k needs a MoE model; this one is dense")
    return dataclasses.replace(cfg, **changes)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"
