"""`u2moe export`: a model directory -> ONNX (WeNet layout), sherpa-onnx or a WeNet experiment.

u2moe export --model exp/model --out exp/onnx                  # chunk 16, 4 left chunks
u2moe export --model exp/model --out exp/onnx-full --chunk-size -1
u2moe export --model exp/model --out exp/sherpa --format sherpa-onnx --int8
u2moe export --model exp/model --out exp/wenet --format wenet
"""

import argparse

from u2moe.commands.arguments import positive_int
from u2moe.export import DEFAULT_MOE_FORM, FORMATS, export_model
from u2moe.export.moe import FORMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument(
        "--chunk-size", type=int, default=16, help="encoder frames per step; -1: full context"
    )
    parser.add_argument(
        "--left-chunks", type=int, default=4, help="chunks of attention cache; -1: all"
    )
    parser.add_argument("--int8", action="store_true", help="also write *.int8.onnx")
    parser.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument(
        "--moe-form",
        default=DEFAULT_MOE_FORM,
        choices=FORMS,
        help="ONNX form of MoE layers (docs/BENCHMARKS.md compares them)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, help="MoE experts per frame (default: as trained)"
    )
    parser.add_argument(
        "--batch-encoder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --format onnx: also write encoder_batch.onnx, the streaming step for many "
        "streams at once (what `u2moe serve --onnx` batches with); --no-batch-encoder saves "
        "its copy of the encoder weights",
    )


def main(args: argparse.Namespace) -> int:
    names = export_model(
        args.model,
        args.out,
        args.chunk_size,
        args.left_chunks,
        args.int8,
        args.format,
        args.moe_form,
        args.top_k,
        args.batch_encoder,
    )
    print(f"wrote {args.out}: {', '.join(names)}")
    return 0
