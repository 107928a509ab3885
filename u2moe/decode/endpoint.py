"""Endpointing: when a streaming recognizer closes an utterance on its own (WeNet's rules).

A CTC frame is silence when its blank probability exceeds `blank_threshold`; the rules
(`EndpointConfig`) look at the run of trailing silence and the utterance's length.
Torch-free: log-probs are numpy arrays.
"""

import numpy as np

from u2moe.decode.config import EndpointConfig


class Endpoint:
    """The endpoint state of one utterance, fed the CTC log-probs chunk by chunk.

    frame_shift: seconds per CTC frame (the encoder's subsampling times the fbank shift).
    """

    def __init__(self, cfg: EndpointConfig, frame_shift: float):
        self.cfg = cfg
        self.frame_shift = frame_shift
        self.reset()

    def reset(self) -> None:
        """A new utterance."""
        self.frames = 0  # CTC frames of the utterance
        self.trailing_silence = 0  # of which the last ones are silence

    def advance(self, log_probs: np.ndarray) -> None:
        """Feed the CTC log-probs (t, V) of the next frames (blank is id 0)."""
        speech = np.flatnonzero(np.exp(log_probs[:, 0]) <= self.cfg.blank_threshold)
        if len(speech) == 0:
            self.trailing_silence += len(log_probs)
        else:
            self.trailing_silence = len(log_probs) - 1 - int(speech[-1])
        self.frames += len(log_probs)

    def detected(self, has_speech: bool) -> bool:
        """Whether the utterance ends here; has_speech: the search has decoded something."""
        rules = self.cfg
        if not rules.enabled:
            return False
        if self.frames * self.frame_shift * 1000 >= rules.max_utterance_ms:
            return True
        silence_ms = self.trailing_silence * self.frame_shift * 1000
        if has_speech:
            return silence_ms >= rules.silence_after_speech_ms
        return silence_ms >= rules.silence_before_speech_ms
