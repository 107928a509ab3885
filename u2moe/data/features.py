"""Kaldi-compatible log-mel filterbank features, one code path for whole utterances and streams.

The options are those WeNet passes to `torchaudio.compliance.kaldi.fbank` (povey window,
pre-emphasis 0.97, DC removal, snip_edges, energy_floor 0, natural-log power mel energies)
and samples are scaled to the int16 range first, so models imported from WeNet see the
features they were trained on. kaldi-native-fbank computes them; frames are numpy float32
arrays (no torch: the ONNX runtime shares this module).
"""

import kaldi_native_fbank as knf
import numpy as np

from u2moe.data.audio import INT16_SCALE, SAMPLE_RATE
from u2moe.data.config import FeatureConfig


def fbank_options(cfg: FeatureConfig, dither: float) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = cfg.frame_length
    opts.frame_opts.frame_shift_ms = cfg.frame_shift
    opts.frame_opts.dither = dither
    opts.frame_opts.snip_edges = True
    opts.energy_floor = 0.0
    opts.mel_opts.num_bins = cfg.num_mel_bins
    return opts


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames that `num_samples` samples give (snip_edges: only whole windows)."""
    window = int(SAMPLE_RATE * cfg.frame_length / 1000)
    shift = int(SAMPLE_RATE * cfg.frame_shift / 1000)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


class OnlineFbank:
    """Fbank of audio that arrives in pieces; the frames equal those of the whole utterance.

    fbank = OnlineFbank()
    for piece in pieces:                  # float32 (N,) at 16 kHz, any N
        fbank.accept_waveform(piece)
        frames = fbank.pop_frames()       # (n, num_mel_bins), n >= 0
    fbank.input_finished()
    """

    def __init__(self, cfg: FeatureConfig | None = None, dither: float = 0.0):
        self.cfg = cfg or FeatureConfig()
        self._fbank = knf.OnlineFbank(fbank_options(self.cfg, dither))
        self._next = 0  # index of the first frame not yet returned

    def accept_waveform(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32) * INT16_SCALE
        self._fbank.accept_waveform(SAMPLE_RATE, samples)

    def input_finished(self) -> None:
        self._fbank.input_finished()

    def pop_frames(self) -> np.ndarray:
        """Frames completed since the last call, (n, num_mel_bins) float32."""
        ready = self._fbank.num_frames_ready
        if ready == self._next:
            return np.zeros((0, self.cfg.num_mel_bins), dtype=np.float32)
        # get_frame returns views into knf's buffer: copy them before pop frees it.
        frames = np.stack([self._fbank.get_frame(i) for i in range(self._next, ready)])
        if self.cfg.log_floor is not None:
            np.maximum(frames, np.float32(self.cfg.log_floor), out=frames)
        self._fbank.pop(ready - self._next)
        self._next = ready
        return frames


def compute_fbank(
    samples: np.ndarray, dither: float = 0.0, cfg: FeatureConfig | None = None
) -> np.ndarray:
    """Fbank of a whole utterance: float32 (N,) at 16 kHz -> (T, num_mel_bins)."""
    fbank = OnlineFbank(cfg, dither)
    fbank.accept_waveform(samples)
    fbank.input_finished()
    return fbank.pop_frames()
