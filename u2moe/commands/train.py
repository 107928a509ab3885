"""`u2moe train`: train a U2++ (dense or MoE) model; the experiment directory is the model."""

from pathlib import Path

from u2moe.commands.arguments import output_dir, positive_int
from u2moe.commands.shard import add_data_type_argument
from u2moe.config import load_config


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML with model/data/train")
    parser.add_argument(
        "--train",
        type=Path,
        help="training manifest or shard list (default: DATA/train.jsonl, else DATA/train.list)",
    )
    parser.add_argument(
        "--dev", type=Path, help="dev manifest or shard list (default: DATA/dev.jsonl or .list)"
    )
    add_data_type_argument(parser)
    parser.add_argument(
        "--data",
        type=Path,
        help="prepared data directory (u2moe prepare) with units.txt, global_cmvn and "
        "bpe.model if BPE (default: the directory of --train)",
    )
    parser.add_argument(
        "--exp", required=True, type=output_dir, help="experiment directory to write"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --exp"
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="model directory to start from (its weights; fresh optimizer and schedule); "
        "a checkpoint that --resume continues wins over it",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        help="stop after this many optimizer steps in total (overrides train.max_steps)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def main(args) -> int:
    from u2moe.errors import UserError
    from u2moe.train.trainer import train

    if args.train is None and args.data is None:
        raise UserError("give --train (and --dev) manifests, or --data, a prepared directory")
    data_dir = args.data or args.train.parent
    train(
        load_config(args.config),
        train_manifest=args.train or _prepared(data_dir, "train"),
        dev_manifest=args.dev or _prepared(data_dir, "dev"),
        data_dir=data_dir,
        exp_dir=args.exp,
        resume=args.resume,
        max_steps=args.max_steps,
        device=args.device,
        config_name=str(args.config),
        data_type=args.data_type,
        init=args.init,
    )
    return 0


def _prepared(data_dir: Path, name: str) -> Path:
    """The set `prepare` wrote: NAME.jsonl, or NAME.list for a set kept in tar shards."""
    shards = data_dir / f"{name}.list"
    return (
        shards
        if shards.is_file() and not (data_dir / f"{name}.jsonl").is_file()
        else data_dir / f"{name}.jsonl"
    )
