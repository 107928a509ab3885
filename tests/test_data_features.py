"""Fbank: Kaldi convention (checked against an independent NumPy implementation), int16
scaling as WeNet, streaming pieces equal to the whole utterance."""

import numpy as np
import pytest

from u2moe.data.config import FeatureConfig
from u2moe.data.features import INT16_SCALE, OnlineFbank, compute_fbank, num_frames


def kaldi_fbank_reference(wave: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """Kaldi's compute-fbank-feats with WeNet's options, in float64: snip_edges, DC removal,
    pre-emphasis 0.97, povey window, 512-point power spectrum, mel bins 20 Hz-8 kHz, log."""
    rate, window, shift, fft = 16000, 400, 160, 512
    count = 1 + (len(wave) - window) // shift
    frames = np.stack([wave[i * shift : i * shift + window] for i in range(count)]).astype(float)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], 1)
    frames *= (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / (window - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames, fft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    delta = (high - low) / (num_bins + 1)
    bin_mels = mel(np.arange(fft // 2) * rate / fft)
    banks = np.zeros((num_bins, fft // 2))
    for b in range(num_bins):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        rising = (bin_mels > left) & (bin_mels <= center)
        falling = (bin_mels > center) & (bin_mels < right)
        banks[b, rising] = (bin_mels[rising] - left) / (center - left)
        banks[b, falling] = (right - bin_mels[falling]) / (right - center)
    energies = power[:, : fft // 2] @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_matches_kaldi_reference_on_int16_scale():
    wave = speechlike(1.0)
    feats = compute_fbank(wave)  # float samples in [-1, 1]
    reference = kaldi_fbank_reference(wave.astype(np.float64) * INT16_SCALE)
    assert feats.shape == (98, 80) == reference.shape
    np.testing.assert_allclose(feats, reference, atol=2e-3, rtol=1e-4)
    # Scaling matters: without it every bin would be 2 ln(32768) ~ 20.8 lower.
    unscaled = kaldi_fbank_reference(wave.astype(np.float64))
    assert np.median(feats - unscaled) == pytest.approx(2 * np.log(INT16_SCALE), abs=0.01)


@pytest.mark.parametrize("piece", [1, 159, 160, 401, 4000])
def test_streaming_pieces_equal_whole(piece):
    wave = speechlike(0.7, seed=1)
    whole = compute_fbank(wave)
    fbank = OnlineFbank()
    parts = []
    for start in range(0, len(wave), piece):
        fbank.accept_waveform(wave[start : start + piece])
        parts.append(fbank.pop_frames())
    fbank.input_finished()
    parts.append(fbank.pop_frames())
    assert np.array_equal(np.concatenate(parts), whole)


def test_frame_count_and_short_input():
    cfg = FeatureConfig()
    for n in (0, 399, 400, 559, 560, 16000):
        assert compute_fbank(np.zeros(n, np.float32) + 0.01).shape == (num_frames(n, cfg), 80)
    assert num_frames(399, cfg) == 0 and num_frames(560, cfg) == 2


def test_dither_only_when_asked():
    wave = speechlike(0.3)
    assert np.array_equal(compute_fbank(wave), compute_fbank(wave))
    assert not np.array_equal(compute_fbank(wave, dither=1.0), compute_fbank(wave))


def test_options_follow_config():
    wave = speechlike(0.5)
    feats = compute_fbank(wave, cfg=FeatureConfig(num_mel_bins=40, frame_shift=20.0))
    assert feats.shape == (num_frames(len(wave), FeatureConfig(frame_shift=20.0)), 40)


def test_log_floor_raises_digital_silence_only():
    # Speech, then digital zeros: the silent frames sit at log(eps) = -15.9 unless floored.
    wave = np.concatenate([speechlike(0.5), np.zeros(8000, np.float32)])
    plain = compute_fbank(wave)
    floored = compute_fbank(wave, cfg=FeatureConfig(log_floor=3.0))
    assert plain.min() < -15
    assert floored.min() == 3.0
    assert np.array_equal(floored, plain.clip(min=3.0))
    fbank = OnlineFbank(FeatureConfig(log_floor=3.0))  # the streaming path floors the same
    fbank.accept_waveform(wave)
    fbank.input_finished()
    assert np.array_equal(fbank.pop_frames(), floored)
