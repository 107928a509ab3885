"""`u2moe prepare`: manifests, global CMVN and tokenizer from a corpus.

Sources are JSON-lines manifests, WeNet data.list files, Kaldi data directories, lhotse cuts
or tar shard lists (u2moe shard, WeNet's shard data.list).
Writes OUT/{train,dev,test}.jsonl (OUT/<set>.list for a shard list), OUT/global_cmvn,
OUT/units.txt (+ OUT/bpe.model) and OUT/summary.json (utterances, hours and problems per set).
"""

import logging
import os

from u2moe.commands.arguments import non_negative_int, output_dir, positive_int
from u2moe.commands.shard import add_data_type_argument
from u2moe.config import load_config, parse_section
from u2moe.data.config import DataConfig
from u2moe.data.prepare import prepare

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--train", required=True, help="training set (manifest or Kaldi dir)")
    parser.add_argument("--dev", required=True, help="development set")
    parser.add_argument("--test", action="append", default=[], help="test set (repeat for several)")
    parser.add_argument("--out", required=True, type=output_dir, help="output directory")
    add_data_type_argument(parser)
    parser.add_argument(
        "--config", help="a YAML config: its data section sets features and tokenizer options"
    )
    parser.add_argument("--tokenizer", choices=["char", "bpe"], help="units (default: char)")
    parser.add_argument(
        "--vocab-size", type=positive_int, help="sentencepiece vocabulary size for bpe"
    )
    parser.add_argument(
        "--cmvn-utterances",
        type=non_negative_int,
        default=20000,
        help="random training utterances for CMVN statistics, 0 for all (default 20000)",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes (default: all cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the CMVN sample")


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = load_config(args.config).get("data") if args.config else None
    where = f"{args.config}: data" if args.config else "data"
    overrides = {}
    if args.tokenizer:
        overrides["type"] = args.tokenizer
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    raw = dict(raw or {})
    raw["tokenizer"] = {**(raw.get("tokenizer") or {}), **overrides}
    cfg = parse_section(DataConfig, raw, where)
    reports = prepare(
        args.train,
        args.dev,
        args.test,
        args.out,
        cfg,
        cmvn_utterances=args.cmvn_utterances,
        jobs=args.jobs,
        seed=args.seed,
        data_type=args.data_type,
    )
    for report in reports.values():
        print(
            f"{report.name}: {report.utterances} utterances, {report.hours:.2f} h, "
            f"{report.problems.summary()}"
        )
    print(f"wrote {args.out}: manifests, global_cmvn, units.txt, summary.json")
    return 0
