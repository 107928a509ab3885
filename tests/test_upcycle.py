"""Upcycling: a dense model's FFNs become MoE layers of copies; outputs unchanged."""

import pytest
import torch

from u2moe.cli import main as cli_main
from u2moe.model.config import ChunkConfig, DecoderConfig, EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.io import load_model_dir, save_model_dir
from u2moe.model.moe import MoEFeedForward
from u2moe.model.u2 import U2Model
from u2moe.model.upcycle import upcycle

UNITS = ["<blank>", "<unk>", *"abcdefg", "<sos/eos>"]


def dense_model(decoder_ffn: str = "dense", dropout: float = 0.1) -> U2Model:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(UNITS),
        encoder=EncoderConfig(
            d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5, dropout=dropout
        ),
        decoder=DecoderConfig(
            n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1, ffn=FFNConfig(type=decoder_ffn)
        ),
        chunk=ChunkConfig(dynamic=True),
    )
    return U2Model(cfg).eval()


def outputs(model: U2Model, feats: torch.Tensor) -> list[torch.Tensor]:
    """Full-context encoder, CTC and decoder outputs, and the chunk-4 streaming encoder."""
    lengths = torch.tensor([feats.size(1)])
    with torch.no_grad():
        enc, mask = model.encoder(feats, lengths)
        hyps = torch.tensor([[9, 2, 3, 4], [9, 5, 6, 9]])
        memory, memory_mask = enc.expand(2, -1, -1), mask.expand(2, -1, -1)
        l2r, r2l = model.decoder(memory, memory_mask, hyps, torch.tensor([4, 3]), hyps.flip(1))
        stream, _ = model.encoder.forward_chunk_by_chunk(feats, chunk_size=4, num_left_chunks=2)
    return [enc, model.ctc_log_probs(enc), l2r, r2l, stream]


@pytest.mark.parametrize("router_init", ["zeros", "normal"])
def test_upcycled_model_equals_the_dense_one(router_init):
    dense = dense_model()
    moe = upcycle(dense, n_experts=4, top_k=2, router_init=router_init)
    layers = [m for m in moe.modules() if isinstance(m, MoEFeedForward)]
    assert len(layers) == 2 * 2 + 2  # two macaron FFNs per encoder block, one per decoder
    feats = torch.randn(1, 67, 80)
    for a, b in zip(outputs(dense, feats), outputs(moe, feats), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_noise_makes_experts_differ_and_outputs_move():
    dense = dense_model()
    moe = upcycle(dense, n_experts=4, top_k=2, router_init="normal", noise=0.1)
    layer = next(m for m in moe.modules() if isinstance(m, MoEFeedForward))
    assert not torch.equal(layer.w_1[0], layer.w_1[1])
    feats = torch.randn(1, 67, 80)
    assert not torch.allclose(outputs(dense, feats)[0], outputs(moe, feats)[0], atol=1e-4)


def expert_gap_after_training(router_init: str) -> tuple[float, float]:
    """Train an upcycled model (no noise, no dropout, as in configs/small.yaml) for a few
    steps -> (largest gap between the experts the first encoder MoE layer used, largest
    |router weight|)."""
    dense = dense_model(dropout=0.0)
    moe = upcycle(dense, n_experts=4, top_k=2, router_init=router_init).train()
    optimizer = torch.optim.Adam(moe.parameters(), lr=1e-3)
    torch.manual_seed(1)
    feats, lengths = torch.randn(2, 67, 80), torch.tensor([67, 50])
    for _ in range(3):
        enc, _ = moe.encoder(feats, lengths)
        optimizer.zero_grad()
        enc.square().mean().backward()
        optimizer.step()
    layer = next(m for m in moe.modules() if isinstance(m, MoEFeedForward))
    used = layer.router.record.experts.unique()
    gap = (layer.w_1[used] - layer.w_1[used[0]]).abs().max().item()
    return gap, layer.router.weight.abs().max().item()


def test_zero_router_without_noise_is_a_fixed_point_the_default_avoids():
    """Identical experts behind a zero router: every frame picks the same two experts at
    weight 1/2, both get the same gradient and the router none, so training never makes a
    MoE of it. The default normal router sends frames to different experts, which diverge."""
    assert expert_gap_after_training("zeros") == (0.0, 0.0)
    gap, _ = expert_gap_after_training("normal")
    assert gap > 1e-4


def test_only_the_dense_side_is_upcycled():
    moe_decoder = dense_model(decoder_ffn="moe")
    model = upcycle(moe_decoder, n_experts=4, top_k=1)
    assert model.cfg.encoder.ffn.type == "moe" and model.cfg.encoder.ffn.top_k == 1
    assert model.cfg.decoder.ffn == moe_decoder.cfg.decoder.ffn


def test_upcycle_command_writes_a_model_directory(tmp_path, capsys):
    save_model_dir(tmp_path / "dense", dense_model(), {}, UNITS)
    assert (
        cli_main(
            [
                "upcycle",
                "--model",
                str(tmp_path / "dense"),
                "--out",
                str(tmp_path / "moe"),
                "--experts",
                "4",
            ]
        )
        == 0
    )
    assert "4 experts top-2" in capsys.readouterr().out
    model, _, units = load_model_dir(tmp_path / "moe")
    assert units == UNITS and model.cfg.encoder.ffn.n_experts == 4
    # a MoE model has nothing left to upcycle; k above the expert count is refused
    for args, message in [
        (["--model", str(tmp_path / "moe"), "--out", str(tmp_path / "again")], "no dense FFN"),
        (
            [
                "--model",
                str(tmp_path / "dense"),
                "--out",
                str(tmp_path / "k"),
                "--experts",
                "2",
                "--top-k",
                "3",
            ],
            "--top-k 3 must be in [1, --experts 2]",
        ),
        (["--model", str(tmp_path / "dense"), "--out", str(tmp_path / "moe")], "already holds"),
    ]:
        assert cli_main(["upcycle", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
