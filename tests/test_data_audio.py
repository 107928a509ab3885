"""Audio input: formats, resampling, stereo mixdown, segments, pipes, and broken files."""

import io
import os

import numpy as np
import pytest
import soundfile as sf

from u2moe.data.audio import AudioError, check_finite, load_audio, source_name
from u2moe.data.augment import speed_perturb


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_resampled_to_16k(tmp_path, rate):
    path = tmp_path / "a.wav"
    sf.write(path, tone(rate, 1.0), rate, subtype="PCM_16")
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 16000) <= 1
    assert peak_hz(samples) == pytest.approx(440, abs=2)
    assert np.abs(samples).max() == pytest.approx(0.5, abs=0.02)


def test_stereo_mixed_down(tmp_path):
    left, right = tone(16000, 0.5, 300), tone(16000, 0.5, 700)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "fmt", "subtype"), [("a.flac", "FLAC", "PCM_16"), ("a.ogg", "OGG", "VORBIS")]
)
def test_flac_and_ogg(tmp_path, name, fmt, subtype):
    sf.write(tmp_path / name, tone(22050, 0.5), 22050, format=fmt, subtype=subtype)
    samples = load_audio(tmp_path / name)
    assert abs(len(samples) - 8000) <= 1
    assert peak_hz(samples) == pytest.approx(440, abs=3)


def test_segment_and_pipe(tmp_path):
    wave = tone(16000, 2.0)
    sf.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav", 0.5, 1.25), wave[8000:20000])
    piped = load_audio(f"cat {tmp_path / 'a.wav'} |", 0.5)
    np.testing.assert_array_equal(piped, wave[8000:])
    with pytest.raises(AudioError, match="audio command failed"):
        load_audio("false |")


def test_broken_files_name_the_problem(tmp_path):
    sf.write(tmp_path / "good.wav", tone(16000, 1.0), 16000, subtype="PCM_16")
    data = (tmp_path / "good.wav").read_bytes()
    cases = {
        "missing.wav": (None, "audio file not found"),
        "empty.wav": (b"", "empty audio"),
        "cut_header.wav": (data[:30], "unreadable audio"),
        "cut_data.wav": (data[: len(data) // 2], "truncated audio"),
        "noise.wav": (np.random.default_rng(0).bytes(4000), "unreadable audio"),
        "no_samples.wav": (None, "empty audio"),
    }
    sf.write(tmp_path / "no_samples.wav", np.zeros(0, np.float32), 16000)
    for name, (content, reason) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError) as error:
            load_audio(tmp_path / name)
        assert error.value.reason == reason, name
        assert name in str(error.value)


def test_speed_perturb_changes_length_and_pitch():
    wave = tone(16000, 1.0, 500)
    fast, slow = speed_perturb(wave, 1.1), speed_perturb(wave, 0.9)
    assert abs(len(fast) - 16000 / 1.1) <= 1 and abs(len(slow) - 16000 / 0.9) <= 1
    assert peak_hz(fast) == pytest.approx(550, abs=3) and peak_hz(slow) == pytest.approx(450, abs=3)
    assert speed_perturb(wave, 1.0) is wave


def test_non_finite_samples_are_an_error_naming_the_file(tmp_path):
    for bad in (np.nan, np.inf):
        wave = tone(16000, 0.5)
        wave[100] = bad
        sf.write(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")
        with pytest.raises(AudioError, match="bad.wav: non-finite samples") as error:
            load_audio(tmp_path / "bad.wav")
        assert error.value.reason == "non-finite samples"
    with pytest.raises(AudioError, match="mic: non-finite samples"):
        check_finite(np.array([0.1, np.nan], np.float32), "mic")


def test_int16_stored_as_float_is_warned_about(tmp_path, caplog):
    sf.write(tmp_path / "loud.wav", tone(16000, 0.5) * 32768, 16000, subtype="FLOAT")
    with caplog.at_level("WARNING"):
        load_audio(tmp_path / "loud.wav")
    assert "loud.wav" in caplog.text and "int16 values stored as float" in caplog.text
    caplog.clear()
    sf.write(tmp_path / "fine.wav", tone(16000, 0.5) * 1.5, 16000, subtype="FLOAT")
    with caplog.at_level("WARNING"):
        load_audio(tmp_path / "fine.wav")
    assert caplog.text == ""


def test_segments_outside_the_audio_are_errors(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000, 2.0), 16000, subtype="PCM_16")
    pipe = f"cat {tmp_path / 'a.wav'} |"
    for source in (tmp_path / "a.wav", pipe):
        assert len(load_audio(source, 1.0, 2.005)) == 16000  # rounding past the end is the end
        for start, end, reason in [
            (1.0, 2.5, "segment outside the audio"),
            (2.5, None, "segment outside the audio"),
            (-0.5, 1.0, "invalid segment"),
            (1.5, 1.0, "invalid segment"),
            (1.0, 1.0, "invalid segment"),
            (float("nan"), None, "invalid segment"),
            (0.5, float("inf"), "invalid segment"),
        ]:
            with pytest.raises(AudioError) as error:
                load_audio(source, start, end)
            assert error.value.reason == reason, (source, start, end)


def test_directories_fifos_and_file_objects_are_named_for_what_they_are(tmp_path):
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(AudioError, match="folder: not an audio file \\(a directory\\)"):
        load_audio(tmp_path / "folder")
    with pytest.raises(AudioError, match="pipe: not an audio file \\(a FIFO\\)"):
        load_audio(tmp_path / "pipe")
    sf.write(tmp_path / "a.wav", tone(16000, 0.5), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(
        load_audio(io.BytesIO((tmp_path / "a.wav").read_bytes())), load_audio(tmp_path / "a.wav")
    )
    with pytest.raises(AudioError) as error:
        load_audio(io.BytesIO(b"not audio"))
    assert str(error.value).startswith("<BytesIO>: unreadable audio")
    assert source_name(io.BytesIO()) == "<BytesIO>"
    with (tmp_path / "a.wav").open("rb") as f:
        assert source_name(f) == str(tmp_path / "a.wav")
