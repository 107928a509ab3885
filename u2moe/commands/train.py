"""`u2moe train`: train a U2++ (dense or MoE) model; the experiment directory is the model."""

from pathlib import Path

from u2moe.config import load_yaml
from u2moe.data.manifest import DATA_TYPES


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML with model/data/train")
    parser.add_argument(
        "--train", type=Path, help="training manifest or shard list (default: DATA/train.jsonl)"
    )
    parser.add_argument("--dev", type=Path, help="dev manifest (default: DATA/dev.jsonl)")
    parser.add_argument(
        "--data-type",
        choices=["auto", *DATA_TYPES],
        default="auto",
        help="raw (manifest, data.list, Kaldi dir), shard (tar shard list), lhotse (cuts); "
        "default: told from the files",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="prepared data directory (u2moe prepare) with units.txt, global_cmvn and "
        "bpe.model if BPE (default: the directory of --train)",
    )
    parser.add_argument("--exp", required=True, type=Path, help="experiment directory to write")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --exp"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
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
        load_yaml(args.config),
        train_manifest=args.train or data_dir / "train.jsonl",
        dev_manifest=args.dev or data_dir / "dev.jsonl",
        data_dir=data_dir,
        exp_dir=args.exp,
        resume=args.resume,
        max_steps=args.max_steps,
        device=args.device,
        config_name=str(args.config),
        data_type=args.data_type,
    )
    return 0
