"""Whole-file transcription over any backend: features, decoding, timestamps.

    transcriber = Transcriber(backend, tokenizer, data_cfg, decode_cfg)
    print(transcriber.transcribe("a.wav", timestamps=True).words)
    recognizer = transcriber.recognizer()              # streaming, see decode/recognizer.py

`u2moe.load_model` builds one over the PyTorch model (`TorchBackend`); the ONNX runtime
builds one over its own backend. Torch-free.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from u2moe.config import parse_section
from u2moe.data.audio import (
    INT16_SCALE,
    SAMPLE_RATE,
    AudioError,
    check_sample_rate,
    float_samples,
    load_audio,
    resample,
    source_name,
)
from u2moe.data.config import DataConfig
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import Tokenizer, load_tokenizer
from u2moe.decode.batch import decode_batch
from u2moe.decode.config import MODES, DecodeConfig
from u2moe.decode.context import ContextGraph
from u2moe.decode.recognizer import Recognizer
from u2moe.decode.timestamps import TimedUnit, timed_units
from u2moe.errors import UserError

LONG_AUDIO_CHUNK = 16  # encoder frames per chunk for long audio under a full-context config
LONG_AUDIO_LEFT_CHUNKS = 16  # chunks of left context there (about 10 s at 40 ms frames)
LONG_AUDIO_PIECE = 1000  # fbank frames fed to the recognizer at a time


@dataclass
class Transcription:
    text: str
    tokens: list[int]
    words: list[TimedUnit] | None = None  # with timestamps: seconds from the start of the audio
    pieces: list[TimedUnit] | None = None  # the same per token (unit strings as in units.txt)
    nbest: list[tuple[str, float]] | None = None  # with decode.nbest > 1: (text, score) each

    def __str__(self) -> str:
        return self.text

    def as_dict(self) -> dict:
        out = {"text": self.text}
        for name in ("words", "pieces"):
            units = getattr(self, name)
            if units is not None:
                out[name] = [dataclasses.asdict(u) for u in units]
        if self.nbest is not None:
            out["nbest"] = [{"text": text, "score": round(score, 4)} for text, score in self.nbest]
        return out


class Transcriber:
    """A model behind a `u2moe.backends.Backend`, with its tokenizer, feature and decoding
    settings."""

    def __init__(
        self, backend, tokenizer: Tokenizer, data_cfg: DataConfig, decode_cfg: DecodeConfig
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.data_cfg = data_cfg
        self.decode_cfg = decode_cfg
        info = backend.info
        self.min_frames = info.right_context + 1  # fbank frames of one encoder frame
        self.frame_shift = info.subsampling_rate * data_cfg.features.frame_shift / 1000
        self.lexicon = None  # the lexicon and word LM of ctc_lexicon_beam_search, if given
        if decode_cfg.lm is not None:
            from u2moe.decode.lexicon import LexiconSearch

            self.lexicon = LexiconSearch(
                decode_cfg.lm,
                tokenizer,
                decode_cfg.beam_size,
                decode_cfg.lm_weight,
                decode_cfg.word_score,
            )
        self.context = None  # hotwords for the CTC prefix beam search, if given
        if decode_cfg.context is not None:
            self.context = ContextGraph.from_file(
                decode_cfg.context, tokenizer, decode_cfg.context_score
            )

    @property
    def model(self):
        """The PyTorch model of a TorchBackend."""
        return self.backend.model

    @property
    def device(self):
        """Where a TorchBackend's model runs."""
        return self.backend.device

    def features(
        self,
        audio: str | Path | np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        start: float = 0.0,
        end: float | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Fbank (T, 80) of a file (or its part from `start` to `end` seconds) or of samples
        (int16, or float in [-1, 1], at `sample_rate`). AudioError (a UserError) naming
        the file for unreadable, empty, silent or too short audio, or an unusable rate."""
        if isinstance(audio, str | Path) or hasattr(audio, "read"):  # a path or a file object
            name = name or source_name(audio)
            samples = load_audio(audio, start, end)
        else:
            name = name or "audio"
            samples = float_samples(audio, name)
            check_sample_rate(name, sample_rate)
            samples = resample(samples, sample_rate, SAMPLE_RATE)
        if samples.size == 0:
            raise AudioError(name, "empty audio")
        if np.abs(samples).max() < 1 / INT16_SCALE:
            raise AudioError(name, "silent audio", "every sample is 0 at 16-bit precision")
        feats = compute_fbank(samples, cfg=self.data_cfg.features)
        if len(feats) < self.min_frames:
            feat = self.data_cfg.features
            needed = (self.min_frames - 1) * feat.frame_shift + feat.frame_length
            got = len(samples) * 1000 / SAMPLE_RATE
            raise AudioError(name, "audio too short", f"{got:.0f} ms; the model needs {needed:.0f}")
        return feats

    def duration(self, frames: int) -> float:
        """Seconds of audio that `frames` fbank frames cover."""
        feat = self.data_cfg.features
        return ((frames - 1) * feat.frame_shift + feat.frame_length) / 1000

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        timestamps: bool = False,
        sample_rate: int = SAMPLE_RATE,
        mode: str | None = None,
    ) -> Transcription:
        """Text of one file or array of samples; `mode` defaults to the first configured one."""
        mode = mode or self.decode_cfg.modes[0]
        if mode not in MODES:
            raise UserError(f"unknown decoding mode {mode!r} (known: {', '.join(MODES)})")
        if mode == "ctc_lexicon_beam_search" and self.lexicon is None:
            raise UserError(f"{mode} needs an LM directory: load_model(..., lm=DIR)")
        feats = self.features(audio, sample_rate)
        if self.duration(len(feats)) > self.decode_cfg.long_audio_seconds:
            return self.transcribe_long(feats, mode, timestamps)
        cfg = dataclasses.replace(self.decode_cfg, modes=[mode])
        lengths = np.array([len(feats)])
        out = decode_batch(self.backend, feats[None], lengths, cfg, self.lexicon, self.context)
        hyp = out.hyps[mode][0]
        result = Transcription(self.tokenizer.decode(hyp.tokens), hyp.tokens)
        if cfg.nbest > 1:
            result.nbest = self.nbest_texts(out.nbests[mode][0])
        if timestamps:
            log_probs = out.ctc_log_probs[0, : int(out.enc_lengths[0])]
            duration = self.duration(len(feats))
            timed = timed_units(
                log_probs, hyp.tokens, self.tokenizer.units, self.frame_shift, duration
            )
            if timed is None:  # only an attention-mode hypothesis can outgrow the CTC frames
                raise UserError("the attention result has no CTC alignment: no timestamps for it")
            result.pieces, result.words = timed
        return result

    def transcribe_long(self, feats: np.ndarray, mode: str, timestamps: bool) -> Transcription:
        """Long audio, in memory that does not grow with the square of its length: the
        streaming recognizer runs the encoder chunk by chunk (the decode config's chunk, or
        LONG_AUDIO_CHUNK frames with LONG_AUDIO_LEFT_CHUNKS chunks of left context for a
        full-context config), cuts segments at endpoints (at most max_utterance_ms each),
        and rescores each segment with both decoders (the lexicon search: that search).
        feats (T, 80) of the whole audio; times count from its start. No per-token times."""
        cfg = self.decode_cfg
        chunk = cfg.chunk_size if cfg.chunk_size > 0 else LONG_AUDIO_CHUNK
        left = cfg.num_left_chunks if cfg.chunk_size > 0 else LONG_AUDIO_LEFT_CHUNKS
        stream_cfg = dataclasses.replace(
            cfg,
            modes=[mode],
            chunk_size=chunk,
            num_left_chunks=left,
            endpoint=dataclasses.replace(cfg.endpoint, enabled=True),
        )
        lexicon = self.lexicon if mode == "ctc_lexicon_beam_search" else None
        recognizer = Recognizer(
            self.backend, self.tokenizer, stream_cfg, self.data_cfg.features, timestamps,
            lexicon, self.context,
        )  # fmt: skip
        finals = []
        for start in range(0, len(feats), LONG_AUDIO_PIECE):
            finals += recognizer.accept_features(feats[start : start + LONG_AUDIO_PIECE])
        finals.append(recognizer.finish())
        finals = [r for r in finals if r.final and r.tokens]
        result = Transcription(
            " ".join(r.text for r in finals), [t for r in finals for t in r.tokens]
        )
        if timestamps:
            result.words = [w for r in finals for w in r.words]
        return result

    def nbest_texts(self, nbest: list) -> list[tuple[str, float]]:
        """(text, score) of the first decode.nbest hypotheses of an n-best."""
        return [(self.tokenizer.decode(h.tokens), h.score) for h in nbest[: self.decode_cfg.nbest]]

    def recognizer(self, timestamps: bool = False, context=None) -> Recognizer:
        """A streaming Recognizer with this model's settings (chunk_size -1: decode at the
        end of input only; give `load_model(..., chunk_size=16)` for partial results). It
        searches the lexicon when the first mode is ctc_lexicon_beam_search, otherwise it
        rescores the CTC prefix beam search with both decoders. context: a ContextGraph of
        hotwords for this stream instead of the configured one."""
        lexicon = self.lexicon if self.decode_cfg.modes[0] == "ctc_lexicon_beam_search" else None
        return Recognizer(
            self.backend,
            self.tokenizer,
            self.decode_cfg,
            self.data_cfg.features,
            timestamps,
            lexicon,
            context or self.context,
        )


def configured_transcriber(
    backend, model_dir: Path, config: dict, decode_options: dict
) -> Transcriber:
    """A Transcriber over `backend` with the `data` and `decode` sections of a model (or
    export) directory's config.yaml, fields of `decode` overridden by decode_options."""
    where = f"{model_dir / 'config.yaml'}"
    data_cfg = parse_section(DataConfig, config.get("data"), f"{where}: data")
    # paths (lm, context) may be given as Path objects
    decode_options = {k: str(v) if isinstance(v, Path) else v for k, v in decode_options.items()}
    parse_section(DecodeConfig, decode_options, "decode options")  # blame bad options first
    decode_section = {**(config.get("decode") or {}), **decode_options}
    decode_cfg = parse_section(DecodeConfig, decode_section, f"{where}: decode")
    if not backend.info.has_right_decoder and decode_cfg.reverse_weight > 0:
        # without an R2L decoder, rescoring uses the L2R one alone unless told otherwise
        if "reverse_weight" in decode_section:
            raise UserError(
                f"{model_dir}: reverse_weight {decode_cfg.reverse_weight} needs a "
                "right-to-left decoder, which this model does not have"
            )
        decode_cfg = dataclasses.replace(decode_cfg, reverse_weight=0.0)
    tokenizer = load_tokenizer(model_dir, data_cfg.tokenizer)
    return Transcriber(backend, tokenizer, data_cfg, decode_cfg)
