import numpy as np
import pytest
import torch

from u2moe.backends.torch_backend import TorchBackend
from u2moe.data.tokenizer import Tokenizer
from u2moe.decode.config import DecodeConfig, EndpointConfig
from u2moe.decode.recognizer import Recognizer, decode_ready_batch
from u2moe.decode.search import ctc_greedy_search
from u2moe.decode.stream import EncoderStream, encoder_step_batch
from u2moe.model.config import DecoderConfig, EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.subsampling import Conv2dSubsampling
from u2moe.model.u2 import U2Model
from u2moe.model.window import ChunkWindows

UNITS = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "\u2581", "<sos/eos>"]
DENSE = FFNConfig(type="dense")
MOE = FFNConfig(type="moe", n_experts=4, top_k=2)


def tiny_backend(ffn=DENSE) -> TorchBackend:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5, ffn=ffn),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1),
    )
    model = U2Model(cfg)
    with torch.no_grad():  # a peaky CTC head, as trained models have: no near-ties
        model.ctc.ctc_lo.weight.mul_(8.0)
    model.set_cmvn(torch.randn(80), torch.rand(80) + 0.5)
    return TorchBackend(model.eval())


# Three streams: (first round, fbank frames), fed 23 frames per round from their first round.
SCHEDULE = [(0, 260), (2, 170), (5, 95)]
PIECE = 23


def run_streams(backend, streams, feats, batched):
    """Feed the streams round by round; per stream its encoder outputs, chunk by chunk."""
    outputs = [[] for _ in streams]
    for round_ in range(20):
        for stream, (first, _), frames in zip(streams, SCHEDULE, feats, strict=True):
            start = (round_ - first) * PIECE
            if start < 0 or stream.end_of_input:
                continue
            stream.accept_feats(frames[start : start + PIECE])
            if start + PIECE >= len(frames):
                stream.input_finished()
        groups = [streams] if batched else [[s] for s in streams]
        for group in groups:
            while any(stream.ready() for stream in group):
                results = encoder_step_batch(backend, group)
                for stream, out in zip(group, results, strict=True):
                    if out is not None:
                        outputs[streams.index(stream)].append(out)
    return outputs


@pytest.mark.parametrize("ffn", [DENSE, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("num_left_chunks", [-1, 1])
def test_batched_streams_give_each_stream_what_it_gets_alone(ffn, num_left_chunks):
    backend = tiny_backend(ffn)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((n, 80)).astype(np.float32) for _, n in SCHEDULE]

    def streams():
        return [EncoderStream(backend.info, 3, num_left_chunks) for _ in SCHEDULE]

    batched = run_streams(backend, streams(), feats, batched=True)
    alone = run_streams(backend, streams(), feats, batched=False)
    for together, single, frames in zip(batched, alone, feats, strict=True):
        assert [len(c) for c in together] == [len(c) for c in single]
        np.testing.assert_allclose(np.concatenate(together), np.concatenate(single), atol=1e-5)
        # and both equal the masked full forward with the same chunking
        full, lengths = backend.encode(frames[None], np.array([len(frames)]), 3, num_left_chunks)
        np.testing.assert_allclose(np.concatenate(single), full[0], atol=1e-5)
        together_ctc = backend.ctc_log_probs(np.concatenate(together)[None])
        single_ctc = backend.ctc_log_probs(np.concatenate(single)[None])
        length = np.array([len(single_ctc[0])])
        (together_best,) = ctc_greedy_search(together_ctc, length)
        (single_best,) = ctc_greedy_search(single_ctc, length)
        assert together_best.tokens == single_best.tokens


def test_stream_reset_starts_a_new_utterance_on_the_same_audio():
    backend = tiny_backend()
    frames = np.random.default_rng(1).standard_normal((120, 80)).astype(np.float32)
    stream = EncoderStream(backend.info, 4, 2)
    stream.accept_feats(frames)
    first = stream.step(backend)
    stream.reset()  # as at an endpoint: the rest is a new utterance from offset 0
    assert (stream.offset, stream.att_cache.shape[2], stream.utterance_start) == (0, 0, 16)
    rest = stream.encode_all(backend)
    fresh = EncoderStream(backend.info, 4, 2)
    fresh.accept_feats(frames[16:])
    np.testing.assert_allclose(rest, fresh.encode_all(backend), atol=1e-6)
    assert first.shape == (4, 32) and stream.offset == len(rest)


@pytest.mark.parametrize("rate", [4, 6, 8])
def test_window_output_frames_follow_the_subsampling(rate):
    embed = Conv2dSubsampling(80, 8, rate, pos_enc=None)
    windows = ChunkWindows(4, rate, embed.right_context)
    for n in range(0, 80):
        assert windows.output_frames(n) == embed.output_length(n)
    spans = windows.chunks(100)
    assert spans[0] == (0, windows.window) and spans[-1][1] <= 100
    assert 100 - (spans[-1][0] + windows.stride) < windows.context  # too few left for more
    assert all(b[0] - a[0] == windows.stride for a, b in zip(spans, spans[1:], strict=False))


def synthetic_audio(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = np.sin(2 * np.pi * (180 + 60 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.3 * wave + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_recognizers_decoded_in_a_batch_give_what_each_gives_alone():
    backend = tiny_backend()
    endpoint = EndpointConfig(max_utterance_ms=800)
    cfg = DecodeConfig(beam_size=3, chunk_size=4, num_left_chunks=2, endpoint=endpoint)
    audio = [synthetic_audio(s, i) for i, s in enumerate([2.4, 1.3, 1.9])]

    def recognizers():
        return [Recognizer(backend, Tokenizer(UNITS), cfg, timestamps=True) for _ in audio]

    alone = []
    for recognizer, samples in zip(recognizers(), audio, strict=True):
        results = recognizer.accept_waveform(samples)
        alone.append(results + [recognizer.finish()])
    together = recognizers()
    for recognizer, samples in zip(together, audio, strict=True):
        recognizer.feed(samples)
    batched = decode_ready_batch(together)
    for recognizer, results in zip(together, batched, strict=True):
        recognizer.input_finished()
        results += decode_ready_batch([recognizer])[0] + [recognizer.finish()]
    assert [len(r) for r in batched] == [len(r) for r in alone]
    for got, want in zip(batched, alone, strict=True):
        assert [(r.tokens, r.final, r.start, r.end) for r in got] == [
            (r.tokens, r.final, r.start, r.end) for r in want
        ]
    assert any(r.final for r in alone[0][:-1])  # an endpoint inside the stream
