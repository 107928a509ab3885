"""U2Model: loss formula, label smoothing, padding, MoE balance loss, model directories."""

import math

import pytest
import torch
import yaml
from conftest import tiny_model  # noqa: I001 (tests/ helper)

from u2moe.errors import UserError
from u2moe.model.io import load_model_dir, save_model_dir
from u2moe.model.u2 import (
    U2Model,
    add_sos_eos,
    decoder_inputs,
    label_smoothing_loss,
    reverse_padded,
)

VOCAB = 10
UNITS = ["<blank>", "<unk>", *"abcdefg", "<sos/eos>"]


def batch():
    torch.manual_seed(1)
    feats = torch.randn(2, 70, 80)
    lengths = torch.tensor([70, 45])
    targets = torch.tensor([[2, 3, 4, 5], [6, 7, -1, -1]])
    return feats, lengths, targets, torch.tensor([4, 2])


def test_add_sos_eos_and_reverse_like_wenet():
    targets = torch.tensor([[1, 2, 3], [4, 5, -1]])
    ys_in, ys_out = add_sos_eos(targets, sos=9, eos=9)
    assert ys_in.tolist() == [[9, 1, 2, 3], [9, 4, 5, 9]]
    assert ys_out.tolist() == [[1, 2, 3, 9], [4, 5, 9, -1]]
    assert reverse_padded(targets, torch.tensor([3, 2]), -1).tolist() == [[3, 2, 1], [5, 4, -1]]
    hyps_in, lengths, r2l_in = decoder_inputs([[1, 2, 3], [4], []], sos=9, eos=9)
    assert hyps_in.tolist() == [[9, 1, 2, 3], [9, 4, 9, 9], [9, 9, 9, 9]]
    assert r2l_in.tolist() == [[9, 3, 2, 1], [9, 4, 9, 9], [9, 9, 9, 9]]
    assert lengths.tolist() == [4, 2, 1]


def test_label_smoothing_loss_matches_its_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[1, 4, -1], [0, -1, -1]])
    s, vocab = 0.2, 5
    log_probs = logits.log_softmax(-1)
    total = 0.0
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        y = int(target[b, t])
        q = torch.full((vocab,), s / (vocab - 1))
        q[y] = 1 - s
        total += float((q * (q.log() - log_probs[b, t])).sum())
    by_batch = label_smoothing_loss(logits, target, s, normalize_by_tokens=False)
    by_tokens = label_smoothing_loss(logits, target, s, normalize_by_tokens=True)
    assert by_batch.item() == pytest.approx(total / 2, rel=1e-5)
    assert by_tokens.item() == pytest.approx(total / 3, rel=1e-5)
    # Without smoothing it is the summed cross-entropy.
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=-1, reduction="sum"
    )
    assert label_smoothing_loss(logits, target, 0.0, False).item() == pytest.approx(ce.item() / 2)


@pytest.mark.parametrize(
    "ctc_weight, reverse_weight", [(0.3, 0.3), (0.0, 0.5), (1.0, 0.0), (0.5, 0.0)]
)
def test_loss_combines_ctc_l2r_r2l(ctc_weight, reverse_weight):
    model = tiny_model(ctc_weight=ctc_weight, reverse_weight=reverse_weight, lsm_weight=0.1)
    feats, lengths, targets, target_lengths = batch()
    with torch.no_grad():
        out = model(feats, lengths, targets, target_lengths)
        enc, enc_lengths = model.encode(feats, lengths)
        ys_in, ys_out = add_sos_eos(targets, model.sos, model.eos)
        r2l_in, r2l_out = add_sos_eos(reverse_padded(targets, target_lengths, -1), 9, 9)
        l2r, r2l = model.decoder_log_probs(enc, enc_lengths, ys_in, target_lengths + 1, r2l_in)
        l2r_loss = label_smoothing_loss(l2r, ys_out, 0.1, False)
        r2l_loss = label_smoothing_loss(r2l, r2l_out, 0.1, False)
        ctc = torch.nn.functional.ctc_loss(
            model.ctc_log_probs(enc).transpose(0, 1), targets.clamp(min=0), enc_lengths,
            target_lengths, reduction="sum",
        ) / 2  # fmt: skip
    att = (1 - reverse_weight) * l2r_loss + reverse_weight * r2l_loss
    assert out["loss_ctc"].item() == pytest.approx(ctc.item(), rel=1e-5)
    assert out["loss_att"].item() == pytest.approx(att.item(), rel=1e-5)
    expected = ctc_weight * ctc + (1 - ctc_weight) * att
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= out["accuracy"].item() <= 1.0
    assert "loss_aux" not in out


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_padding_does_not_change_the_loss_of_real_utterances(ffn):
    model = tiny_model(ffn, length_normalized_loss=False)
    feats, lengths, targets, target_lengths = batch()
    with torch.no_grad():
        together = model(feats, lengths, targets, target_lengths)
        alone = [
            model(feats[i : i + 1, : lengths[i]], lengths[i : i + 1],
                  targets[i : i + 1, : target_lengths[i]], target_lengths[i : i + 1])
            for i in range(2)
        ]  # fmt: skip
    for key in ("loss_ctc", "loss_att", "loss"):
        # Losses are sums over the batch divided by its size.
        summed = sum(out[key] for out in alone).item()
        assert 2 * together[key].item() == pytest.approx(summed, rel=1e-5), key


def test_length_normalized_loss_divides_by_tokens():
    feats, lengths, targets, target_lengths = batch()
    with torch.no_grad():
        by_batch = tiny_model(length_normalized_loss=False)(feats, lengths, targets, target_lengths)
        by_tokens = tiny_model(length_normalized_loss=True)(feats, lengths, targets, target_lengths)
    tokens = int(target_lengths.sum()) + 2  # each target gets an eos
    assert by_tokens["loss_att"].item() == pytest.approx(by_batch["loss_att"].item() * 2 / tokens)
    assert by_tokens["loss_ctc"].item() == pytest.approx(by_batch["loss_ctc"].item())


def test_backward_reaches_every_parameter():
    model = tiny_model("dense").train()
    out = model(*batch())
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_moe_aux_loss_is_off_by_default_and_balances_when_on():
    feats, lengths, targets, target_lengths = batch()
    default = tiny_model("moe")
    assert default.cfg.encoder.ffn.aux_loss_weight == 0.0
    with torch.no_grad():
        assert "loss_aux" not in default(feats, lengths, targets, target_lengths)

    model = tiny_model("moe", aux=0.01)
    out = model(feats, lengths, targets, target_lengths)
    # Switch loss per layer is E * sum f_e P_e: 1 when routing is uniform, E at worst.
    aux = out["loss_aux"].item() / 0.01
    assert 2 * 0.5 <= aux <= 2 * 4  # encoder + decoder parts, each weighted 0.01
    assert out["loss"].item() == pytest.approx((out["loss_aux"] + model_loss(model)).item())
    out["loss_aux"].backward()
    router = model.encoder.encoders[0].feed_forward.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed after forward


def model_loss(model: U2Model) -> torch.Tensor:
    """The loss without the aux term, for the same model and batch."""
    cfg = model.cfg
    saved = cfg.encoder.ffn.aux_loss_weight, cfg.decoder.ffn.aux_loss_weight
    cfg.encoder.ffn.aux_loss_weight = cfg.decoder.ffn.aux_loss_weight = 0.0
    try:
        with torch.no_grad():
            return model(*batch())["loss"]
    finally:
        cfg.encoder.ffn.aux_loss_weight, cfg.decoder.ffn.aux_loss_weight = saved


def test_encode_chunk_size_masks_attention():
    model = tiny_model()
    feats, lengths, *_ = batch()
    with torch.no_grad():
        full, _ = model.encode(feats, lengths)
        chunk, _ = model.encode(feats, lengths, chunk_size=2)
    assert not torch.allclose(full, chunk, atol=1e-4)
    assert torch.equal(model.encode(feats, lengths, chunk_size=-1)[0], full)


def test_set_cmvn_normalizes_raw_features():
    model = tiny_model()
    feats, lengths, *_ = batch()
    mean, istd = torch.full((80,), 3.0), torch.full((80,), 0.5)
    with torch.no_grad():
        plain, _ = model.encode(feats, lengths)
        model.set_cmvn(mean, istd)
        shifted, _ = model.encode(feats / 0.5 + 3.0, lengths)
    torch.testing.assert_close(shifted, plain, atol=1e-4, rtol=1e-4)


def test_model_directory_round_trip(tmp_path):
    model = tiny_model("moe")
    model.set_cmvn(torch.linspace(-1, 1, 80), torch.linspace(0.5, 2, 80))
    save_model_dir(tmp_path / "m", model, {"data": {"features": {"dither": 0.0}}}, UNITS)
    loaded, config, units = load_model_dir(tmp_path / "m")
    assert units == UNITS and config["data"] == {"features": {"dither": 0.0}}
    assert config["model"]["encoder"]["ffn"]["type"] == "moe"
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(*batch())["loss"], model(*batch())["loss"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.yaml", "model.pt", "units.txt"
    ]  # fmt: skip


def test_model_directory_mismatches_are_one_line_errors(tmp_path):
    save_model_dir(tmp_path / "m", tiny_model(), {}, UNITS)
    config_path = tmp_path / "m" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["model"]["encoder"]["n_layers"] = 3
    config["model"]["decoder"]["d_ff"] = 64
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as info:
        load_model_dir(tmp_path / "m")
    message = str(info.value)
    assert "\n" not in message and "model.pt" in message
    assert "missing encoder.encoders.2." in message and "mis-shaped decoder." in message

    config["model"]["encoder"]["n_layers"], config["model"]["vocab_size"] = 2, 11
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="10 units, but model.vocab_size is 11"):
        load_model_dir(tmp_path / "m")
    config["model"]["encoder"]["n_layerz"] = 2
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="n_layerz"):
        load_model_dir(tmp_path / "m")
    del config["model"]["encoder"]["n_layerz"]
    config["model"]["vocab_size"] = 10
    config_path.write_text(yaml.safe_dump(config))
    (tmp_path / "m" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="model.pt"):
        load_model_dir(tmp_path / "m")
    with pytest.raises(UserError, match="no such model directory"):
        load_model_dir(tmp_path / "absent")


def test_decoder_log_probs_normalized():
    model = tiny_model()
    feats, lengths, *_ = batch()
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        hyps_in, hyps_lengths, r2l_in = decoder_inputs([[2, 3], [4]], model.sos, model.eos)
        l2r, r2l = model.decoder_log_probs(enc, enc_lengths, hyps_in, hyps_lengths, r2l_in)
        l2r_only, none = model.decoder_log_probs(enc, enc_lengths, hyps_in, hyps_lengths)
    assert l2r.shape == r2l.shape == (2, 3, VOCAB) and none is None
    assert torch.equal(l2r_only, l2r)
    torch.testing.assert_close(l2r.exp().sum(-1), torch.ones(2, 3))
    assert math.isfinite(r2l.sum().item())
