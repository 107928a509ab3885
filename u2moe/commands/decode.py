"""`u2moe decode`: decode a manifest in one or more modes, score WER/CER and measure RTF.

    u2moe decode --model exp/model --data data/test.jsonl --out exp/decode \\
        --mode ctc_greedy_search,ctc_prefix_beam_search,attention_rescoring --chunk-size 16

All modes share one encoder pass per batch. OUT gets, per mode, `<mode>/hyps.txt`
(`key<TAB>text`) and `<mode>/errors.txt` (per utterance: word and character S/D/I, ref,
hyp); `ref.txt`; `failed.txt` (utterances that could not be decoded, with the reason);
`summary.json` and `summary.txt` (WER, CER, S/D/I, RTF, audio and processing seconds,
model parameters). RTF = processing seconds / audio seconds, where processing is reading
the audio, features, the encoder and the mode's own search. Exit status 1 when an
utterance failed (each is reported on one line), 0 otherwise.
"""

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from u2moe.api import load_model
from u2moe.commands.options import add_search_arguments, parse_modes, search_options
from u2moe.data.manifest import Manifest
from u2moe.decode.batch import DecodeSummary, decode_manifest, format_summary, write_outputs
from u2moe.decode.config import MODES
from u2moe.errors import UserError
from u2moe.model.packing import pack_for_cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument(
        "--data", required=True, help="JSON-lines manifest, WeNet data.list or Kaldi data dir"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--mode",
        help=f"comma-separated decoding modes ({', '.join(MODES)}); "
        "default: the model's decode section",
    )
    parser.add_argument("--batch-size", type=int, help="utterances per batch")
    add_search_arguments(parser)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--cpu-weights",
        choices=["float32", "int8"],
        help="pack the weights once for CPU inference: float32 (oneDNN layout, same results "
        "up to rounding) or int8 (dynamic quantization; routers stay float32)",
    )


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = search_options(args)
    if args.mode is not None:
        options["modes"] = parse_modes(args.mode)
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    transcriber = load_model(args.model, args.device, **options)
    parameters = sum(p.numel() for p in transcriber.model.parameters())
    if args.cpu_weights is not None:
        if transcriber.device.type != "cpu":
            raise UserError("--cpu-weights packs weights for CPU inference; use --device cpu")
        pack_for_cpu(transcriber.model, args.cpu_weights)
    manifest = Manifest(args.data)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tqdm(total=len(manifest), unit="utt", desc="decode", dynamic_ncols=True) as progress:

        def failed(key: str, reason: str) -> None:
            progress.write(f"u2moe decode: error: {key}: {reason}", file=sys.stderr)
            progress.update(1)

        def decoded(count: int, rtf: float) -> None:
            progress.update(count)
            progress.set_postfix(rtf=f"{rtf:.3f}")

        result = decode_manifest(transcriber, manifest, failed, decoded)
    summary = DecodeSummary.of(
        result,
        transcriber.decode_cfg,
        model=str(args.model),
        data=str(args.data),
        device=str(transcriber.device),
        threads=torch.get_num_threads(),
        model_parameters=parameters,
        cpu_weights=args.cpu_weights,
    )
    write_outputs(out_dir, result, summary)
    print(format_summary(summary))
    if not result.utterances:
        raise UserError(f"{args.data}: no utterance could be decoded (see {out_dir}/failed.txt)")
    if result.failed:
        print(
            f"u2moe decode: {len(result.failed)} of {len(manifest)} utterances failed "
            f"(listed in {out_dir}/failed.txt)",
            file=sys.stderr,
        )
        return 1
    return 0
