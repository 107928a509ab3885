"""Streaming two-pass recognition: audio in pieces, a partial result per chunk, a final one
rescored by both attention decoders at each endpoint and at the end of input.

    recognizer = Recognizer(backend, tokenizer, DecodeConfig(chunk_size=16))
    for piece in pieces:                       # 16-bit PCM bytes, int16 or float samples
        for result in recognizer.accept_waveform(piece):
            print(result.final, result.text)   # partials, and finals at endpoints
    print(recognizer.finish().text)            # the last final; ready for the next stream

`backend` is a `u2moe.backends.Backend` (`TorchBackend(model)`, or the ONNX runtime's).
Per chunk the stream object (`decode.stream.EncoderStream`) runs one encoder step with its
caches, and the CTC prefix beam search advances over the chunk's frames, so the final
result equals decoding the whole utterance with the same chunk size. An endpoint
(`decode.endpoint`) closes an utterance on a run of trailing CTC blanks. With a lexicon
search (`Recognizer(..., lexicon=...)`) the lexicon and word LM take the place of both
passes. `decode_ready_batch(recognizers)` advances several streams with one encoder call
per round (a server's batch). Torch-free.
"""

from dataclasses import dataclass

import numpy as np

from u2moe.data.audio import float_samples, pcm16_samples
from u2moe.data.config import FeatureConfig
from u2moe.data.features import OnlineFbank
from u2moe.decode.config import DecodeConfig
from u2moe.decode.endpoint import Endpoint
from u2moe.decode.search import CtcPrefixBeamSearch, attention_rescoring
from u2moe.decode.stream import EncoderStream, encoder_step_batch
from u2moe.decode.timestamps import TimedUnit, timed_units


@dataclass
class RecognitionResult:
    text: str
    tokens: list[int]
    final: bool  # False: a partial (first-pass CTC) result that later results replace
    start: float  # seconds from the start of the stream where this utterance began
    end: float  # seconds from the start of the stream decoded so far
    words: list[TimedUnit] | None = None  # final results with timestamps on (stream seconds)


class Recognizer:
    """One audio stream, decoded utterance after utterance (see the module docstring).

    cfg.chunk_size > 0 decodes every chunk of that many encoder frames as it arrives;
    -1 (full context) decodes each utterance once, at the end of input, without partials.
    With `lexicon` (a decode.lexicon.LexiconSearch) the search is ctc_lexicon_beam_search
    instead: partials are the words finished so far, and the final result is that search's
    (no rescoring), equal to `decode_batch` in that mode with the same chunk size.
    """

    def __init__(
        self,
        backend,
        tokenizer,
        cfg: DecodeConfig | None = None,
        feature_cfg: FeatureConfig | None = None,
        timestamps: bool = False,
        lexicon=None,
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.cfg = cfg or DecodeConfig()
        self.feature_cfg = feature_cfg or FeatureConfig()
        self.timestamps = timestamps
        self.lexicon = lexicon
        info = backend.info
        self.frame_shift = info.subsampling_rate * self.feature_cfg.frame_shift / 1000
        self._new_stream()

    def _new_stream(self) -> None:
        self.fbank = OnlineFbank(self.feature_cfg)
        self.stream = EncoderStream(
            self.backend.info, self.cfg.chunk_size, self.cfg.num_left_chunks
        )
        self.odd_byte = b""  # half of a 16-bit sample split across two pieces
        self.endpoint = Endpoint(self.cfg.endpoint, self.frame_shift)
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.stream.reset()
        self.endpoint.reset()
        if self.lexicon is not None:
            self.search = self.lexicon.stream()
        else:
            self.search = CtcPrefixBeamSearch(self.cfg.beam_size)
        self.enc_chunks: list[np.ndarray] = []  # (t, d) each
        self.ctc_chunks: list[np.ndarray] = []  # (t, V) each

    def accept_waveform(self, audio) -> list[RecognitionResult]:
        """Feed the next piece of audio (16 kHz mono): bytes of 16-bit little-endian PCM, or
        an int16 or float (in [-1, 1]) array. Returns a partial result per decoded chunk and
        a final result at each endpoint, in order."""
        self.feed(audio)
        return self.decode_ready()

    def finish(self) -> RecognitionResult:
        """End of input: decode what is left and return the final result of the last
        utterance. The recognizer then starts a new stream."""
        self.input_finished()
        self.decode_ready()
        result = self._final_result()
        self._new_stream()
        return result

    def feed(self, audio) -> None:
        """Add audio (as `accept_waveform`) without decoding it yet."""
        self.fbank.accept_waveform(self._samples(audio))
        self.stream.accept_feats(self.fbank.pop_frames())

    def input_finished(self) -> None:
        """No more audio: the rest becomes a last chunk (`finish` decodes it)."""
        self.fbank.input_finished()
        self.stream.accept_feats(self.fbank.pop_frames())
        self.stream.input_finished()

    def decode_ready(self) -> list[RecognitionResult]:
        """Decode every chunk that the audio fed so far completes."""
        return decode_ready_batch([self])[0]

    def _samples(self, audio) -> np.ndarray:
        if isinstance(audio, bytes | bytearray | memoryview):
            data = self.odd_byte + bytes(audio)
            even = len(data) - len(data) % 2
            self.odd_byte = data[even:]
            return pcm16_samples(data[:even])
        return float_samples(audio)

    def accept_encoder_output(self, out: np.ndarray) -> list[RecognitionResult]:
        """The encoder frames (t, d) of this stream's next chunk -> [a partial] or [a final]
        at an endpoint (nothing during the chunks of the end of input)."""
        log_probs = self.backend.ctc_log_probs(out[None])[0]  # (t, V)
        self.search.advance(log_probs)
        self.endpoint.advance(log_probs)
        self.enc_chunks.append(out)
        self.ctc_chunks.append(log_probs)
        if self.stream.end_of_input:
            return []
        if self.endpoint.detected(has_speech=bool(self.search.nbest()[0].tokens)):
            result = self._final_result()
            self._new_utterance()
            return [result]
        return [self._partial_result()]

    def _times(self) -> tuple[float, float]:
        start = self.stream.utterance_start * self.feature_cfg.frame_shift / 1000
        return round(start, 3), round(start + self.stream.offset * self.frame_shift, 3)

    def _partial_result(self) -> RecognitionResult:
        tokens = self.search.nbest()[0].tokens
        return RecognitionResult(self.tokenizer.decode(tokens), tokens, False, *self._times())

    def _final_result(self) -> RecognitionResult:
        start, end = self._times()
        if self.stream.offset == 0:
            return RecognitionResult("", [], True, start, end, [] if self.timestamps else None)
        if self.lexicon is not None:
            best = self.search.finish()
        else:
            enc = np.concatenate(self.enc_chunks)[None]
            (best,) = attention_rescoring(
                self.backend,
                [self.search.nbest()],
                enc,
                np.array([enc.shape[1]]),
                self.cfg.ctc_weight,
                self.cfg.reverse_weight,
            )
        words = None
        if self.timestamps:
            log_probs = np.concatenate(self.ctc_chunks)
            timed = timed_units(
                log_probs, best.tokens, self.tokenizer.units, self.frame_shift, end - start, start
            )
            words = [] if timed is None else timed[1]
        return RecognitionResult(
            self.tokenizer.decode(best.tokens), best.tokens, True, start, end, words
        )


def decode_ready_batch(recognizers: list[Recognizer]) -> list[list[RecognitionResult]]:
    """Decode the ready chunks of several recognizers over one backend, one encoder call
    per round for all streams with a ready chunk: per recognizer its results, in order, the
    same as each recognizer's own `decode_ready`."""
    results: list[list[RecognitionResult]] = [[] for _ in recognizers]
    if not recognizers:
        return results
    backend = recognizers[0].backend
    while True:
        outputs = encoder_step_batch(backend, [r.stream for r in recognizers])
        if all(out is None for out in outputs):
            return results
        for recognizer, out, found in zip(recognizers, outputs, results, strict=True):
            if out is not None:
                found += recognizer.accept_encoder_output(out)
