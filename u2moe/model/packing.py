"""Weights packed once for CPU inference: fp32 in oneDNN's blocked layout, or int8.

MoE experts see small GEMMs (a 16-frame streaming chunk gives each selected expert a
handful of frames), where `F.linear` (MKL sgemm, weight in PyTorch's layout) is slow per
row. oneDNN with weights packed once, ahead of time, measured about 2x faster on a 4-row
GEMM and 1.15x on a 250-row one (docs/BENCHMARKS.md).

- "float32": oneDNN prepacked fp32 weights, same numbers as `F.linear` up to summation
  order (what torch.compile's CPU freezing does to linear layers).
- "int8": dynamic quantization (fbgemm / oneDNN), as torch.ao's `quantize_dynamic` in
  WeNet's CPU runtime: int8 weights per output channel, activations quantized per call.

`pack_for_cpu(model, weights)` replaces, in place, every nn.Linear by a `PackedLinear`
and every MoE layer by a `PackedMoEFeedForward` (same routing and dispatch, only the
experts differ; routers stay fp32 so the int8 model picks the same experts). Inference
only: packed weights take no gradient, do not move between devices and are not in the
state_dict, so pack a loaded model right before decoding.
"""

import warnings
from typing import Literal

import torch
from torch import nn

from u2moe.model.moe import MoEFeedForward

CpuWeights = Literal["float32", "int8"]


class PackedLinear(nn.Module):
    """A linear map with its weight (out, in) packed for CPU. x: (..., in) -> (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weights: CpuWeights):
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError(f"packing is for CPU inference, got a weight on {weight.device}")
        weight = weight.detach().float()
        bias = None if bias is None else bias.detach().float()
        self.out_features, self.in_features = weight.shape
        self.weights = weights
        if weights == "float32":
            if not torch.backends.mkldnn.is_available():
                raise ValueError("packed float32 weights need a torch build with oneDNN")
            # The batch-size hint tunes the blocked layout; results hold for any batch.
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
            self.bias = bias
        elif weights == "int8":
            scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
            zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # quantized tensors are deprecated, not the kernels
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        else:
            raise ValueError(f"weights must be 'float32' or 'int8', got {weights!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights == "float32":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        # Activations quantized to 7 bits (reduce_range) like torch.ao's dynamic linear:
        # exact int16 accumulation also on CPUs without VNNI.
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, weights={self.weights}"


class PackedMoEFeedForward(MoEFeedForward):
    """An MoEFeedForward whose experts are PackedLinear pairs; the router (fp32) is shared.

    Built as its parent on the meta device (no memory), then the stacked expert weights
    give way to the packed ones.
    """

    def __init__(self, moe: MoEFeedForward, weights: CpuWeights):
        d_ff, d_model = moe.w_1.shape[1:]
        super().__init__(
            d_model, d_ff, moe.activation, moe.n_experts, moe.top_k, moe.dropout.p, "meta"
        )
        self.router, self.dropout = moe.router, moe.dropout
        del self.w_1, self.b_1, self.w_2, self.b_2
        self.experts_in = nn.ModuleList(
            PackedLinear(moe.w_1[e], moe.b_1[e], weights) for e in range(moe.n_experts)
        )
        self.experts_out = nn.ModuleList(
            PackedLinear(moe.w_2[e], moe.b_2[e], weights) for e in range(moe.n_experts)
        )

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts_out[e](self.activation(self.experts_in[e](x)))


def pack_for_cpu(model: nn.Module, weights: CpuWeights = "float32") -> nn.Module:
    """Pack, in place, every nn.Linear and MoE layer below `model`; returns it in eval mode."""
    for name, child in model.named_children():
        if isinstance(child, PackedMoEFeedForward | PackedLinear):
            continue
        if isinstance(child, MoEFeedForward):
            setattr(model, name, PackedMoEFeedForward(child, weights))
        elif isinstance(child, nn.Linear):
            setattr(model, name, PackedLinear(child.weight, child.bias, weights))
        else:
            pack_for_cpu(child, weights)
    return model.eval()
