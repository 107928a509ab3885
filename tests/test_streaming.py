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
