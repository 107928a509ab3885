"""The Python API: load a model directory, transcribe audio, or stream it.

    import u2moe
    model = u2moe.load_model("exp/model")              # a directory from train / import-wenet
    print(model.transcribe("a.wav").text)
    for word in model.transcribe("a.wav", timestamps=True).words:
        print(word.start, word.end, word.text)
    recognizer = model.recognizer()                    # streaming, see decode/recognizer.py

Decoding options come from the model directory's `decode:` section and can be overridden
as keywords: `u2moe.load_model(d, chunk_size=16, modes=["attention_rescoring"])`.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from u2moe.config import parse_section
from u2moe.data.audio import (
    SAMPLE_RATE,
    AudioError,
    check_sample_rate,
    load_audio,
    resample,
    source_name,
)
from u2moe.data.config import DataConfig
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import Tokenizer, load_tokenizer
from u2moe.decode.config import MODES, DecodeConfig
from u2moe.decode.recognizer import INT16_SCALE, Recognizer, float_samples
from u2moe.decode.search import decode_batch
from u2moe.decode.timestamps import TimedUnit, ctc_spikes, token_times, word_times
from u2moe.errors import UserError
from u2moe.model.io import CONFIG, load_model_dir


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
    """A loaded model with its tokenizer, feature and decoding settings."""

    def __init__(self, model, tokenizer: Tokenizer, data_cfg: DataConfig, decode_cfg: DecodeConfig):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.data_cfg = data_cfg
        self.decode_cfg = decode_cfg
        self.device = next(model.parameters()).device
        self.min_frames = model.encoder.right_context + 1  # fbank frames of one encoder frame
        self.frame_shift = model.encoder.subsampling_rate * data_cfg.features.frame_shift / 1000
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

    def features(
        self,
        audio: str | Path | np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        start: float = 0.0,
        end: float | None = None,
        name: str | None = None,
    ) -> torch.Tensor:
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
        if feats.size(0) < self.min_frames:
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
        with torch.inference_mode():
            out = decode_batch(
                self.model,
                feats[None].to(self.device),
                torch.tensor([len(feats)], device=self.device),
                cfg,
                self.lexicon,
            )
        hyp = out.hyps[mode][0]
        result = Transcription(self.tokenizer.decode(hyp.tokens), hyp.tokens)
        if timestamps:
            duration = self.duration(len(feats))
            log_probs = out.ctc_log_probs[0, : int(out.enc_lengths[0])]
            self._add_times(result, log_probs, duration)
        return result

    def _add_times(self, result: Transcription, log_probs, duration: float) -> None:
        spikes = ctc_spikes(log_probs, result.tokens)
        if spikes is None:  # only an attention-mode hypothesis can outgrow the CTC frames
            raise UserError("the attention result has no CTC alignment: no timestamps for it")
        times = token_times(spikes, self.frame_shift, duration)
        pieces = [self.tokenizer.units[i] for i in result.tokens]
        result.pieces = [TimedUnit(p, *t) for p, t in zip(pieces, times, strict=True)]
        result.words = word_times(pieces, times)

    def recognizer(self, timestamps: bool = False) -> Recognizer:
        """A streaming Recognizer with this model's settings (chunk_size -1: decode at the
        end of input only; give `load_model(..., chunk_size=16)` for partial results). It
        searches the lexicon when the first mode is ctc_lexicon_beam_search, otherwise it
        rescores the CTC prefix beam search with both decoders."""
        lexicon = self.lexicon if self.decode_cfg.modes[0] == "ctc_lexicon_beam_search" else None
        return Recognizer(
            self.model,
            self.tokenizer,
            self.decode_cfg,
            self.data_cfg.features,
            timestamps,
            lexicon,
        )


def load_model(model_dir: str | Path, device: str = "cpu", **decode_options) -> Transcriber:
    """Load a model directory (config.yaml, model.pt, units.txt[, bpe.model]).

    decode_options override fields of the directory's `decode:` section (DecodeConfig).
    """
    if not isinstance(model_dir, str | Path):
        raise UserError(f"load_model: expected a model directory path, got {model_dir!r}")
    model_dir = Path(model_dir)
    model, config, _ = load_model_dir(model_dir)
    where = f"{model_dir / CONFIG}"
    data_cfg = parse_section(DataConfig, config.get("data"), f"{where}: data")
    parse_section(DecodeConfig, decode_options, "decode options")  # blame bad options first
    decode_section = {**(config.get("decode") or {}), **decode_options}
    decode_cfg = parse_section(DecodeConfig, decode_section, f"{where}: decode")
    if model.decoder.right_decoder is None and decode_cfg.reverse_weight > 0:
        # without an R2L decoder, rescoring uses the L2R one alone unless told otherwise
        if "reverse_weight" in decode_section:
            raise UserError(
                f"{model_dir}: reverse_weight {decode_cfg.reverse_weight} needs a "
                "right-to-left decoder, which this model does not have"
            )
        decode_cfg = dataclasses.replace(decode_cfg, reverse_weight=0.0)
    tokenizer = load_tokenizer(model_dir, data_cfg.tokenizer)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as e:  # e.g. cuda asked for on a CPU-only build
        raise UserError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    return Transcriber(model, tokenizer, data_cfg, decode_cfg)
