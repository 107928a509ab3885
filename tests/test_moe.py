import pytest
import torch
from torch import nn

from u2moe.model.moe import FeedForward, MoEFeedForward


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
