"""`u2moe average`: average the best N checkpoints (by dev loss) into the experiment's model."""

from pathlib import Path

from u2moe.commands.arguments import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--exp", required=True, type=Path, help="experiment directory")
    parser.add_argument(
        "--num", type=positive_int, default=10, help="how many of the best to average"
    )


def main(args) -> int:
    from u2moe.errors import UserError
    from u2moe.train.average import average_best
    from u2moe.train.lock import ExperimentLock

    if not args.exp.is_dir():
        raise UserError(f"{args.exp}: no such experiment directory")
    with ExperimentLock(args.exp):  # not while a training run writes model.pt
        used = average_best(args.exp, args.num)
    print(f"{args.exp / 'model.pt'}: average of {', '.join(p.name for p in used)}")
    return 0
