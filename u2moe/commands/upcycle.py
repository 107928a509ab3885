"""`u2moe upcycle`: turn a dense model directory into a MoE one (UME's upcycling).

    u2moe upcycle --model exp/dense --out exp/upcycled [--experts 8] [--top-k 2] \
        [--router-init normal|zeros] [--noise 0.01]

Every dense FFN of encoder and decoders becomes a MoE layer whose experts are copies of it
(u2moe/model/upcycle.py). Without noise the new model transcribes exactly as the dense one;
train it on with `u2moe train --init exp/upcycled ...`. Works on any dense model directory,
one made by `u2moe import-wenet` included.
"""

import argparse
from pathlib import Path

from u2moe.commands.arguments import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="dense model directory")
    parser.add_argument("--out", required=True, type=Path, help="MoE model directory to write")
    parser.add_argument("--experts", type=positive_int, default=8, help="experts per layer")
    parser.add_argument("--top-k", type=positive_int, default=2, help="experts per frame")
    parser.add_argument(
        "--router-init",
        choices=["zeros", "normal"],
        default="normal",
        help="normal: small random logits (default); zeros, without --noise, never trains "
        "into a MoE (identical experts, no router gradient)",
    )
    parser.add_argument(
        "--noise", type=float, default=0.0, help="std of the noise on expert copies, relative"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of router init and noise")


def main(args: argparse.Namespace) -> int:
    from u2moe.errors import UserError
    from u2moe.model.io import BPE, load_model_dir, save_model_dir
    from u2moe.model.params import count_parameters
    from u2moe.model.upcycle import upcycle

    if args.out.resolve() == args.model.resolve():
        raise UserError(f"--out {args.out} is the dense model directory itself")
    if (args.out / "model.pt").exists():
        raise UserError(f"{args.out} already holds a model; choose another --out")
    dense, config, units = load_model_dir(args.model)
    model = upcycle(dense, args.experts, args.top_k, args.router_init, args.noise, args.seed)
    bpe = args.model / BPE
    save_model_dir(args.out, model, config, units, bpe if bpe.is_file() else None)
    before = sum(p.total for p in count_parameters(dense))
    parts = count_parameters(model)
    total, active = sum(p.total for p in parts), sum(p.active for p in parts)
    print(
        f"wrote {args.out}: {args.experts} experts top-{args.top_k} in every former dense FFN; "
        f"{before / 1e6:.2f}M -> {total / 1e6:.2f}M parameters ({active / 1e6:.2f}M active "
        "per frame)"
    )
    return 0
