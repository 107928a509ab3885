"""Parameter counts of a U2Model: total, active per frame (MoE), and per part of the model.

Active parameters are those one frame (encoder) or one token (decoder) passes through:
everything outside the experts in full, embedding tables and output layers included
(the usual convention), plus, in every MoE layer, the router and top_k of its n_experts.
"""

import re
from dataclasses import dataclass

import torch
from torch import nn

from u2moe.model.config import ModelConfig
from u2moe.model.moe import FeedForward, MoEFeedForward
from u2moe.model.u2 import U2Model


@dataclass
class PartCount:
    name: str
    total: int
    active: int


# (part, pattern on the parameter's name); the first match wins. FFNs are found by type.
_PARTS = [
    ("subsampling", r"encoder\.embed\."),
    ("encoder attention", r"encoder\.encoders\.\d+\.self_attn\."),
    ("encoder convolution", r"encoder\.encoders\.\d+\.conv_module\."),
    ("encoder FFN", None),
    ("encoder norms", r"encoder\."),
    ("decoder embeddings", r"decoder\.\w+\.embed\."),
    ("decoder attention", r"decoder\.\w+\.decoders\.\d+\.(self_attn|src_attn)\."),
    ("decoder FFN", None),
    ("decoder output layers", r"decoder\.\w+\.output_layer\."),
    ("decoder norms", r"decoder\."),
    ("CTC", r"ctc\."),
    ("other", r""),
]


def count_parameters(model: nn.Module) -> list[PartCount]:
    """Per-part counts in a fixed order (empty parts left out); works on the meta device."""
    counts = {name: PartCount(name, 0, 0) for name, _ in _PARTS}
    in_ffn = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, FeedForward | MoEFeedForward):
            continue
        part = counts.get(f"{module_name.split('.')[0]} FFN", counts["other"])
        for param_name, p in module.named_parameters():
            in_ffn.add(f"{module_name}.{param_name}")
            part.total += p.numel()
            expert = isinstance(module, MoEFeedForward) and not param_name.startswith("router.")
            part.active += p.numel() * module.top_k // module.n_experts if expert else p.numel()
    for name, p in model.named_parameters():
        if name in in_ffn:
            continue
        part = next(n for n, pattern in _PARTS if pattern is not None and re.match(pattern, name))
        counts[part].total += p.numel()
        counts[part].active += p.numel()
    return [c for c in counts.values() if c.total]


def count_config(cfg: ModelConfig) -> list[PartCount]:
    """`count_parameters` of the U2Model that `cfg` describes, built on the meta device
    (no memory, so a 1B-parameter config is free to count)."""
    with torch.device("meta"):
        return count_parameters(U2Model(cfg))
