import math

import numpy as np
import pytest
import torch

from u2moe.backends.torch_backend import TorchBackend
from u2moe.data.features import compute_fbank
from u2moe.data.tokenizer import Tokenizer
from u2moe.decode.batch import decode_batch
from u2moe.decode.config import DecodeConfig, EndpointConfig
from u2moe.decode.lexicon import LexiconSearch, build_lm
from u2moe.decode.recognizer import Recognizer
from u2moe.errors import UserError
from u2moe.model.config import DecoderConfig, EncoderConfig, ModelConfig
from u2moe.model.u2 import U2Model

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]
NO_ENDPOINT = EndpointConfig(enabled=False)


def tiny_cfg():
    return ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1),
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = U2Model(tiny_cfg()).eval()
    with torch.no_grad():  # a peaky CTC head, as trained models have: no near-ties
        model.ctc.ctc_lo.weight.mul_(8.0)
    model.set_cmvn(torch.full((80,), 8.0), torch.full((80,), 0.25))
    return model


def synthetic_speech(seconds=2.3, seed=0):
    """Int16 samples: tones that glide and pulse, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pitch = 150 + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = 0.2 * wave + 0.01 * rng.standard_normal(len(t))
    return (wave * 32767 / np.abs(wave).max() * 0.5).astype(np.int16)


def random_pieces(samples, rng):
    start = 0
    while start < len(samples):
        size = int(rng.integers(1, 3000))
        yield samples[start : start + size]
        start += size


@pytest.fixture(scope="module")
def lexicon(tmp_path_factory):
    """(LM directory, its search) for the words of a few sentences in UNITS, generous per
    word so that even the untrained model's output holds some."""
    out = tmp_path_factory.mktemp("lm")
    build_lm(["ab cd", "e", "abc de e", "cd ab", "bad"], Tokenizer(UNITS), out)
    return str(out), LexiconSearch(out, Tokenizer(UNITS), beam_size=4, word_score=5.0)


@pytest.mark.parametrize(
    "chunk_size, left_chunks, mode",
    [
        (4, -1, "attention_rescoring"),
        (3, 1, "attention_rescoring"),
        (-1, -1, "attention_rescoring"),
        (4, -1, "ctc_lexicon_beam_search"),
        (-1, -1, "ctc_lexicon_beam_search"),
    ],
)
def test_pieces_of_any_size_give_the_whole_utterance_result(
    model, lexicon, chunk_size, left_chunks, mode
):
    lm_dir, lexicon = lexicon
    samples = synthetic_speech()
    cfg = DecodeConfig(
        modes=["ctc_prefix_beam_search", mode],
        beam_size=4,
        chunk_size=chunk_size,
        num_left_chunks=left_chunks,
        endpoint=NO_ENDPOINT,
        lm=lm_dir,
    )
    feats = compute_fbank(samples.astype(np.float32) / 32768)
    whole = decode_batch(
        TorchBackend(model), feats[None], torch.tensor([len(feats)]), cfg, lexicon
    ).hyps

    with_lexicon = lexicon if mode == "ctc_lexicon_beam_search" else None
    recognizer = Recognizer(TorchBackend(model), Tokenizer(UNITS), cfg, lexicon=with_lexicon)
    rng = np.random.default_rng(1)
    partials = []
    for piece in random_pieces(samples, rng):
        # alternate float arrays and raw 16-bit PCM bytes, split at odd byte offsets too
        if rng.random() < 0.5:
            partials += recognizer.accept_waveform(piece.astype(np.float32) / 32768)
        else:
            data = piece.tobytes()
            cut = int(rng.integers(0, len(data) + 1))
            partials += recognizer.accept_waveform(data[:cut])
            partials += recognizer.accept_waveform(data[cut:])
    final = recognizer.finish()

    assert final.final and not any(p.final for p in partials)
    assert final.tokens == whole[mode][0].tokens
    if with_lexicon is not None:
        assert final.text and set(final.text.split()) <= {"ab", "cd", "e", "abc", "de", "bad"}
    assert final.text == Tokenizer(UNITS).decode(final.tokens)
    if chunk_size > 0:  # one partial per full chunk; the last, shorter chunk ends the input
        window = (chunk_size - 1) * 4 + 7
        assert len(partials) == (len(feats) - window) // (4 * chunk_size) + 1
        assert [p.end for p in partials] == pytest.approx(
            [0.04 * chunk_size * (i + 1) for i in range(len(partials))]
        )
    else:  # full context: nothing to show before the end
        assert partials == []
    # the recognizer starts over: the same audio again gives the same result
    recognizer.accept_waveform(samples)
    again = recognizer.finish()
    assert (again.tokens, again.start) == (final.tokens, 0.0)


class ScriptedCtc(U2Model):
    """The tiny model with CTC posteriors from a script: speech spikes and silence."""

    def __init__(self, spikes: dict[int, int], frames: int):
        super().__init__(tiny_cfg())
        script = torch.full((frames, len(UNITS)), math.log(0.01 / (len(UNITS) - 2)))
        script[:, 0] = math.log(0.99)  # blank: silence
        for frame, token in spikes.items():
            script[frame] = math.log(0.01 / (len(UNITS) - 2))
            script[frame, token] = math.log(0.99)
        script[:, -1] = -1e4  # never sos/eos
        self.script = script.log_softmax(-1)
        self.frame = 0

    def ctc_log_probs(self, enc):
        out = self.script[self.frame : self.frame + enc.size(1)]
        self.frame += enc.size(1)
        return out.unsqueeze(0)


def test_endpoint_after_trailing_silence_then_next_utterance():
    # encoder frames of 40 ms: "ab c" spoken in 0.2-0.6 s, "de" at 2.4-2.6 s
    model = ScriptedCtc({5: 2, 10: 3, 12: 7, 15: 4, 60: 5, 65: 6}, frames=200).eval()
    endpoint = EndpointConfig(silence_after_speech_ms=1000, silence_before_speech_ms=5000)
    # a large ctc_weight: the random decoders must not overrule the scripted CTC
    cfg = DecodeConfig(beam_size=4, chunk_size=4, ctc_weight=100.0, endpoint=endpoint)
    recognizer = Recognizer(TorchBackend(model), Tokenizer(UNITS), cfg, timestamps=True)
    results = recognizer.accept_waveform(synthetic_speech(seconds=3.5))
    finals = [r for r in results if r.final]
    assert len(finals) == 1
    first = finals[0]
    assert first.text == "ab c"
    # the first chunk whose trailing silence (frames 16...) reaches 1000 ms ends at frame 44
    assert (first.start, first.end) == (0.0, 1.76)
    assert [w.text for w in first.words] == ["ab", "c"]
    assert [(w.start, w.end) for w in first.words] == [(0.1, 0.44), (0.54, 0.7)]
    later = results[results.index(first) + 1 :]
    assert later and all(not r.final and r.start == 1.76 for r in later)
    second = recognizer.finish()
    assert (second.text, second.start) == ("de", 1.76)
    assert [(w.start, w.end) for w in second.words] == [(2.3, 2.7)]


def test_endpoint_rules_for_silence_alone_and_long_utterances():
    model = ScriptedCtc({}, frames=200).eval()
    silence = EndpointConfig(silence_before_speech_ms=600)
    cfg = DecodeConfig(beam_size=2, chunk_size=4, endpoint=silence)
    results = Recognizer(TorchBackend(model), Tokenizer(UNITS), cfg).accept_waveform(
        synthetic_speech(2.0)
    )
    finals = [r for r in results if r.final]
    # 0.64 s (the first chunk end past 600 ms) of silence, then again from there on
    assert [(r.start, r.end, r.text) for r in finals] == [
        (0.0, 0.64, ""),
        (0.64, 1.28, ""),
        (1.28, 1.92, ""),
    ]

    model = ScriptedCtc({t: 2 + t % 3 for t in range(0, 200, 2)}, frames=200).eval()
    cfg = DecodeConfig(beam_size=2, chunk_size=4, endpoint=EndpointConfig(max_utterance_ms=800))
    results = Recognizer(TorchBackend(model), Tokenizer(UNITS), cfg).accept_waveform(
        synthetic_speech(2.0)
    )
    assert [r.end - r.start for r in results if r.final] == pytest.approx([0.8, 0.8])


def test_recognizer_rejects_what_is_not_mono_audio(model):
    recognizer = Recognizer(TorchBackend(model), Tokenizer(UNITS), DecodeConfig(chunk_size=4))
    with pytest.raises(UserError, match="mono"):
        recognizer.accept_waveform(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(UserError, match="sample type"):
        recognizer.accept_waveform(np.zeros(100, dtype=np.int32) + 1j)
