"""`u2moe transcribe`: the text of audio files, optionally with word timestamps or as JSON.

    u2moe transcribe --model exp/model a.wav b.flac
    u2moe transcribe --model exp/model --timestamps --json a.wav
    u2moe transcribe --onnx exp/onnx a.wav            # an `u2moe export`, without torch

Text output is `FILE<TAB>text` per file (with --timestamps, then one `start end word` line
per word, indented); JSON output is one object per line: file, text, and with --timestamps
words and pieces (tokens) with start and end seconds. A file that cannot be transcribed is
reported on one line; the others are still transcribed, and the exit status is 1.
"""

import argparse
import json
import sys

from u2moe.commands.options import add_search_arguments, parse_modes, search_options
from u2moe.decode.config import MODES
from u2moe.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="model directory")
    model.add_argument(
        "--onnx", metavar="DIR", help="an `u2moe export` directory (onnxruntime, no torch)"
    )
    parser.add_argument("--int8", action="store_true", help="with --onnx: the *.int8.onnx files")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    parser.add_argument(
        "--mode", help=f"one of {', '.join(MODES)} (default: the model's first decode mode)"
    )
    parser.add_argument("--timestamps", action="store_true", help="word and token times")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    add_search_arguments(parser)


def main(args: argparse.Namespace) -> int:
    options = search_options(args)
    if args.mode is not None:
        options["modes"] = parse_modes(args.mode)
        if len(options["modes"]) != 1:
            raise UserError(f"--mode: transcribe decodes with one mode, got {args.mode!r}")
    if args.onnx is not None:
        from u2moe.runtime import load_model

        if args.device != "cpu":
            raise UserError("--device: the onnx runtime runs on cpu")
        transcriber = load_model(args.onnx, args.int8, **options)
    else:
        from u2moe.api import load_model

        if args.int8:
            raise UserError("--int8: only with --onnx (an export with *.int8.onnx files)")
        transcriber = load_model(args.model, args.device, **options)
    failures = 0
    for path in args.files:
        try:
            result = transcriber.transcribe(path, timestamps=args.timestamps)
        except UserError as e:
            print(f"u2moe transcribe: error: {e}", file=sys.stderr)
            failures += 1
            continue
        if args.json:
            print(json.dumps({"file": path, **result.as_dict()}, ensure_ascii=False))
        else:
            print(f"{path}\t{result.text}")
            for word in result.words or []:
                print(f"  {word.start:.2f} {word.end:.2f} {word.text}")
        sys.stdout.flush()
    return 1 if failures else 0
