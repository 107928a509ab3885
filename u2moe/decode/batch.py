"""Decoding batches of utterances in several modes at once, and whole manifests.

`decode_batch(backend, feats, lengths, cfg)` decodes one padded batch of fbank in every mode
of cfg.modes, sharing one encoder pass. `decode_manifest(transcriber, manifest)` reads,
decodes and scores a manifest and returns a typed `DecodeResult` (per utterance and per
mode); `write_outputs` writes it as `u2moe decode` does (hyps, errors, refs, failures,
summary.json / summary.txt), and `load_summary` reads a summary.json back as a typed
`DecodeSummary`. Torch-free.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from u2moe.config import parse_section
from u2moe.data.files import write_text_atomic
from u2moe.data.manifest import BadEntry
from u2moe.decode.config import DecodeConfig
from u2moe.decode.scoring import ErrorCounts, char_errors, normalize_whitespace, word_errors
from u2moe.decode.search import (
    NBEST_MODES,
    Hypothesis,
    attention_rescoring,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    host_array,
)
from u2moe.decode.stream import EncoderStream
from u2moe.errors import UserError

BUCKET_BATCHES = 4  # batches loaded together and sorted by length (less padding)


@dataclass
class BatchDecoding:
    hyps: dict[str, list[Hypothesis]]  # mode -> best hypothesis of each utterance
    ctc_log_probs: np.ndarray  # (B, T', V)
    enc_lengths: np.ndarray  # (B,)
    # wall seconds: "encoder" (encoder + CTC head, shared by all modes), and per mode its own
    # search, counting the prefix beam search that attention_rescoring builds on
    seconds: dict[str, float]


def encode_batch(backend, feats: np.ndarray, lengths: np.ndarray, cfg: DecodeConfig):
    """(enc (B, T', d), enc_lengths (B,)): one masked pass, or with cfg.streaming chunk by
    chunk with caches, one utterance (stream) at a time as a streaming server runs it."""
    if not cfg.streaming:
        return backend.encode(feats, lengths, cfg.chunk_size, cfg.num_left_chunks)
    return encode_streams(backend, feats, lengths, cfg.chunk_size, cfg.num_left_chunks)


def encode_streams(backend, feats, lengths, chunk_size: int, num_left_chunks: int):
    """Each utterance of feats (B, T, feature_dim), lengths (B,) as one stream through
    `EncoderStream` -> (enc (B, T', d) zero-padded, enc_lengths (B,))."""
    outputs = []
    for utterance, length in zip(feats, np.asarray(lengths).tolist(), strict=True):
        stream = EncoderStream(backend.info, chunk_size, num_left_chunks)
        stream.accept_feats(utterance[:length])
        stream.input_finished()
        outputs.append(stream.encode_all(backend))
    enc_lengths = np.array([len(out) for out in outputs], dtype=np.int64)
    enc = np.zeros((len(outputs), enc_lengths.max(), backend.info.output_size), np.float32)
    for b, out in enumerate(outputs):
        enc[b, : len(out)] = out
    return enc, enc_lengths


def decode_batch(
    backend, feats: np.ndarray, feats_lengths: np.ndarray, cfg: DecodeConfig, lexicon=None
) -> BatchDecoding:
    """Decode a batch in every mode of `cfg.modes`, sharing one encoder pass.

    backend: a `u2moe.backends.Backend`; feats (B, T, feature_dim) raw fbank, feats_lengths
    (B,). The encoder sees the whole utterance with a chunk mask of cfg.chunk_size frames
    and cfg.num_left_chunks chunks of left context (-1, -1: full context), which equals
    chunk-by-chunk streaming; with cfg.streaming the encoder really runs chunk by chunk with
    caches. `lexicon` (a decode.lexicon.LexiconSearch) serves ctc_lexicon_beam_search; the
    `attention` mode needs a backend with `attention_beam_search` (the PyTorch one).
    """
    feats = host_array(feats).astype(np.float32, copy=False)
    feats_lengths = host_array(feats_lengths)
    start = time.perf_counter()
    enc, enc_lengths = encode_batch(backend, feats, feats_lengths, cfg)
    ctc_log_probs = backend.ctc_log_probs(enc)
    seconds = {"encoder": time.perf_counter() - start}
    nbests, nbest_seconds = None, 0.0
    if any(mode in NBEST_MODES for mode in cfg.modes):
        start = time.perf_counter()
        nbests = ctc_prefix_beam_search(ctc_log_probs, enc_lengths, cfg.beam_size)
        nbest_seconds = time.perf_counter() - start
    hyps: dict[str, list[Hypothesis]] = {}
    for mode in cfg.modes:
        start = time.perf_counter()
        if mode == "ctc_greedy_search":
            hyps[mode] = ctc_greedy_search(ctc_log_probs, enc_lengths)
        elif mode == "attention":
            if not hasattr(backend, "attention_beam_search"):
                raise UserError("the attention mode needs the PyTorch backend")
            hyps[mode] = backend.attention_beam_search(enc, enc_lengths, cfg.beam_size)
        elif mode == "ctc_prefix_beam_search":
            hyps[mode] = [nbest[0] for nbest in nbests]
        elif mode == "ctc_lexicon_beam_search":
            if lexicon is None:
                raise ValueError("ctc_lexicon_beam_search needs a LexiconSearch")
            hyps[mode] = lexicon(ctc_log_probs, enc_lengths)
        elif mode == "attention_rescoring":
            hyps[mode] = attention_rescoring(
                backend, nbests, enc, enc_lengths, cfg.ctc_weight, cfg.reverse_weight
            )
        else:
            raise ValueError(f"unknown decoding mode {mode!r}")
        seconds[mode] = time.perf_counter() - start
        if mode in NBEST_MODES:
            seconds[mode] += nbest_seconds
    return BatchDecoding(hyps, ctc_log_probs, enc_lengths, seconds)


@dataclass
class UtteranceResult:
    """One decoded utterance of a manifest, in every mode."""

    key: str
    index: int  # position in the manifest
    ref: str
    seconds: float  # audio duration
    texts: dict[str, str] = field(default_factory=dict)  # mode -> hypothesis text
    words: dict[str, ErrorCounts] = field(default_factory=dict)  # mode -> word errors
    chars: dict[str, ErrorCounts] = field(default_factory=dict)  # mode -> character errors


@dataclass
class ModeResult:
    """One search over a whole manifest."""

    wer: ErrorCounts
    cer: ErrorCounts
    processing_seconds: float  # reading audio, features, the encoder and this mode's search
    rtf: float  # processing_seconds / audio seconds

    @classmethod
    def from_dict(cls, out: dict) -> "ModeResult":
        wer, cer = ErrorCounts.from_dict(out["wer"]), ErrorCounts.from_dict(out["cer"])
        return cls(wer, cer, out["processing_seconds"], out["rtf"])

    def as_dict(self) -> dict:
        return {
            "wer": self.wer.as_dict(),
            "cer": self.cer.as_dict(),
            "processing_seconds": round(self.processing_seconds, 3),
            "rtf": self.rtf,
        }


@dataclass
class DecodeResult:
    """A decoded manifest: what `decode_manifest` returns."""

    utterances: list[UtteranceResult]  # decoded, in manifest order
    failed: list[tuple[str, str]]  # (key, reason) of utterances that could not be decoded
    modes: dict[str, ModeResult]
    audio_seconds: float
    processing_seconds: float  # wall seconds of everything, all modes together

    @property
    def rtf(self) -> float:
        return self.processing_seconds / max(self.audio_seconds, 1e-9)


@dataclass
class DecodeSummary:
    """summary.json of `u2moe decode`: the run's settings and the results per mode."""

    model: str
    data: str
    device: str
    threads: int
    model_parameters: int
    cpu_weights: str | None
    decode: DecodeConfig
    utterances: int
    failed: int
    audio_seconds: float
    processing_seconds: float
    rtf: float
    modes: dict[str, ModeResult]

    @classmethod
    def of(cls, result: DecodeResult, decode: DecodeConfig, **run) -> "DecodeSummary":
        """The summary of `result`; run: model, data, device, threads, model_parameters,
        cpu_weights."""
        return cls(
            **run,
            decode=decode,
            utterances=len(result.utterances),
            failed=len(result.failed),
            audio_seconds=round(result.audio_seconds, 3),
            processing_seconds=round(result.processing_seconds, 3),
            rtf=result.rtf,
            modes=result.modes,
        )

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["modes"] = {mode: result.as_dict() for mode, result in self.modes.items()}
        return out


def load_summary(path: str | Path) -> DecodeSummary:
    """Read a summary.json that `write_outputs` wrote."""
    raw = json.loads(Path(path).read_text())
    raw["decode"] = parse_section(DecodeConfig, raw["decode"], f"{path}: decode")
    raw["modes"] = {mode: ModeResult.from_dict(out) for mode, out in raw["modes"].items()}
    return DecodeSummary(**raw)


@dataclass
class _Loaded:
    utterance: UtteranceResult
    feats: np.ndarray  # (T, feature_dim)


@dataclass
class _Clock:
    """Seconds spent so far: features (reading audio too), encoder, each search, wall."""

    features: float = 0.0
    encoder: float = 0.0
    wall: float = 0.0
    search: dict[str, float] = field(default_factory=dict)


def decode_manifest(
    transcriber,
    entries,
    on_failure: Callable[[str, str], None] | None = None,
    on_decoded: Callable[[int, float], None] | None = None,
) -> DecodeResult:
    """Decode and score every entry of a manifest (`u2moe.data.manifest`) in the modes of
    transcriber.decode_cfg, batch by batch (utterances of similar length together).

    An entry that cannot be read or decoded is listed in `failed` (and passed to
    on_failure(key, reason)); on_decoded(count, rtf so far) follows each batch.
    """
    cfg = transcriber.decode_cfg
    clock = _Clock(search=dict.fromkeys(cfg.modes, 0.0))
    decoded: list[UtteranceResult] = []
    failed: list[tuple[str, str]] = []
    bucket: list[_Loaded] = []

    def fail(key: str, reason: str) -> None:
        failed.append((key, reason))
        if on_failure is not None:
            on_failure(key, reason)

    def flush() -> None:
        bucket.sort(key=lambda loaded: len(loaded.feats), reverse=True)
        for start in range(0, len(bucket), cfg.batch_size):
            batch = bucket[start : start + cfg.batch_size]
            decoded.extend(_decode_loaded(transcriber, batch, clock))
            if on_decoded is not None:
                audio = sum(u.seconds for u in decoded)
                on_decoded(len(batch), clock.wall / max(audio, 1e-9))
        bucket.clear()

    for index, entry in enumerate(entries):
        if isinstance(entry, BadEntry):
            fail(entry.key, entry.reason)
            continue
        start = time.perf_counter()
        try:
            feats = transcriber.features(entry.audio, start=entry.start, end=entry.end)
        except UserError as e:
            fail(entry.key, str(e))
            continue
        elapsed = time.perf_counter() - start
        clock.features += elapsed
        clock.wall += elapsed
        seconds = transcriber.duration(len(feats))
        bucket.append(_Loaded(UtteranceResult(entry.key, index, entry.text, seconds), feats))
        if len(bucket) >= cfg.batch_size * BUCKET_BATCHES:
            flush()
    flush()
    decoded.sort(key=lambda u: u.index)
    audio = sum(u.seconds for u in decoded)
    modes = {}
    for mode in cfg.modes:
        seconds = clock.features + clock.encoder + clock.search[mode]
        wer = sum((u.words[mode] for u in decoded), ErrorCounts())
        cer = sum((u.chars[mode] for u in decoded), ErrorCounts())
        modes[mode] = ModeResult(wer, cer, seconds, seconds / max(audio, 1e-9))
    return DecodeResult(decoded, failed, modes, audio, clock.wall)


def _decode_loaded(transcriber, batch: list[_Loaded], clock: _Clock) -> list[UtteranceResult]:
    """Decode one batch in every mode; score it and count its seconds."""
    lengths = np.array([len(loaded.feats) for loaded in batch])
    feats = np.zeros((len(batch), lengths.max(), batch[0].feats.shape[1]), dtype=np.float32)
    for b, loaded in enumerate(batch):
        feats[b, : lengths[b]] = loaded.feats
    start = time.perf_counter()
    out = decode_batch(
        transcriber.backend, feats, lengths, transcriber.decode_cfg, transcriber.lexicon
    )
    clock.wall += time.perf_counter() - start
    clock.encoder += out.seconds["encoder"]
    for mode, hyps in out.hyps.items():
        clock.search[mode] += out.seconds[mode]
        for loaded, hyp in zip(batch, hyps, strict=True):
            utterance = loaded.utterance
            text = transcriber.tokenizer.decode(hyp.tokens)
            utterance.texts[mode] = text
            utterance.words[mode] = word_errors(utterance.ref, text)
            utterance.chars[mode] = char_errors(utterance.ref, text)
    return [loaded.utterance for loaded in batch]


ERRORS_HEADER = "key\tS\tD\tI\tN\tchar_S\tchar_D\tchar_I\tchar_N\tref\thyp"


def error_row(utterance: UtteranceResult, mode: str) -> str:
    """The errors.txt line of one utterance in one mode."""
    words, chars = utterance.words[mode], utterance.chars[mode]
    counts = [words.substitutions, words.deletions, words.insertions, words.ref_length]
    counts += [chars.substitutions, chars.deletions, chars.insertions, chars.ref_length]
    text = utterance.texts[mode]
    return "\t".join([utterance.key, *map(str, counts), normalize_whitespace(utterance.ref), text])


def write_outputs(out_dir: Path, result: DecodeResult, summary: DecodeSummary) -> None:
    """Per mode hyps.txt and errors.txt; ref.txt, failed.txt, summary.json, summary.txt."""
    for mode in summary.modes:
        (out_dir / mode).mkdir(parents=True, exist_ok=True)
        hyps = "".join(f"{u.key}\t{u.texts[mode]}\n" for u in result.utterances)
        write_text_atomic(out_dir / mode / "hyps.txt", hyps)
        errors = "".join(f"{error_row(u, mode)}\n" for u in result.utterances)
        write_text_atomic(out_dir / mode / "errors.txt", f"{ERRORS_HEADER}\n{errors}")
    refs = "".join(f"{u.key}\t{u.ref}\n" for u in result.utterances)
    write_text_atomic(out_dir / "ref.txt", refs)
    write_text_atomic(out_dir / "failed.txt", "".join(f"{k}\t{r}\n" for k, r in result.failed))
    write_text_atomic(out_dir / "summary.json", json.dumps(summary.as_dict(), indent=2) + "\n")
    cfg = summary.decode
    header = (
        f"model {summary.model} ({summary.model_parameters / 1e6:.2f} M parameters)\n"
        f"data {summary.data}\n"
        f"chunk_size {cfg.chunk_size}, num_left_chunks {cfg.num_left_chunks}, "
        f"streaming {cfg.streaming}, "
        f"beam_size {cfg.beam_size}, ctc_weight {cfg.ctc_weight}, "
        f"reverse_weight {cfg.reverse_weight}\n"
    )
    write_text_atomic(out_dir / "summary.txt", header + format_summary(summary) + "\n")


def format_summary(summary: DecodeSummary) -> str:
    """The results table: one line per mode with WER, CER, their S/D/I and the RTF."""
    lines = [
        f"{summary.utterances} utterances decoded, {summary.failed} failed; "
        f"{summary.audio_seconds:.1f} s of audio in {summary.processing_seconds:.1f} s "
        f"(RTF {summary.rtf:.4f}, all modes)",
        f"{'mode':<24} {'WER':>7}  {'S/D/I of words':<22} {'CER':>7}  {'S/D/I of chars':<22} "
        f"{'RTF':>7}",
    ]
    for mode, result in summary.modes.items():
        w, c = result.wer, result.cer
        lines.append(
            f"{mode:<24} {100 * w.rate:6.2f}%  "
            f"{f'{w.substitutions}/{w.deletions}/{w.insertions} of {w.ref_length}':<22} "
            f"{100 * c.rate:6.2f}%  "
            f"{f'{c.substitutions}/{c.deletions}/{c.insertions} of {c.ref_length}':<22} "
            f"{result.rtf:7.4f}"
        )
    return "\n".join(lines)
