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
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from u2moe.api import Transcriber, load_model
from u2moe.commands.arguments import output_dir, positive_int
from u2moe.data.files import write_text_atomic
from u2moe.data.manifest import BadEntry, Manifest, check_unique_keys
from u2moe.decode.config import MODES
from u2moe.decode.scoring import ErrorCounts, char_errors, normalize_whitespace, word_errors
from u2moe.decode.search import decode_batch
from u2moe.errors import UserError
from u2moe.model.packing import pack_for_cpu

BUCKET_BATCHES = 4  # batches loaded together and sorted by length (less padding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument(
        "--data", required=True, help="JSON-lines manifest, WeNet data.list or Kaldi data dir"
    )
    parser.add_argument("--out", required=True, type=output_dir, help="output directory")
    parser.add_argument(
        "--mode",
        help=f"comma-separated decoding modes ({', '.join(MODES)}); "
        "default: the model's decode section",
    )
    parser.add_argument("--batch-size", type=positive_int, help="utterances per batch")
    add_search_arguments(parser)
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads for torch (default: torch's)"
    )
    parser.add_argument(
        "--cpu-weights",
        choices=["float32", "int8"],
        help="pack the weights once for CPU inference: float32 (oneDNN layout, same results "
        "up to rounding) or int8 (dynamic quantization; routers stay float32)",
    )


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `u2moe transcribe`; each overrides the model's decode section."""
    parser.add_argument("--chunk-size", type=int, help="decoding chunk in encoder frames; -1: full")
    parser.add_argument("--left-chunks", type=int, help="chunks of left context; -1: all")
    parser.add_argument("--beam-size", type=positive_int)
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


@dataclass
class LoadedUtterance:
    key: str
    ref: str
    feats: torch.Tensor  # (T, 80)
    seconds: float  # audio duration
    index: int  # position in the manifest


@dataclass
class Totals:
    audio: float = 0.0
    features: float = 0.0  # reading audio and computing fbank
    encoder: float = 0.0
    wall: float = 0.0  # everything, all modes together
    search: dict[str, float] = field(default_factory=dict)
    words: dict[str, ErrorCounts] = field(default_factory=dict)
    chars: dict[str, ErrorCounts] = field(default_factory=dict)

    def rtf(self, mode: str) -> float:
        seconds = self.features + self.encoder + self.search[mode]
        return seconds / max(self.audio, 1e-9)


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
    cfg = transcriber.decode_cfg
    manifest = Manifest(args.data)
    check_unique_keys(manifest)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    totals = Totals(
        search=dict.fromkeys(cfg.modes, 0.0),
        words={m: ErrorCounts() for m in cfg.modes},
        chars={m: ErrorCounts() for m in cfg.modes},
    )
    rows: dict[str, list[tuple[int, str, str]]] = {m: [] for m in cfg.modes}  # index, hyp, err
    refs: list[tuple[int, str, str]] = []
    failed: list[tuple[str, str]] = []
    bucket: list[LoadedUtterance] = []
    bucket_size = cfg.batch_size * BUCKET_BATCHES
    progress = tqdm(total=len(manifest), unit="utt", desc="decode", dynamic_ncols=True)

    def flush() -> None:
        bucket.sort(key=lambda u: len(u.feats), reverse=True)
        for start in range(0, len(bucket), cfg.batch_size):
            batch = bucket[start : start + cfg.batch_size]
            decode_utterances(transcriber, batch, totals, rows)
            refs.extend((u.index, u.key, u.ref) for u in batch)
            progress.update(len(batch))
            progress.set_postfix(rtf=f"{totals.wall / max(totals.audio, 1e-9):.3f}")
        bucket.clear()

    for index, entry in enumerate(manifest):
        if isinstance(entry, BadEntry):
            fail(failed, entry.key, entry.reason, progress)
            continue
        start = time.perf_counter()
        try:
            feats = transcriber.features(entry.audio, start=entry.start, end=entry.end)
        except UserError as e:
            fail(failed, entry.key, str(e), progress)
            continue
        elapsed = time.perf_counter() - start
        totals.features += elapsed
        totals.wall += elapsed
        seconds = transcriber.duration(len(feats))
        bucket.append(LoadedUtterance(entry.key, entry.text, feats, seconds, index))
        if len(bucket) >= bucket_size:
            flush()
    flush()
    progress.close()

    write_outputs(out_dir, transcriber, args, parameters, totals, rows, refs, failed)
    decoded = len(refs)
    print(format_summary(totals, cfg.modes, decoded, len(failed)))
    if decoded == 0:
        raise UserError(f"{args.data}: no utterance could be decoded (see {out_dir}/failed.txt)")
    if failed:
        print(
            f"u2moe decode: {len(failed)} of {len(manifest)} utterances failed "
            f"(listed in {out_dir}/failed.txt)",
            file=sys.stderr,
        )
        return 1
    return 0


def fail(failed: list, key: str, reason: str, progress: tqdm) -> None:
    failed.append((key, reason))
    progress.write(f"u2moe decode: error: {key}: {reason}", file=sys.stderr)
    progress.update(1)


def decode_utterances(
    transcriber: Transcriber,
    batch: list[LoadedUtterance],
    totals: Totals,
    rows: dict[str, list[tuple[int, str, str]]],
) -> None:
    """Decode one batch in every mode; add its hypotheses, errors and times to the totals."""
    lengths = torch.tensor([len(u.feats) for u in batch], device=transcriber.device)
    feats = torch.nn.utils.rnn.pad_sequence([u.feats for u in batch], batch_first=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = decode_batch(
            transcriber.model,
            feats.to(transcriber.device),
            lengths,
            transcriber.decode_cfg,
            transcriber.lexicon,
        )
    totals.wall += time.perf_counter() - start
    totals.encoder += out.seconds["encoder"]
    totals.audio += sum(u.seconds for u in batch)
    for mode, hyps in out.hyps.items():
        totals.search[mode] += out.seconds[mode]
        for utt, hyp in zip(batch, hyps, strict=True):
            text = transcriber.tokenizer.decode(hyp.tokens)
            words, chars = word_errors(utt.ref, text), char_errors(utt.ref, text)
            totals.words[mode] += words
            totals.chars[mode] += chars
            counts = [words.substitutions, words.deletions, words.insertions, words.ref_length]
            counts += [chars.substitutions, chars.deletions, chars.insertions, chars.ref_length]
            fields = [utt.key, *map(str, counts), normalize_whitespace(utt.ref), text]
            rows[mode].append((utt.index, text, "\t".join(fields)))


ERRORS_HEADER = "key\tS\tD\tI\tN\tchar_S\tchar_D\tchar_I\tchar_N\tref\thyp"


def write_outputs(out_dir, transcriber, args, parameters, totals, rows, refs, failed) -> None:
    cfg = transcriber.decode_cfg
    keys = {index: key for index, key, _ in refs}
    for mode, mode_rows in rows.items():
        mode_rows.sort()
        (out_dir / mode).mkdir(exist_ok=True)
        hyps = "".join(f"{keys[i]}\t{text}\n" for i, text, _ in mode_rows)
        write_text_atomic(out_dir / mode / "hyps.txt", hyps)
        errors = "".join(f"{line}\n" for _, _, line in mode_rows)
        write_text_atomic(out_dir / mode / "errors.txt", f"{ERRORS_HEADER}\n{errors}")
    refs.sort()
    write_text_atomic(out_dir / "ref.txt", "".join(f"{key}\t{ref}\n" for _, key, ref in refs))
    write_text_atomic(out_dir / "failed.txt", "".join(f"{k}\t{r}\n" for k, r in failed))
    summary = {
        "model": str(args.model),
        "data": str(args.data),
        "device": str(transcriber.device),
        "threads": torch.get_num_threads(),
        "model_parameters": parameters,
        "cpu_weights": args.cpu_weights,
        "decode": asdict(cfg),
        "utterances": len(refs),
        "failed": len(failed),
        "audio_seconds": round(totals.audio, 3),
        "processing_seconds": round(totals.wall, 3),
        "rtf": totals.wall / max(totals.audio, 1e-9),
        "modes": {
            mode: {
                "wer": totals.words[mode].as_dict(),
                "cer": totals.chars[mode].as_dict(),
                "processing_seconds": round(
                    totals.features + totals.encoder + totals.search[mode], 3
                ),
                "rtf": totals.rtf(mode),
            }
            for mode in cfg.modes
        },
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    header = (
        f"model {args.model} ({summary['model_parameters'] / 1e6:.2f} M parameters)\n"
        f"data {args.data}\n"
        f"chunk_size {cfg.chunk_size}, num_left_chunks {cfg.num_left_chunks}, "
        f"streaming {cfg.streaming}, "
        f"beam_size {cfg.beam_size}, ctc_weight {cfg.ctc_weight}, "
        f"reverse_weight {cfg.reverse_weight}\n"
    )
    text = header + format_summary(totals, cfg.modes, len(refs), len(failed)) + "\n"
    write_text_atomic(out_dir / "summary.txt", text)


def format_summary(totals: Totals, modes: list[str], decoded: int, failed: int) -> str:
    lines = [
        f"{decoded} utterances decoded, {failed} failed; {totals.audio:.1f} s of audio "
        f"in {totals.wall:.1f} s (RTF {totals.wall / max(totals.audio, 1e-9):.4f}, all modes)",
        f"{'mode':<24} {'WER':>7}  {'S/D/I of words':<22} {'CER':>7}  {'S/D/I of chars':<22} "
        f"{'RTF':>7}",
    ]
    for mode in modes:
        w, c = totals.words[mode], totals.chars[mode]
        lines.append(
            f"{mode:<24} {100 * w.rate:6.2f}%  "
            f"{f'{w.substitutions}/{w.deletions}/{w.insertions} of {w.ref_length}':<22} "
            f"{100 * c.rate:6.2f}%  "
            f"{f'{c.substitutions}/{c.deletions}/{c.insertions} of {c.ref_length}':<22} "
            f"{totals.rtf(mode):7.4f}"
        )
    return "\n".join(lines)
