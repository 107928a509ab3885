import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model  # noqa: I001 (tests/ helper)
from torch import nn

from u2moe.model.moe import ExpertCounts, FeedForward, MoEFeedForward, moe_layers, set_top_k
from u2moe.model.packing import PackedLinear, PackedMoEFeedForward, pack_for_cpu


@pytest.mark.parametrize("n_experts, top_k", [(8, 2), (4, 1), (3, 3), (16, 4)])
def test_fast_dispatch_equals_reference(n_experts, top_k):
    torch.manual_seed(0)
    moe = MoEFeedForward(32, 64, nn.SiLU(), n_experts=n_experts, top_k=top_k).eval()
    x = torch.randn(3, 17, 32)
    x[1, 9:] = 0.0  # padding frames
    with torch.no_grad():
        torch.testing.assert_close(moe(x), moe.forward_reference(x), atol=1e-5, rtol=1e-5)


def test_moe_is_weighted_sum_of_topk_experts():
    torch.manual_seed(1)
    moe = MoEFeedForward(8, 16, nn.ReLU(), n_experts=4, top_k=2).eval()
    x = torch.randn(5, 8)
    logits = moe.router(x)
    expected = torch.zeros_like(x)
    for i in range(5):
        top = logits[i].topk(2)
        w = top.values.softmax(-1)
        for weight, e in zip(w, top.indices, strict=True):
            expected[i] += weight * moe.expert(int(e), x[i : i + 1])[0]
    torch.testing.assert_close(moe(x), expected, atol=1e-6, rtol=1e-5)


def test_top1_with_single_expert_is_dense_ffn():
    torch.manual_seed(2)
    dense = FeedForward(8, 16, nn.SiLU())
    moe = MoEFeedForward(8, 16, nn.SiLU(), n_experts=1, top_k=1)
    with torch.no_grad():
        moe.w_1[0].copy_(dense.w_1.weight)
        moe.b_1[0].copy_(dense.w_1.bias)
        moe.w_2[0].copy_(dense.w_2.weight)
        moe.b_2[0].copy_(dense.w_2.bias)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(moe(x), dense(x))


def test_gradients_reach_router_and_experts():
    moe = MoEFeedForward(8, 16, nn.SiLU(), n_experts=4, top_k=2)
    moe(torch.randn(10, 8)).square().sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.w_1.grad.abs().sum() > 0


def test_top_k_larger_than_experts_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, 16, nn.SiLU(), n_experts=2, top_k=3)


def test_fast_dispatch_handles_empty_input_and_idle_experts():
    torch.manual_seed(3)
    moe = MoEFeedForward(8, 16, nn.SiLU(), n_experts=8, top_k=2).eval()
    assert moe(torch.randn(0, 4, 8)).shape == (0, 4, 8)
    x = torch.randn(1, 8).expand(5, 8)  # identical frames: 2 experts busy, 6 idle
    torch.testing.assert_close(moe(x), moe.forward_reference(x), atol=1e-6, rtol=1e-5)


def test_fast_dispatch_gradients_equal_reference():
    torch.manual_seed(4)
    moe = MoEFeedForward(16, 32, nn.SiLU(), n_experts=4, top_k=2)
    x = torch.randn(2, 9, 16)
    grads = []
    for forward in (moe.forward, moe.forward_reference):
        moe.zero_grad()
        forward(x).square().sum().backward()
        grads.append([p.grad.clone() for p in moe.parameters()])
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def _moe_with_an_idle_expert(top_k: int) -> tuple[MoEFeedForward, torch.Tensor]:
    """4 experts, frames of odd counts (one utterance padded), expert 3 never chosen."""
    torch.manual_seed(8)
    moe = MoEFeedForward(16, 32, nn.SiLU(), n_experts=4, top_k=top_k)
    x = torch.randn(3, 13, 16)
    x[2, 7:] = 0.0  # padding frames
    x[..., 0] = x[..., 0].abs() + 1.0  # feature 0 >= 1 on every frame ...
    with torch.no_grad():
        moe.router.weight[3] = 0.0
        moe.router.weight[3, 0] = -20.0  # ... so expert 3 scores <= -20 and loses
    return moe, x


def _output_and_grads(forward, moe: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """forward(x), then the gradients of x and of every parameter of sum(out^2)."""
    moe.zero_grad()
    x = x.clone().requires_grad_()
    y = forward(x)
    y.float().square().sum().backward()
    return [y, x.grad, *(p.grad for p in moe.parameters())]


@pytest.mark.parametrize("top_k", [1, 2])
def test_grouped_gemm_dispatch_equals_reference(top_k):
    """The grouped-GEMM branch (forced: `torch._grouped_mm` runs on CPU in this build)
    against the reference: outputs, and gradients of the input and every parameter."""
    moe, x = _moe_with_an_idle_expert(top_k)
    experts = moe.route(x.reshape(-1, 16))[1]
    assert 3 not in experts and experts.unique().numel() == 3  # one expert gets no frames
    grouped = _output_and_grads(lambda x: moe(x, grouped=True), moe, x)
    reference = _output_and_grads(moe.forward_reference, moe, x)
    for a, b in zip(grouped, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    w_1_grad = grouped[2 + [name for name, _ in moe.named_parameters()].index("w_1")]
    assert w_1_grad[3].abs().sum() == 0 < w_1_grad[:3].abs().sum()  # expert 3 is idle


def test_grouped_gemm_dispatch_bfloat16_and_empty_input():
    moe, x = _moe_with_an_idle_expert(top_k=2)
    moe, x = moe.eval().to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.no_grad():
        out = moe(x, grouped=True)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, moe.forward_reference(x), atol=2e-2, rtol=2e-2)
        assert moe(torch.zeros(0, 16, dtype=torch.bfloat16), grouped=True).shape == (0, 16)


def test_cpu_takes_the_loop_by_default(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torch._grouped_mm called on CPU without grouped=True")

    moe = MoEFeedForward(16, 32, nn.SiLU(), n_experts=4, top_k=2).to(torch.bfloat16)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    assert not moe.grouped_mm_usable(x)
    monkeypatch.setattr(torch, "_grouped_mm", fail)
    moe(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("setting", ["bf16 weights", "bf16 autocast"])
def test_cuda_bfloat16_takes_grouped_gemms_and_matches_the_loop(setting):
    """On a GPU, bf16 weights, and fp32 weights under bf16 autocast (the trainer's GPU
    setting), take the grouped branch by default and match the loop branch."""
    moe, x = _moe_with_an_idle_expert(top_k=2)
    moe, x = moe.cuda(), x.cuda()
    if setting == "bf16 weights":
        moe, x = moe.to(torch.bfloat16), x.to(torch.bfloat16)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=setting == "bf16 autocast")

    def forward(grouped):
        def run(x):
            with autocast:
                return moe(x, grouped=grouped)

        return run

    with autocast:
        assert moe.grouped_mm_usable(x.reshape(-1, 16))
    grouped = _output_and_grads(forward(None), moe, x)
    loop = _output_and_grads(forward(False), moe, x)
    for a, b in zip(grouped, loop, strict=True):  # bf16: different summation orders
        assert (a.float() - b.float()).norm() <= 2e-2 * b.float().norm()


def test_utilization_counts_every_routed_slot():
    moe = MoEFeedForward(8, 16, nn.SiLU(), n_experts=4, top_k=2)
    moe(torch.randn(3, 5, 8))
    assert moe.router.record.counts().sum().item() == 3 * 5 * 2


def test_torch_export_with_dynamic_frames_matches_eager():
    """The exporter's route: torch.export with a dynamic frame count, no retrace per size."""
    torch.manual_seed(5)
    moe = MoEFeedForward(16, 32, nn.SiLU(), n_experts=4, top_k=2).eval()
    frames = torch.export.Dim("frames", min=1, max=4096)
    program = torch.export.export(moe, (torch.randn(1, 7, 16),), dynamic_shapes=({1: frames},))
    exported = program.module()
    for n in (1, 3, 40, 333):
        x = torch.randn(1, n, 16)
        torch.testing.assert_close(exported(x), moe.forward_reference(x), atol=1e-5, rtol=1e-5)


def _ffn_stack(d_model=64, d_ff=128):
    torch.manual_seed(6)
    return nn.Sequential(
        FeedForward(d_model, d_ff, nn.SiLU()),
        MoEFeedForward(d_model, d_ff, nn.SiLU(), n_experts=4, top_k=2),
        nn.Linear(d_model, d_model),
    ).eval()


def test_packed_float32_equals_eager():
    model = _ffn_stack()
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        expected = model(x)
        pack_for_cpu(model, "float32")
        assert isinstance(model[1], PackedMoEFeedForward) and isinstance(model[2], PackedLinear)
        assert isinstance(model[0].w_1, PackedLinear)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model[1](x), model[1].forward_reference(x), atol=1e-5, rtol=0)


def test_packed_int8_is_close_to_float32_and_routes_the_same():
    model = _ffn_stack()
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        expected = model(x)
        experts = model[1].route(x.reshape(-1, 64))[1]
        pack_for_cpu(model, "int8")
        out = model(x)
        assert torch.equal(model[1].route(x.reshape(-1, 64))[1], experts)
    relative_error = (out - expected).norm() / expected.norm()
    assert 0 < relative_error < 0.05  # five int8 GEMMs in a row, 7-bit activations


def test_packing_rejects_unknown_weights():
    with pytest.raises(ValueError, match="weights"):
        pack_for_cpu(_ffn_stack(), "int4")


def test_layer_benchmark_runs_and_reports_ratios():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "moe_layer.py"
    argv = ["--frames", "8", "--threads", "1", "--d-model", "16", "--d-ff", "32", "--budget", "0"]
    out = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("8 ")]
    assert [row[1] for row in rows] == ["eager", "float32", "int8"]
    assert all(float(row[6]) > 0 for row in rows)  # fast/dense ratio


def test_packing_a_whole_u2_model_keeps_its_outputs():
    from u2moe.config import load_yaml, parse_section
    from u2moe.model.config import ModelConfig
    from u2moe.model.u2 import U2Model

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = parse_section(ModelConfig, load_yaml(tiny)["model"], "tiny.yaml: model")
    cfg.vocab_size = 20
    torch.manual_seed(7)
    model = U2Model(cfg).eval()
    feats, lengths = torch.randn(2, 50, 80), torch.tensor([50, 37])
    hyps = torch.tensor([[19, 3, 4, 19], [19, 5, 19, 19]])
    hyp_lengths = torch.tensor([3, 2])
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        expected = (
            model.ctc_log_probs(enc),
            model.decoder_log_probs(enc, enc_lengths, hyps, hyp_lengths, hyps)[0],
        )
        pack_for_cpu(model, "float32")
        routers = {id(m.router) for m in model.modules() if isinstance(m, PackedMoEFeedForward)}
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert routers and all(id(m) in routers for m in linears)  # only routers stay float
        enc_packed, _ = model.encode(feats, lengths)
        got = (
            model.ctc_log_probs(enc_packed),
            model.decoder_log_probs(enc_packed, enc_lengths, hyps, hyp_lengths, hyps)[0],
        )
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _reference_balance_loss(logits: torch.Tensor, real: torch.Tensor, top_k: int) -> torch.Tensor:
    """The Switch loss as the model computed it before the routing record (a forward hook
    caught the router logits; top-k recomputed on the real frames)."""
    logits = logits[real].float()
    chosen = logits.topk(top_k, dim=-1).indices.flatten()
    fraction = torch.bincount(chosen, minlength=logits.size(-1)).float() / chosen.numel()
    return logits.size(-1) * (fraction * logits.softmax(dim=-1).mean(dim=0)).sum()


def _u2_batch():
    torch.manual_seed(1)
    targets = torch.tensor([[2, 3, 4, 5], [6, 7, -1, -1]])
    return torch.randn(2, 70, 80), torch.tensor([70, 45]), targets, torch.tensor([4, 2])


def test_aux_loss_from_the_routing_record_equals_the_hook_reference():
    model = tiny_model("moe", aux=0.01).train()
    layers = moe_layers(model)
    logits = {}
    hooks = [
        layer.router.register_forward_hook(lambda m, a, out, i=i: logits.update({i: out}))
        for i, layer in enumerate(layers)
    ]
    feats, lengths, targets, target_lengths = _u2_batch()
    out = model(feats, lengths, targets, target_lengths)  # training mode: chunk draws
    for hook in hooks:
        hook.remove()
    records = [layer.router.record for layer in layers]
    with torch.no_grad():
        enc_lengths = model.eval().encode(feats, lengths)[1]
    expected = 0.0
    for part in (model.encoder, model.decoder):
        losses = []
        part_lengths = enc_lengths if part is model.encoder else target_lengths + 1
        for layer in moe_layers(part):
            i = layers.index(layer)
            frames = records[i].frames[1]
            real = (torch.arange(frames) < part_lengths[:, None]).flatten()
            assert torch.equal(records[i].real, real) and not real.all()
            losses.append(_reference_balance_loss(logits[i], real, top_k=2))
        expected = expected + 0.01 * torch.stack(losses).mean()
    torch.testing.assert_close(out["loss_aux"], expected, rtol=1e-6, atol=0)


def test_eval_forward_records_routing_without_changing_outputs():
    model = tiny_model("moe")
    feats, lengths, targets, target_lengths = _u2_batch()
    with torch.no_grad():
        first = model(feats, lengths, targets, target_lengths)
        for layer in moe_layers(model):
            layer.router.record = None
        second = model(feats, lengths, targets, target_lengths)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    for layer in moe_layers(model):
        record = layer.router.record
        counts = record.counts()
        assert counts.shape == (2, 4)
        # every real frame chose exactly one expert at each rank
        assert torch.equal(counts.sum(dim=1), record.n_frames.expand(2))
        assert record.n_frames < record.logits.shape[0]  # padding left out
        torch.testing.assert_close(record.mean_probability().sum(), torch.tensor(1.0))


def test_set_top_k_changes_routing_on_every_layer_and_checks_k():
    model = tiny_model("moe")
    feats, lengths, targets, target_lengths = _u2_batch()
    set_top_k(model, 1)
    assert all(layer.top_k == 1 for layer in moe_layers(model))
    with torch.no_grad():
        model(feats, lengths, targets, target_lengths)
    layer = moe_layers(model.encoder)[0]
    assert layer.router.record.experts.shape[1] == 1
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(layer(x), layer.forward_reference(x), atol=1e-5, rtol=1e-5)
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 4\]"):
            set_top_k(model, bad)
    assert all(layer.top_k == 1 for layer in moe_layers(model))  # unchanged by a bad k
    with pytest.raises(ValueError, match="no MoE layer"):
        set_top_k(FeedForward(8, 16, nn.SiLU()), 1)


def test_packed_layer_runs_its_parents_init_and_shares_the_router():
    moe = MoEFeedForward(16, 32, nn.SiLU(), n_experts=4, top_k=2).eval()
    packed = PackedMoEFeedForward(moe, "float32")
    assert packed.router is moe.router and packed.top_k == 2 and packed.n_experts == 4
    assert not any(p.is_meta for p in packed.parameters())
    assert set(packed.state_dict()) == {"router.weight"}
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), moe(x), atol=1e-5, rtol=1e-5)
    assert packed.router.record.frames == (2, 5)


def test_a_layer_copies_after_a_training_forward_without_its_record():
    moe = MoEFeedForward(8, 16, nn.SiLU(), n_experts=4, top_k=2)
    moe(torch.randn(3, 8)).sum().backward()
    copied = copy.deepcopy(moe)
    assert copied.router.record is None and moe.router.record is not None
    assert copied.top_k == 2 and torch.equal(copied.router.weight, moe.router.weight)


def test_expert_counts_sum_the_records_of_real_frames_over_forwards():
    model = tiny_model("moe")
    counts = ExpertCounts(model)
    assert len(counts.layers) == 2 * 2 + 2  # two macaron FFNs per encoder layer, decoders
    feats, lengths, targets, target_lengths = _u2_batch()
    with torch.no_grad():
        for _ in range(2):
            model(feats, lengths, targets, target_lengths)
            counts.add()
    layer_name, layer = next(iter(counts.layers.items()))
    record = layer.router.record
    assert torch.equal(counts.counts[layer_name], 2 * record.counts())
    assert float(counts.frames[layer_name]) == 2 * float(record.n_frames)
    for fractions in counts.fractions().values():
        assert sum(fractions) == pytest.approx(2.0)  # top-2: each frame visits two experts
    counts.reset()
    assert all(f == [0.0] * 4 for f in counts.fractions().values())
