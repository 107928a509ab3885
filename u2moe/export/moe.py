"""The three ONNX forms of a MoE layer, swapped in for export.

- `contrib`: onnxruntime's `com.microsoft::MoE` operator (one node per layer; its CPU kernel
  runs only the experts that frames selected). Inputs `input (N, d)`, `router_probs` (the
  router's logits, (N, E)), `fc1_experts_weights (E, d_ff, d)`, `fc1_experts_bias (E, d_ff)`,
  `fc2_experts_weights (E, d, d_ff)`, `fc2_experts_bias (E, d)`; attributes `k`,
  `activation_type` (silu = Swish, relu), `normalize_routing_weights=1` (softmax over all
  logits renormalized over the top k = softmax over the top-k logits).
- `sorted`: the layer's own sorted dispatch (`MoEFeedForward.forward`) through torch.export;
  every expert runs on its block of the sorted frames, a possibly empty one.
- `dense`: every expert on every frame, mixed by the (zero outside the top k) router
  weights; the slow baseline.

Parameters are read by name (router.weight, w_1, b_1, w_2, b_2) from the model's layers.
"""

import copy

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from torch import nn

FORMS = ("contrib", "sorted", "dense")
_ACTIVATIONS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.GELU: "gelu"}
MSFT = onnxscript.values.Opset("com.microsoft", 1)


def is_moe(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("router", "w_1", "b_1", "w_2", "b_2", "top_k"))


def activation_name(module: nn.Module) -> str:
    """The MoE operator's activation_type of an expert activation module."""
    for cls, name in _ACTIVATIONS.items():
        if isinstance(module.activation, cls):
            return name
    raise ValueError(f"no ONNX MoE activation for {type(module.activation).__name__}")


@torch.library.custom_op("u2moe::moe", mutates_args=())
def moe_op(
    x: torch.Tensor,
    logits: torch.Tensor,
    w_1: torch.Tensor,
    b_1: torch.Tensor,
    w_2: torch.Tensor,
    b_2: torch.Tensor,
    k: int,
    activation: str,
) -> torch.Tensor:
    """What com.microsoft::MoE computes: x (N, d), logits (N, E) -> (N, d)."""
    weights = torch.zeros_like(logits)
    top, experts = logits.topk(k, dim=-1)
    weights.scatter_(1, experts, top.softmax(dim=-1))
    return dense_experts(x, weights, w_1, b_1, w_2, b_2, activation)


@moe_op.register_fake
def _moe_op_shape(x, logits, w_1, b_1, w_2, b_2, k, activation):
    return torch.empty_like(x)


def moe_op_onnx(x, logits, w_1, b_1, w_2, b_2, k: int, activation: str):
    """The translation of u2moe::moe into the contrib operator (dynamo exporter)."""
    return MSFT.MoE(
        x, logits, w_1, b_1, w_2, b_2, k=k, activation_type=activation, normalize_routing_weights=1
    )


def register_moe_schema() -> None:
    """Declare com.microsoft::MoE to onnx, so that onnxscript can emit it (once a process)."""
    if onnx.defs.has("MoE", "com.microsoft"):
        return
    names = ["input", "router_probs", "fc1_experts_weights", "fc1_experts_bias"]
    names += ["fc2_experts_weights", "fc2_experts_bias"]
    attrs = [("k", OpSchema.AttrType.INT), ("activation_type", OpSchema.AttrType.STRING)]
    attrs.append(("normalize_routing_weights", OpSchema.AttrType.INT))
    schema = OpSchema(
        "MoE",
        "com.microsoft",
        1,
        inputs=[OpSchema.FormalParameter(n, "T") for n in names],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
        attributes=[OpSchema.Attribute(n, t, "") for n, t in attrs],
    )
    onnx.defs.register_schema(schema)


def stable_sort_onnx(x, stable: bool = True, dim: int = -1, descending: bool = False):
    """aten.sort.stable (which the exporter lacks) as ONNX TopK over the whole axis: TopK
    orders equal values by index, a stable sort (the sorted dispatch sorts expert ids)."""
    k = op.Reshape(op.Gather(op.Shape(x), dim), op.Constant(value_ints=[1]))
    values, indices = op.TopK(x, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def searchsorted_onnx(sorted_sequence, values, out_int32: bool = False, right: bool = False):
    """aten.searchsorted (1-d, left side) as a count: for each value, the elements below it."""
    below = op.Less(op.Unsqueeze(sorted_sequence, [0]), op.Unsqueeze(values, [1]))
    return op.ReduceSum(op.Cast(below, to=7), op.Constant(value_ints=[1]), keepdims=0)


TRANSLATIONS = {
    torch.ops.u2moe.moe.default: moe_op_onnx,
    torch.ops.aten.sort.stable: stable_sort_onnx,
    torch.ops.aten.searchsorted.Tensor: searchsorted_onnx,
}


def dense_experts(x, weights, w_1, b_1, w_2, b_2, activation: str) -> torch.Tensor:
    """Every expert on every frame: x (N, d), weights (N, E) -> sum_e weights[:, e] * FFN_e(x)."""
    act = {"silu": nn.functional.silu, "relu": torch.relu, "gelu": nn.functional.gelu}
    h = act[activation](x @ w_1.transpose(1, 2) + b_1.unsqueeze(1))  # (E, N, d_ff)
    y = h @ w_2.transpose(1, 2) + b_2.unsqueeze(1)  # (E, N, d)
    return (weights.t().unsqueeze(-1) * y).sum(dim=0)


class ExportMoE(nn.Module):
    """A MoE layer in the `contrib` or `dense` form: x (..., d) -> (..., d)."""

    def __init__(self, layer: nn.Module, form: str):
        super().__init__()
        self.router = layer.router
        self.w_1, self.b_1, self.w_2, self.b_2 = layer.w_1, layer.b_1, layer.w_2, layer.b_2
        self.top_k, self.form = layer.top_k, form
        self.activation = activation_name(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        params = (self.w_1, self.b_1, self.w_2, self.b_2)
        if self.form == "contrib":
            y = moe_op(x, logits, *params, self.top_k, self.activation)
        else:
            top, experts = logits.topk(self.top_k, dim=-1)
            weights = torch.zeros_like(logits).scatter(1, experts, top.softmax(dim=-1))
            y = dense_experts(x, weights, *params, self.activation)
        return y.reshape(shape)


def with_moe_form(model: nn.Module, form: str) -> nn.Module:
    """A copy of `model` whose MoE layers take `form` (`sorted`: the model as it is)."""
    if form not in FORMS:
        raise ValueError(f"MoE form must be one of {FORMS}, got {form!r}")
    if form == "sorted":
        return model
    if is_moe(model):
        return ExportMoE(model, form)
    model = copy.copy(model)  # the modules below are replaced on shallow copies only
    model._modules = dict(model._modules)
    for name, child in model._modules.items():
        if child is None:
            continue
        model._modules[name] = with_moe_form(child, form)
    return model


def has_moe(model: nn.Module) -> bool:
    return any(is_moe(m) for m in model.modules())
