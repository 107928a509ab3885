"""Transformer decoders: incremental decoding, masking, WeNet's structure, dense and MoE FFNs."""

import pytest
import torch

from u2moe.model.config import DecoderConfig, FFNConfig
from u2moe.model.decoder import BiTransformerDecoder, TransformerDecoder
from u2moe.model.mask import subsequent_mask
from u2moe.model.moe import FeedForward, MoEFeedForward

VOCAB, D_MODEL = 11, 32


def decoder_config(ffn: str = "dense", n_r2l_layers: int = 1) -> DecoderConfig:
    return DecoderConfig(
        n_heads=4, d_ff=40, n_layers=2, n_r2l_layers=n_r2l_layers,
        ffn=FFNConfig(type=ffn, n_experts=4, top_k=2),
    )  # fmt: skip


def memory(batch: int = 3, frames: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    mem = torch.randn(batch, frames, D_MODEL)
    mask = torch.ones(batch, 1, frames, dtype=torch.bool)
    mask[1:, :, 6:] = False  # later utterances are shorter
    return mem, mask


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_forward_one_step_equals_full_forward(ffn):
    torch.manual_seed(0)
    decoder = TransformerDecoder(VOCAB, D_MODEL, decoder_config(ffn), 2).eval()
    mem, mem_mask = memory()
    tokens = torch.tensor([[10, 3, 4, 5, 6], [10, 7, 2, 2, 9], [10, 1, 8, 3, 3]])
    with torch.no_grad():
        full = decoder(mem, mem_mask, tokens, torch.full((3,), 5)).log_softmax(-1)
        cache = None
        for i in range(1, 6):
            mask = subsequent_mask(i).unsqueeze(0).expand(3, -1, -1)
            step, cache = decoder.forward_one_step(mem, mem_mask, tokens[:, :i], mask, cache)
            torch.testing.assert_close(step, full[:, i - 1], atol=1e-5, rtol=0)
            assert len(cache) == 2 and cache[0].shape == (3, i, D_MODEL)


def test_padding_and_future_tokens_do_not_leak():
    torch.manual_seed(0)
    decoder = TransformerDecoder(VOCAB, D_MODEL, decoder_config(), 2).eval()
    mem, mem_mask = memory(1)
    short = torch.tensor([[10, 3, 4]])
    padded = torch.tensor([[10, 3, 4, 10, 10, 10]])
    other_future = torch.tensor([[10, 3, 4, 7, 8, 9]])
    with torch.no_grad():
        alone = decoder(mem, mem_mask, short, torch.tensor([3]))
        with_padding = decoder(mem, mem_mask, padded, torch.tensor([3]))
        with_future = decoder(mem, mem_mask, other_future, torch.tensor([6]))
        # Encoder frames outside memory_mask are not read.
        noisy = mem.clone()
        noisy[0, 6:] = 100.0
        cut_mask = mem_mask.clone()
        cut_mask[0, :, 6:] = False
        cut = decoder(mem, cut_mask, short, torch.tensor([3]))
        cut_noisy = decoder(noisy, cut_mask, short, torch.tensor([3]))
    torch.testing.assert_close(with_padding[:, :3], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_future[:, :3], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(cut_noisy, cut, atol=1e-5, rtol=0)
    assert not torch.allclose(cut, alone, atol=1e-4)


def test_wenet_structure_and_ffn_types():
    dense = BiTransformerDecoder(VOCAB, D_MODEL, decoder_config("dense"))
    moe = BiTransformerDecoder(VOCAB, D_MODEL, decoder_config("moe"))
    names = set(dense.state_dict())
    for name in (
        "left_decoder.embed.0.weight",
        "left_decoder.decoders.1.self_attn.linear_q.weight",
        "left_decoder.decoders.1.src_attn.linear_out.bias",
        "left_decoder.decoders.0.feed_forward.w_1.weight",
        "left_decoder.decoders.0.norm3.bias",
        "left_decoder.after_norm.weight",
        "right_decoder.output_layer.weight",
    ):
        assert name in names, name
    assert not any(name.endswith(".pe") for name in names)  # recomputed, not saved
    layer = dense.left_decoder.decoders[0]
    assert isinstance(layer.feed_forward, FeedForward)
    assert isinstance(layer.feed_forward.activation, torch.nn.ReLU)  # WeNet's decoder default
    assert isinstance(moe.right_decoder.decoders[0].feed_forward, MoEFeedForward)
    assert moe.state_dict()["left_decoder.decoders.0.feed_forward.w_1"].shape == (4, 40, D_MODEL)
    assert len(dense.left_decoder.decoders) == 2 and len(dense.right_decoder.decoders) == 1


def test_right_decoder_is_optional():
    decoder = BiTransformerDecoder(VOCAB, D_MODEL, decoder_config(n_r2l_layers=0)).eval()
    assert decoder.right_decoder is None
    mem, mem_mask = memory()
    tokens = torch.tensor([[10, 3], [10, 4], [10, 5]])
    with torch.no_grad():
        l2r, r2l = decoder(mem, mem_mask, tokens, torch.full((3,), 2), tokens)
    assert l2r.shape == (3, 2, VOCAB) and r2l is None
