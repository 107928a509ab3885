"""The `decode:` section of a config: search modes, beam, score weights, chunking, endpoints."""

from dataclasses import dataclass, field
from typing import Literal

from u2moe.config import ConfigError

Mode = Literal[
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "ctc_lexicon_beam_search",
    "attention",
    "attention_rescoring",
]
MODES: tuple[str, ...] = Mode.__args__


@dataclass
class EndpointConfig:
    """When the streaming Recognizer closes an utterance on its own (WeNet's runtime rules).

    A decoded frame (one per `subsampling` input frames) is silence when its CTC blank
    probability exceeds `blank_threshold`; the rules look at the run of trailing silence.
    """

    enabled: bool = True
    blank_threshold: float = 0.8
    silence_before_speech_ms: int = 5000  # nothing decoded yet and this much silence: endpoint
    silence_after_speech_ms: int = 1000  # something decoded and this much trailing silence
    max_utterance_ms: int = 20000  # an utterance this long ends whatever it holds


@dataclass
class DecodeConfig:
    modes: list[Mode] = field(default_factory=lambda: ["attention_rescoring"])
    beam_size: int = 10
    # attention_rescoring: ctc_weight * ctc + (1 - reverse_weight) * l2r + reverse_weight * r2l
    ctc_weight: float = 0.3
    reverse_weight: float = 0.5
    # ctc_lexicon_beam_search: an LM directory from `u2moe lm`; each finished word adds
    # lm_weight * log P(word | history) + word_score (decode/lexicon.py)
    lm: str | None = None
    lm_weight: float = 0.8
    word_score: float = 1.0
    chunk_size: int = -1  # decoding chunk in encoder frames; -1: full context
    num_left_chunks: int = -1  # chunks of left context; -1: all of it
    # True: run the encoder chunk by chunk with caches (decode.stream.EncoderStream), one
    # utterance at a time; same results as the chunk mask, honest streaming RTF
    streaming: bool = False
    batch_size: int = 16  # utterances per batch in `u2moe decode`
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self):
        ep = self.endpoint
        checks = [
            (len(self.modes) > 0, "modes must name at least one decoding mode"),
            (len(set(self.modes)) == len(self.modes), f"modes repeats a mode: {self.modes}"),
            (
                self.lm is not None or "ctc_lexicon_beam_search" not in self.modes,
                "ctc_lexicon_beam_search needs lm: a directory made by `u2moe lm`",
            ),
            (self.lm_weight >= 0.0, f"lm_weight must be >= 0, got {self.lm_weight}"),
            (self.beam_size >= 1, f"beam_size must be >= 1, got {self.beam_size}"),
            (0.0 <= self.ctc_weight, f"ctc_weight must be >= 0, got {self.ctc_weight}"),
            (
                0.0 <= self.reverse_weight <= 1.0,
                f"reverse_weight must be in [0, 1], got {self.reverse_weight}",
            ),
            (
                self.chunk_size == -1 or self.chunk_size > 0,
                f"chunk_size must be -1 (full context) or > 0, got {self.chunk_size}",
            ),
            (
                self.num_left_chunks == -1 or self.num_left_chunks >= 0,
                f"num_left_chunks must be -1 (all) or >= 0, got {self.num_left_chunks}",
            ),
            (
                not self.streaming or self.chunk_size > 0,
                "streaming decoding needs chunk_size > 0",
            ),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (
                0.0 < ep.blank_threshold < 1.0,
                f"endpoint.blank_threshold must be in (0, 1), got {ep.blank_threshold}",
            ),
            (
                min(ep.silence_before_speech_ms, ep.silence_after_speech_ms) > 0
                and ep.max_utterance_ms > 0,
                "endpoint durations must be > 0 ms",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
