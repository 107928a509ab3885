"""Decoding options shared by `u2moe decode` and `u2moe transcribe` (torch-free: the
`transcribe --onnx` path imports no torch)."""

import argparse

from u2moe.decode.config import MODES
from u2moe.errors import UserError


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `u2moe transcribe`; each overrides the model's decode section."""
    parser.add_argument("--chunk-size", type=int, help="decoding chunk in encoder frames; -1: full")
    parser.add_argument("--left-chunks", type=int, help="chunks of left context; -1: all")
    parser.add_argument("--beam-size", type=int)
    parser.add_argument("--ctc-weight", type=float, help="CTC weight in attention rescoring")
    parser.add_argument("--reverse-weight", type=float, help="right-to-left decoder weight")
    parser.add_argument("--lm", help="LM directory from `u2moe lm` (ctc_lexicon_beam_search)")
    parser.add_argument("--lm-weight", type=float, help="word LM weight (lexicon search)")
    parser.add_argument("--word-score", type=float, help="bonus per word (lexicon search)")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="run the encoder chunk by chunk with caches (needs --chunk-size > 0), "
        "one utterance at a time as a streaming server does",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def search_options(args: argparse.Namespace) -> dict:
    """DecodeConfig overrides given on the command line."""
    options = {
        "chunk_size": args.chunk_size,
        "num_left_chunks": args.left_chunks,
        "beam_size": args.beam_size,
        "ctc_weight": args.ctc_weight,
        "reverse_weight": args.reverse_weight,
        "lm": args.lm,
        "lm_weight": args.lm_weight,
        "word_score": args.word_score,
        "streaming": args.streaming or None,
    }
    return {k: v for k, v in options.items() if v is not None}


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"--mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    return modes
