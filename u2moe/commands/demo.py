"""`u2moe demo`: the main job. Corpus, training of an MoE and a dense model, decoding, report.

u2moe demo --out exp/demo            # the full demo: corpus ~3 min, 4,000 steps per model
u2moe demo --quick --out exp/quick   # a first look in a few minutes (WER stays high)
u2moe demo --paper --out exp/demo    # also the wide dense model: the paper's 3-model table
"""

import logging
from pathlib import Path

from u2moe.commands.arguments import output_dir


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=output_dir, default=Path("exp/demo"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, few steps")
    parser.add_argument("--moe-config", type=Path, default=Path("configs/small.yaml"))
    parser.add_argument("--dense-config", type=Path, default=Path("configs/small_dense.yaml"))
    parser.add_argument(
        "--paper",
        action="store_true",
        help="also train the wide dense model (--wide-config) and report the paper's "
        "three-model comparison",
    )
    parser.add_argument("--wide-config", type=Path, default=Path("configs/small_dense_wide.yaml"))


def main(args) -> int:
    from u2moe.demo import FULL, QUICK, Model, run_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    models = [Model("moe", args.moe_config), Model("dense", args.dense_config)]
    if args.paper:
        models.append(Model("wide", args.wide_config))
    report = run_demo(args.out, models, QUICK if args.quick else FULL)
    print(report)
    print(f"report: {args.out / 'REPORT.md'}")
    return 0
