import pytest
import torch

from u2moe.model.config import EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.encoder import ConformerEncoder

DENSE = FFNConfig(type="dense")
MOE = FFNConfig(type="moe", n_experts=4, top_k=2)


def tiny_encoder(**options) -> ConformerEncoder:
    """A random 2-block causal encoder in eval mode, with a non-trivial CMVN."""
    encoder_options = dict(d_model=32, n_heads=4, d_ff=48, n_layers=2, kernel_size=5)
    encoder_options.update(options)
    torch.manual_seed(0)
    encoder = ConformerEncoder(ModelConfig(vocab_size=10, encoder=EncoderConfig(**encoder_options)))
    encoder.global_cmvn.set_stats(torch.randn(80), torch.rand(80) + 0.5)
    return encoder.eval()


def assert_streaming_equals_masked_forward(encoder, chunk_size, num_left_chunks, frames=203):
    torch.manual_seed(1)
    feats = torch.randn(1, frames, 80)
    with torch.no_grad():
        full, _ = encoder(feats, torch.tensor([frames]), chunk_size, num_left_chunks)
        streamed, mask = encoder.forward_chunk_by_chunk(feats, chunk_size, num_left_chunks)
    assert streamed.shape == full.shape and mask.shape == (1, 1, full.size(1))
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ffn", [DENSE, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@pytest.mark.parametrize("num_left_chunks", [-1, 2])
def test_chunk_by_chunk_equals_chunk_masked_forward(ffn, chunk_size, num_left_chunks):
    assert_streaming_equals_masked_forward(tiny_encoder(ffn=ffn), chunk_size, num_left_chunks)


@pytest.mark.parametrize(
    "options",
    [
        dict(subsampling=6),
        dict(subsampling=8),
        dict(conv_norm="batch_norm", kernel_size=8),
        dict(macaron=False, activation="relu"),
        dict(use_conv=False),
    ],
    ids=["x6", "x8", "batch_norm", "no_macaron", "no_conv"],
)
def test_chunk_by_chunk_equals_forward_for_other_structures(options):
    assert_streaming_equals_masked_forward(tiny_encoder(**options), 3, 1, frames=150)


def test_no_left_chunks_means_no_attention_cache():
    assert_streaming_equals_masked_forward(tiny_encoder(), 4, 0)


def test_cache_layout_and_bounded_size():
    encoder = tiny_encoder(kernel_size=7)
    chunk_size, left = 4, 2
    window = (chunk_size - 1) * encoder.subsampling_rate + encoder.right_context + 1
    stride = chunk_size * encoder.subsampling_rate
    att_cache, cnn_cache = torch.zeros(0, 0, 0, 0), torch.zeros(0, 0, 0, 0)
    feats = torch.randn(1, 200, 80)
    offset, cache_sizes = 0, []
    with torch.no_grad():
        for start in range(0, 200 - window + 1, stride):
            out, att_cache, cnn_cache = encoder.forward_chunk(
                feats[:, start : start + window], offset, chunk_size * left, att_cache, cnn_cache
            )
            assert out.shape == (1, chunk_size, 32)
            offset += out.size(1)
            cache_sizes.append(att_cache.size(2))
            assert att_cache.shape == (2, 4, att_cache.size(2), 2 * 8)  # layers, heads, t, 2 d_k
            assert cnn_cache.shape == (2, 1, 32, 6)  # layers, batch, d, kernel - 1
    assert cache_sizes[:3] == [4, 8, 8] and max(cache_sizes) == chunk_size * left


def test_forward_chunk_takes_one_stream():
    encoder = tiny_encoder()
    empty = torch.zeros(0, 0, 0, 0)
    with pytest.raises(ValueError, match="one stream"):
        encoder.forward_chunk(torch.randn(2, 19, 80), 0, -1, empty, empty)


def window_and_stride(encoder, chunk_size):
    window = (chunk_size - 1) * encoder.subsampling_rate + encoder.right_context + 1
    return window, chunk_size * encoder.subsampling_rate


def stream_alone(encoder, feats, chunks, chunk_size, required):
    """Run `chunks` chunks of feats (1, T, 80) in WeNet's layout -> list of (out, att, cnn)."""
    window, stride = window_and_stride(encoder, chunk_size)
    att_cache, cnn_cache = torch.zeros(0, 0, 0, 0), torch.zeros(0, 0, 0, 0)
    steps = []
    for i in range(chunks):
        chunk = feats[:, i * stride : i * stride + window]
        out, att_cache, cnn_cache = encoder.forward_chunk(
            chunk, i * chunk_size, required, att_cache, cnn_cache
        )
        steps.append((out, att_cache, cnn_cache))
    return steps


@pytest.mark.parametrize("ffn", [DENSE, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("num_left_chunks", [-1, 2])
def test_batched_forward_chunk_equals_each_stream_alone(ffn, num_left_chunks):
    """Streams at different ages (offsets, cache lengths) in one batch-first call."""
    encoder = tiny_encoder(ffn=ffn)
    chunk_size = 4
    required = chunk_size * num_left_chunks
    window, stride = window_and_stride(encoder, chunk_size)
    torch.manual_seed(2)
    feats = [torch.randn(1, 10 * stride + window, 80) for _ in range(3)]
    ages = [5, 1, 0]  # chunks each stream has already run
    with torch.no_grad():
        alone = [
            stream_alone(encoder, f, n + 1, chunk_size, required)
            for f, n in zip(feats, ages, strict=True)
        ]
        # The step before the batched one: each stream's caches (empty for a new stream).
        before = [steps[-2][1:] if len(steps) > 1 else None for steps in alone]
        cache_t = max(b[0].size(2) if b else 0 for b in before)
        att = torch.zeros(3, 2, 4, cache_t, 16)
        cnn = torch.zeros(3, 2, 32, 4)
        mask = torch.zeros(3, 1, cache_t + chunk_size, dtype=torch.bool)
        mask[:, :, cache_t:] = True
        for b, caches in enumerate(before):
            if caches:
                c = caches[0].size(2)
                att[b, :, :, cache_t - c :] = caches[0]
                cnn[b] = caches[1][:, 0]
                mask[b, :, cache_t - c : cache_t] = True
        chunks = [f[:, n * stride : n * stride + window] for f, n in zip(feats, ages, strict=True)]
        chunk = torch.cat(chunks)
        offset = torch.tensor(ages) * chunk_size
        out, new_att, new_cnn = encoder.forward_chunk(chunk, offset, required, att, cnn, mask)
    assert new_att.shape[:3] == (3, 2, 4) and new_cnn.shape == (3, 2, 32, 4)
    for b, steps in enumerate(alone):
        want_out, want_att, want_cnn = steps[-1]
        torch.testing.assert_close(out[b : b + 1], want_out, atol=1e-5, rtol=0)
        real_slots = new_att[b, :, :, new_att.size(3) - want_att.size(2) :]
        torch.testing.assert_close(real_slots, want_att, atol=1e-5, rtol=0)
        torch.testing.assert_close(new_cnn[b], want_cnn[:, 0], atol=1e-5, rtol=0)


def test_fixed_size_zero_cache_with_mask_equals_growing_cache():
    """WeNet's fixed-size mode: a zero cache of required_cache_size slots, opened by a mask."""
    encoder = tiny_encoder()
    chunk_size, left = 2, 3
    required = chunk_size * left
    window, stride = window_and_stride(encoder, chunk_size)
    torch.manual_seed(3)
    feats = torch.randn(1, 8 * stride + window, 80)
    with torch.no_grad():
        growing = stream_alone(encoder, feats, 8, chunk_size, required)
        att_cache, cnn_cache = torch.zeros(2, 4, required, 16), torch.zeros(2, 1, 32, 4)
        mask = torch.zeros(1, 1, required + chunk_size, dtype=torch.bool)
        mask[:, :, required:] = True
        for i, (want, _, _) in enumerate(growing):
            out, att_cache, cnn_cache = encoder.forward_chunk(
                feats[:, i * stride : i * stride + window],
                i * chunk_size,
                required,
                att_cache,
                cnn_cache,
                mask,
            )
            assert att_cache.shape == (2, 4, required, 16)
            torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
            mask = torch.cat((mask[:, :, chunk_size:], mask[:, :, -chunk_size:]), dim=-1)


def test_positions_may_be_negative_or_per_stream():
    encoder = tiny_encoder()
    pos_enc = encoder.embed.pos_enc
    both = pos_enc.position_encoding(torch.tensor([-3, 5]), 6)
    assert both.shape == (2, 6, 32)
    torch.testing.assert_close(both[1:], pos_enc.position_encoding(5, 6))
    torch.testing.assert_close(both[0, 3:], pos_enc.position_encoding(0, 3)[0])
    torch.testing.assert_close(pos_enc.position_encoding(-3, 6)[0], both[0])
