from pathlib import Path

import pytest
import torch

from u2moe.errors import UserError
from u2moe.model.activation import make_activation
from u2moe.model.config import ChunkConfig, EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.convolution import ConvolutionModule
from u2moe.model.embedding import RelPositionalEncoding, sinusoid_table
from u2moe.model.encoder import ConformerEncoder
from u2moe.model.subsampling import Conv2dSubsampling
from u2moe.model.wenet import config_from_wenet, convert_state_dict

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
ATOL = 1e-5


def load_fixture(name):
    return torch.load(FIXTURES / f"wenet_u2pp_{name}.pt", weights_only=True)


def encoder_state(state_dict):
    """The encoder's part of a whole-model state dict, with the `encoder.` prefix removed."""
    return {k[8:]: v for k, v in state_dict.items() if k.startswith("encoder.")}


@pytest.fixture(scope="module", params=["dense", "moe"])
def wenet(request):
    """(encoder with the fixture's weights, fixture) for WeNet's dense and MoE U2++ models."""
    data = load_fixture(request.param)
    cfg = config_from_wenet(data["config"])
    encoder = ConformerEncoder(cfg).eval()
    encoder.load_state_dict(encoder_state(convert_state_dict(data["state_dict"], cfg)))
    return encoder, data


@torch.no_grad()
def test_matches_wenet_with_full_and_chunk_masks(wenet):
    encoder, data = wenet
    feats, lengths = data["inputs"]["feats"], data["inputs"]["feats_lengths"]
    outputs = data["outputs"]
    out, mask = encoder(feats, lengths)
    torch.testing.assert_close(out, outputs["encoder_full"], atol=ATOL, rtol=0)
    assert torch.equal(mask, outputs["encoder_full_mask"])
    assert torch.equal(mask.sum(dim=(1, 2)), outputs["encoder_full_lengths"])
    out, mask = encoder(feats, lengths, chunk_size=4)
    torch.testing.assert_close(out, outputs["encoder_chunk4"], atol=ATOL, rtol=0)
    assert torch.equal(mask, outputs["encoder_chunk4_mask"])
    out, _ = encoder(feats, lengths, chunk_size=4, num_left_chunks=2)
    torch.testing.assert_close(out, outputs["encoder_chunk4_left2"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_matches_wenet_streaming(wenet):
    encoder, data = wenet
    feats = data["inputs"]["feats"][:1]
    outputs = data["outputs"]
    out, mask = encoder.forward_chunk_by_chunk(feats, chunk_size=4)
    torch.testing.assert_close(out, outputs["stream0_chunk4"], atol=ATOL, rtol=0)
    assert mask.shape == (1, 1, out.size(1)) and mask.all()
    out, _ = encoder.forward_chunk_by_chunk(feats, chunk_size=4, num_left_chunks=2)
    torch.testing.assert_close(out, outputs["stream0_chunk4_left2"], atol=ATOL, rtol=0)
    att_cache, cnn_cache = torch.zeros(0, 0, 0, 0), torch.zeros(0, 0, 0, 0)
    for step in outputs["forward_chunk_steps"]:
        chunk = feats[:, step["start"] : step["end"]]
        out, att_cache, cnn_cache = encoder.forward_chunk(
            chunk, step["offset"], -1, att_cache, cnn_cache
        )
        torch.testing.assert_close(out, step["out"], atol=ATOL, rtol=0)
        torch.testing.assert_close(att_cache, step["att_cache"], atol=ATOL, rtol=0)
        torch.testing.assert_close(cnn_cache, step["cnn_cache"], atol=ATOL, rtol=0)


def test_wenet_dense_state_dict_loads_with_identical_names():
    data = load_fixture("dense")
    encoder = ConformerEncoder(config_from_wenet(data["config"]))
    wenet_state = encoder_state(data["state_dict"])
    assert "embed.pos_enc.pe" in wenet_state  # saved by WeNet, recomputed here
    encoder.load_state_dict(wenet_state, strict=True)
    assert set(encoder.state_dict()) == set(wenet_state) - {"embed.pos_enc.pe"}
    torch.testing.assert_close(encoder.global_cmvn.istd, wenet_state["global_cmvn.istd"])


@pytest.mark.parametrize("rate, right_context", [(4, 6), (6, 10), (8, 14)])
def test_subsampling_lengths_and_receptive_field(rate, right_context):
    torch.manual_seed(0)
    embed = Conv2dSubsampling(20, 8, rate, RelPositionalEncoding(8)).double()
    assert (embed.subsampling_rate, embed.right_context) == (rate, right_context)
    for length in (right_context + 1, 50, 101):
        x = torch.randn(1, length, 20, dtype=torch.float64)
        mask = torch.ones(1, 1, length, dtype=torch.bool)
        out, pos_emb, out_mask = embed(x, mask)
        assert out.size(1) == out_mask.size(2) == pos_emb.size(1) == embed.output_length(length)
    assert embed.output_length(right_context) == 0
    assert embed.output_length(right_context + 1 + 3 * rate) == 4
    # Output frame j reads exactly input frames j * rate .. j * rate + right_context.
    x = torch.randn(1, 80, 20, dtype=torch.float64, requires_grad=True)
    out, _, _ = embed(x, None)
    j = 3
    out[0, j].sum().backward()
    used = x.grad[0].abs().sum(dim=-1).nonzero().flatten()
    assert used.tolist() == list(range(j * rate, j * rate + right_context + 1))


def tiny_config(**encoder_options) -> ModelConfig:
    options = dict(d_model=32, n_heads=4, d_ff=48, n_layers=2, kernel_size=5, dropout=0.0)
    options.update(positional_dropout=0.0, attention_dropout=0.0)
    options.update(encoder_options)
    chunk = options.pop("chunk", ChunkConfig())
    return ModelConfig(vocab_size=10, encoder=EncoderConfig(**options), chunk=chunk)


def tiny_encoder(**encoder_options) -> ConformerEncoder:
    torch.manual_seed(0)
    encoder = ConformerEncoder(tiny_config(**encoder_options))
    encoder.global_cmvn.set_stats(torch.randn(80), torch.rand(80) + 0.5)
    return encoder


@pytest.mark.parametrize("chunk_size, num_left_chunks", [(-1, -1), (4, 1)])
@torch.no_grad()
def test_padding_does_not_change_real_frames(chunk_size, num_left_chunks):
    moe = FFNConfig(type="moe", n_experts=4, top_k=2)
    # Causal convolution: a non-causal one reads masked padding through pointwise_conv1's
    # bias at the end of shorter utterances, as WeNet's does.
    encoder = tiny_encoder(ffn=moe, conv_norm="batch_norm").eval()
    feats = torch.randn(2, 120, 80)
    lengths = torch.tensor([120, 75])
    out, mask = encoder(feats, lengths, chunk_size, num_left_chunks)
    alone, alone_mask = encoder(feats[1:, :75], lengths[1:], chunk_size, num_left_chunks)
    n = int(alone_mask.sum())
    assert int(mask[1].sum()) == n == encoder.embed.output_length(75)
    torch.testing.assert_close(out[1, :n], alone[0], atol=1e-5, rtol=0)


@torch.no_grad()
def test_training_mode_follows_the_chunk_policy():
    static = tiny_encoder(chunk=ChunkConfig(static_chunk_size=3))
    feats, lengths = torch.randn(2, 90, 80), torch.tensor([90, 61])
    train_out, _ = static.train()(feats, lengths, chunk_size=-1)
    eval_out, _ = static.eval()(feats, lengths, chunk_size=3)
    default_out, _ = static(feats, lengths)  # a static-chunk model decodes with its chunk
    other_out, _ = static(feats, lengths, chunk_size=5)
    torch.testing.assert_close(train_out, eval_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(default_out, eval_out, atol=1e-6, rtol=0)
    assert not torch.allclose(train_out, other_out, atol=1e-3)

    dynamic = tiny_encoder(chunk=ChunkConfig(dynamic=True, max_chunk=8, full_context_prob=0.5))
    dynamic.train()
    runs = []
    for _ in range(2):
        dynamic.chunk_generator.manual_seed(7)
        runs.append(torch.stack([dynamic(feats, lengths)[0] for _ in range(6)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0][0], runs[0][1:], atol=1e-3)  # the chunk changed


def test_moe_encoder_trains_with_padding_and_left_chunks():
    # Small left-limited chunks leave padded frames with no visible key: no NaN may follow.
    chunk = ChunkConfig(dynamic=True, max_chunk=2, full_context_prob=0.0, dynamic_left=True)
    moe = FFNConfig(type="moe", n_experts=4, top_k=2)
    encoder = tiny_encoder(ffn=moe, chunk=chunk).train()
    out, mask = encoder(torch.randn(2, 120, 80), torch.tensor([120, 30]))
    assert out.isfinite().all()
    (out * mask.transpose(1, 2)).pow(2).mean().backward()
    router = encoder.encoders[0].feed_forward_macaron.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.isfinite().all() for p in encoder.parameters())


def test_bad_input_is_a_user_error():
    encoder = tiny_encoder().eval()
    with pytest.raises(UserError, match="too short"):
        encoder(torch.randn(1, 6, 80), torch.tensor([6]))
    with pytest.raises(UserError, match="features have 40 dimensions but the model takes 80"):
        encoder(torch.randn(1, 60, 40), torch.tensor([60]))


def test_positional_table_is_recomputed_and_grows():
    pos_enc = RelPositionalEncoding(16)
    assert "pe" not in pos_enc.state_dict()
    far = pos_enc.position_encoding(4990, 20)  # past the initial 5000 positions
    torch.testing.assert_close(far[0], sinusoid_table(5010, 16)[4990:])
    x, pos_emb = pos_enc(torch.ones(1, 3, 16), offset=2)
    torch.testing.assert_close(x, torch.full((1, 3, 16), 4.0))  # scaled by sqrt(d_model)
    torch.testing.assert_close(pos_emb[0], sinusoid_table(5, 16)[2:])


@pytest.mark.parametrize("norm", ["layer_norm", "batch_norm"])
def test_convolution_causality(norm):
    torch.manual_seed(0)
    x = torch.randn(1, 20, 8)
    later = x.clone()
    later[:, 12:] += 1.0
    for causal, sees_future in ((True, False), (False, True)):
        conv = ConvolutionModule(8, 5, make_activation("swish"), norm, causal).eval()
        with torch.no_grad():
            changed = (conv(x)[0] - conv(later)[0]).abs().amax(dim=-1)[0] > 1e-6
        assert changed[12:].all()
        assert changed[:12].any() == sees_future


def test_chunk_generator_follows_torch_seed():
    cfg = tiny_config()
    torch.manual_seed(11)
    a = ConformerEncoder(cfg).chunk_generator
    torch.manual_seed(11)
    b = ConformerEncoder(cfg).chunk_generator
    torch.manual_seed(12)
    c = ConformerEncoder(cfg).chunk_generator
    assert torch.equal(a.get_state(), b.get_state())
    assert not torch.equal(a.get_state(), c.get_state())
