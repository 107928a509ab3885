"""`u2moe shard`: pack a manifest's utterances into WeNet-format tar shards and a shard list.

Writes OUT/shards_000000000.tar, ... (each KEY.txt + KEY.wav per utterance) and
OUT/shards.list (one absolute path per line), which `prepare`, `train` and WeNet read.
"""

import logging
import os

from u2moe.data.manifest import DATA_TYPES
from u2moe.data.shards import write_shards


def add_data_type_argument(parser) -> None:
    """`--data-type` for the commands that read data sets (prepare, train)."""
    parser.add_argument(
        "--data-type",
        choices=["auto", *DATA_TYPES],
        default="auto",
        help="of every set: raw (manifest, data.list, Kaldi dir), shard (tar shard list), "
        "lhotse (cuts); default: told apart per set from its file",
    )


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data", required=True, help="manifest, WeNet data.list, Kaldi dir or lhotse cuts"
    )
    parser.add_argument("--out", required=True, help="directory for the shards and shards.list")
    parser.add_argument(
        "--per-shard", type=int, default=1000, help="utterances per shard (default 1000)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    list_path, written, skips = write_shards(args.data, args.out, args.per_shard, args.workers)
    print(f"wrote {list_path}: {written} utterances, {skips.summary()}")
    return 0
