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
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioError,
    float_samples,
    load_audio,
    resample,
)
from u2moe.data.config import DataConfig
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import Tokenizer, load_tokenizer
from u2moe.decode.batch import decode_batch
from u2moe.decode.config import MODES, DecodeConfig
from u2moe.decode.recognizer import Recognizer
from u2moe.decode.timestamps import TimedUnit, timed_units
from u2moe.errors import UserError


@dataclass
class Transcription:
    text: str
    tokens: list[int]
    words: list[TimedUnit] | None = None  # with timestamps: seconds from the start of the audio
    pieces: list[TimedUnit] | None = None  # the same per token (unit strings as in units.txt)

    def __str__(self) -> str:
        return self.text

    def as_dict(self) -> dict:
        out = {"text": self.text}
        for name in ("words", "pieces"):
            units = getattr(self, name)
            if units is not None:
                out[name] = [dataclasses.asdict(u) for u in units]
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
        if isinstance(audio, str | Path):
            name = name or str(audio)
            samples = load_audio(audio, start, end)
        else:
            name = name or "audio"
            samples = float_samples(audio, name)
            if sample_rate < MIN_SAMPLE_RATE:
                raise AudioError(name, "unsupported sample rate", f"{sample_rate} Hz; need 8 kHz+")
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
        cfg = dataclasses.replace(self.decode_cfg, modes=[mode])
        out = decode_batch(self.backend, feats[None], np.array([len(feats)]), cfg, self.lexicon)
        hyp = out.hyps[mode][0]
        result = Transcription(self.tokenizer.decode(hyp.tokens), hyp.tokens)
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

    def recognizer(self, timestamps: bool = False) -> Recognizer:
        """A streaming Recognizer with this model's settings (chunk_size -1: decode at the
        end of input only; give `load_model(..., chunk_size=16)` for partial results). It
        searches the lexicon when the first mode is ctc_lexicon_beam_search, otherwise it
        rescores the CTC prefix beam search with both decoders."""
        lexicon = self.lexicon if self.decode_cfg.modes[0] == "ctc_lexicon_beam_search" else None
        return Recognizer(
            self.backend,
            self.tokenizer,
            self.decode_cfg,
            self.data_cfg.features,
            timestamps,
            lexicon,
        )


def configured_transcriber(
    backend, model_dir: Path, config: dict, decode_options: dict
) -> Transcriber:
    """A Transcriber over `backend` with the `data` and `decode` sections of a model (or
    export) directory's config.yaml, fields of `decode` overridden by decode_options."""
    where = f"{model_dir / 'config.yaml'}"
    data_cfg = parse_section(DataConfig, config.get("data"), f"{where}: data")
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
