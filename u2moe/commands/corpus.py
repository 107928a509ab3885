"""`u2moe corpus`: synthesize the built-in English corpus (see recipes/README.md).

Writes OUT/wavs/<key>.wav (16 kHz mono 16-bit), OUT/{train,dev,test}.jsonl, OUT/plan.jsonl
and OUT/corpus.json. Rerunning with the same options keeps finished files and makes the rest.
"""

import logging
import os
from pathlib import Path

from u2moe.commands.arguments import non_negative_int, output_dir, positive_float, positive_int
from u2moe.corpus.recipe import DEFAULT_SIZES, TINY_ENGINES, TINY_SIZES, Sizes, build_corpus
from u2moe.corpus.voices import CATALOGUE, ENGINES, LICENCES, is_available
from u2moe.errors import UserError

MAX_FAILED_FRACTION = 0.01


def add_arguments(parser):
    parser.add_argument(
        "--out", type=output_dir, help="output directory (required unless --list-voices)"
    )
    parser.add_argument(
        "--hours",
        type=positive_float,
        help=f"hours of training audio (default {DEFAULT_SIZES.train_hours}; tiny "
        f"{TINY_SIZES.train_hours})",
    )
    parser.add_argument(
        "--dev-utts",
        type=non_negative_int,
        help=f"dev utterances (default {DEFAULT_SIZES.dev_utts})",
    )
    parser.add_argument(
        "--test-utts",
        type=non_negative_int,
        help=f"test utterances (default {DEFAULT_SIZES.test_utts})",
    )
    parser.add_argument(
        "--vocabulary",
        help=f"keep only sentences of the N most frequent training words, or 'open' for all "
        f"(default {DEFAULT_SIZES.vocabulary})",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"a few dozen utterances from {' and '.join(TINY_ENGINES)} (for tests)",
    )
    parser.add_argument(
        "--engines",
        help=f"comma-separated engines to use (default: all of {','.join(ENGINES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the plan (default 0)")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="synthesis processes (default: all cores)",
    )
    parser.add_argument(
        "--list-voices", action="store_true", help="show the voice catalogue and exit"
    )


def list_voices() -> None:
    print(f"{'voice':34} {'engine':10} {'speaker':16} {'split':6} available")
    for v in CATALOGUE:
        print(f"{v.id:34} {v.engine:10} {v.speaker:16} {v.split:6} {is_available(v)}")
    print("\nlicences:")
    for engine, licence in LICENCES.items():
        print(f"  {engine}: {licence}")


def parse_vocabulary(text: str) -> int | None:
    if text == "open":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--vocabulary must be a positive number of words or 'open', not {text!r}")
    return int(text)


def main(args) -> int:
    if args.list_voices:
        list_voices()
        return 0
    if not args.out:
        raise UserError("--out is required")
    base = TINY_SIZES if args.tiny else DEFAULT_SIZES
    sizes = Sizes(
        train_hours=base.train_hours if args.hours is None else args.hours,
        dev_utts=base.dev_utts if args.dev_utts is None else args.dev_utts,
        test_utts=base.test_utts if args.test_utts is None else args.test_utts,
        vocabulary=base.vocabulary
        if args.vocabulary is None
        else parse_vocabulary(args.vocabulary),
    )
    engines = TINY_ENGINES if args.tiny else ENGINES
    if args.engines:
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        if unknown := [e for e in engines if e not in ENGINES]:
            raise UserError(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    summary = build_corpus(Path(args.out), sizes, args.seed, engines, args.workers)
    for split, stats in summary["splits"].items():
        print(
            f"{split}: {stats['utterances']} utterances, {stats['hours']:.2f} h, "
            f"{len(stats['speakers'])} speakers, engines {stats['engines']}"
        )
    failed = len(summary["failed"])
    if failed:
        # An engine may stumble on a rare sentence (a missing mbrola diphone); those are left
        # out. Many failures mean a broken engine.
        planned = failed + sum(s["utterances"] for s in summary["splits"].values())
        print(f"{failed} of {planned} utterances failed and are left out (see the log)")
        if failed > MAX_FAILED_FRACTION * planned:
            return 1
    return 0
