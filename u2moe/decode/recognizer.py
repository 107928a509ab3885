"""Streaming two-pass recognition: audio in pieces, a partial result per chunk, a final one
rescored by both attention decoders at each endpoint and at the end of input.

    recognizer = Recognizer(model, tokenizer, DecodeConfig(chunk_size=16))
    for piece in pieces:                       # 16-bit PCM bytes, int16 or float samples
        for result in recognizer.accept_waveform(piece):
            print(result.final, result.text)   # partials, and finals at endpoints
    print(recognizer.finish().text)            # the last final; ready for the next stream

Per chunk the encoder runs `forward_chunk` with its attention and convolution caches (WeNet's
layout), and the CTC prefix beam search advances over the chunk's frames, so the final
result equals decoding the whole utterance with the same chunk size. An endpoint is a run
of trailing frames whose CTC blank probability exceeds a threshold (config `endpoint`).
With a lexicon search (`Recognizer(..., lexicon=...)`) the lexicon and word LM take the
place of both passes.
"""

from dataclasses import dataclass

import numpy as np
import torch

from u2moe.data.audio import AudioError, check_finite
from u2moe.data.config import FeatureConfig
from u2moe.data.features import OnlineFbank
from u2moe.decode.config import DecodeConfig
from u2moe.decode.search import CtcPrefixBeamSearch, attention_rescoring
from u2moe.decode.timestamps import TimedUnit, ctc_spikes, token_times, word_times
from u2moe.model.mask import decoding_chunk

INT16_SCALE = 32768.0


def float_samples(audio, name: str = "audio") -> np.ndarray:
    """1-D int16 or float samples -> float32 in [-1, 1]; AudioError for anything else."""
    samples = np.asarray(audio)
    if samples.ndim != 1:
        raise AudioError(name, "not mono audio", f"samples of shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / INT16_SCALE
    if np.issubdtype(samples.dtype, np.floating):
        return check_finite(samples.astype(np.float32), name)
    raise AudioError(name, "unsupported sample type", f"{samples.dtype}; use int16 or float")


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
        model,
        tokenizer,
        cfg: DecodeConfig | None = None,
        feature_cfg: FeatureConfig | None = None,
        timestamps: bool = False,
        lexicon=None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg or DecodeConfig()
        self.feature_cfg = feature_cfg or FeatureConfig()
        self.timestamps = timestamps
        self.lexicon = lexicon
        encoder = model.encoder
        self.chunk_size, num_left_chunks = decoding_chunk(
            encoder.chunk_cfg, self.cfg.chunk_size, self.cfg.num_left_chunks
        )
        # attention cache kept between chunks, in encoder frames (< 0: all)
        self.required_cache_size = self.chunk_size * num_left_chunks if num_left_chunks >= 0 else -1
        self.context = encoder.right_context + 1  # fbank frames one encoder frame needs
        self.stride = encoder.subsampling_rate * self.chunk_size
        self.window = (self.chunk_size - 1) * encoder.subsampling_rate + self.context
        self.frame_shift = encoder.subsampling_rate * self.feature_cfg.frame_shift / 1000
        self.device = next(model.parameters()).device
        self._new_stream()

    def _new_stream(self) -> None:
        self.fbank = OnlineFbank(self.feature_cfg)
        self.feats = torch.zeros(0, self.feature_cfg.num_mel_bins)  # frames not yet consumed
        self.consumed = 0  # fbank frames of the stream dropped from `feats`
        self.odd_byte = b""  # half of a 16-bit sample split across two pieces
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.utterance_start = self.consumed  # fbank frame where this utterance begins
        self.offset = 0  # encoder frames decoded in this utterance
        self.att_cache = torch.zeros(0, 0, 0, 0, device=self.device)
        self.cnn_cache = torch.zeros(0, 0, 0, 0, device=self.device)
        if self.lexicon is not None:
            self.search = self.lexicon.stream()
        else:
            self.search = CtcPrefixBeamSearch(self.cfg.beam_size)
        self.enc_chunks: list[torch.Tensor] = []  # (1, t, d) each
        self.ctc_chunks: list[torch.Tensor] = []  # (t, V) each
        self.trailing_silence = 0  # encoder frames

    def accept_waveform(self, audio) -> list[RecognitionResult]:
        """Feed the next piece of audio (16 kHz mono): bytes of 16-bit little-endian PCM, or
        an int16 or float (in [-1, 1]) array. Returns a partial result per decoded chunk and
        a final result at each endpoint, in order."""
        self.fbank.accept_waveform(self._samples(audio))
        return self._decode_ready(end_of_input=False)

    def finish(self) -> RecognitionResult:
        """End of input: decode what is left and return the final result of the last
        utterance. The recognizer then starts a new stream."""
        self.fbank.input_finished()
        self._decode_ready(end_of_input=True)
        result = self._final_result()
        self._new_stream()
        return result

    def _samples(self, audio) -> np.ndarray:
        if isinstance(audio, bytes | bytearray | memoryview):
            data = self.odd_byte + bytes(audio)
            even = len(data) - len(data) % 2
            self.odd_byte = data[even:]
            return np.frombuffer(data[:even], dtype="<i2").astype(np.float32) / INT16_SCALE
        return float_samples(audio)

    @torch.inference_mode()
    def _decode_ready(self, end_of_input: bool) -> list[RecognitionResult]:
        frames = self.fbank.pop_frames()
        if frames.size(0) > 0:
            self.feats = torch.cat([self.feats, frames])
        results = []
        while True:
            available = self.feats.size(0)
            if self.chunk_size > 0 and available >= self.window:
                chunk, step = self.feats[: self.window], self.stride
            elif end_of_input and available >= self.context:
                chunk, step = self.feats, available  # the last, shorter chunk
            else:
                break
            self.feats = self.feats[step:]
            self.consumed += step
            self._decode_chunk(chunk)
            if end_of_input:
                continue
            if self._endpoint():
                results.append(self._final_result())
                self._new_utterance()
            else:
                results.append(self._partial_result())
        return results

    def _decode_chunk(self, chunk: torch.Tensor) -> None:
        out, self.att_cache, self.cnn_cache = self.model.encoder.forward_chunk(
            chunk.unsqueeze(0).to(self.device),
            self.offset,
            self.required_cache_size,
            self.att_cache,
            self.cnn_cache,
        )
        self.offset += out.size(1)
        log_probs = self.model.ctc_log_probs(out)[0].cpu()  # (t, V)
        self.search.advance(log_probs)
        self.enc_chunks.append(out)
        self.ctc_chunks.append(log_probs)
        speech = (log_probs[:, 0].exp() <= self.cfg.endpoint.blank_threshold).nonzero()
        if len(speech) == 0:
            self.trailing_silence += log_probs.size(0)
        else:
            self.trailing_silence = log_probs.size(0) - 1 - int(speech[-1])

    def _endpoint(self) -> bool:
        rules = self.cfg.endpoint
        if not rules.enabled:
            return False
        silence_ms = self.trailing_silence * self.frame_shift * 1000
        if self.offset * self.frame_shift * 1000 >= rules.max_utterance_ms:
            return True
        if self.search.nbest()[0].tokens:
            return silence_ms >= rules.silence_after_speech_ms
        return silence_ms >= rules.silence_before_speech_ms

    def _times(self) -> tuple[float, float]:
        start = self.utterance_start * self.feature_cfg.frame_shift / 1000
        return round(start, 3), round(start + self.offset * self.frame_shift, 3)

    def _partial_result(self) -> RecognitionResult:
        tokens = self.search.nbest()[0].tokens
        return RecognitionResult(self.tokenizer.decode(tokens), tokens, False, *self._times())

    def _final_result(self) -> RecognitionResult:
        start, end = self._times()
        if self.offset == 0:
            return RecognitionResult("", [], True, start, end, [] if self.timestamps else None)
        if self.lexicon is not None:
            best = self.search.finish()
        else:
            enc = torch.cat(self.enc_chunks, dim=1)
            lengths = torch.tensor([enc.size(1)], device=self.device)
            (best,) = attention_rescoring(
                self.model,
                [self.search.nbest()],
                enc,
                lengths,
                self.cfg.ctc_weight,
                self.cfg.reverse_weight,
            )
        words = None
        if self.timestamps:
            spikes = ctc_spikes(torch.cat(self.ctc_chunks), best.tokens)
            times = token_times(spikes, self.frame_shift, end - start)
            pieces = [self.tokenizer.units[i] for i in best.tokens]
            words = [
                TimedUnit(w.text, round(start + w.start, 3), round(start + w.end, 3))
                for w in word_times(pieces, times)
            ]
        return RecognitionResult(
            self.tokenizer.decode(best.tokens), best.tokens, True, start, end, words
        )
