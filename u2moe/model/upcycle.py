"""Upcycling (UME's recipe): a dense model becomes a MoE model whose experts start as copies
of the dense FFN they replace.

Every dense FFN of the encoder (both macaron halves) and of the decoders becomes a MoE layer
with `n_experts` copies of its weights and a fresh router. The top-k weights sum to one, so
over identical experts the MoE layer computes exactly what the dense FFN did, whatever the
router says: without noise the upcycled model's outputs equal the dense model's. `noise`
adds Gaussian noise (std `noise` times each weight tensor's own std) to every copy but the
first, so that the experts can diverge once training starts.

The router starts normal (small random logits) by default: frames then reach different
experts, whose gradients differ, so the copies diverge. A zero router without noise is a
fixed point of training without dropout: every frame picks the same two experts at weight
1/2, both get the same gradient and the router none, and the model stays dense forever.
"""

import dataclasses
import logging
from typing import Literal

import torch

from u2moe.errors import UserError
from u2moe.model.config import FFNConfig, ModelConfig
from u2moe.model.moe import FeedForward
from u2moe.model.u2 import U2Model

log = logging.getLogger("u2moe")

RouterInit = Literal["zeros", "normal"]
ROUTER_STD = 0.02  # "normal" router init: small logits, so the first steps route near-uniformly


def upcycled_config(cfg: ModelConfig, n_experts: int, top_k: int) -> ModelConfig:
    """The same model with every dense FFN turned into a MoE layer of n_experts, top_k."""
    if not 1 <= top_k <= n_experts:
        raise UserError(f"--top-k {top_k} must be in [1, --experts {n_experts}]")
    sides = [side for side in ("encoder", "decoder") if getattr(cfg, side).ffn.type == "dense"]
    if not sides:
        raise UserError("the model has no dense FFN to upcycle: encoder and decoder are MoE")
    moe = FFNConfig(type="moe", n_experts=n_experts, top_k=top_k)
    changes = {side: dataclasses.replace(getattr(cfg, side), ffn=moe) for side in sides}
    return dataclasses.replace(cfg, **changes)


def upcycle(
    dense: U2Model,
    n_experts: int = 8,
    top_k: int = 2,
    router_init: RouterInit = "normal",
    noise: float = 0.0,
    seed: int = 0,
) -> U2Model:
    """-> a new U2Model (eval mode) whose MoE layers start from `dense`'s FFNs."""
    if noise < 0:
        raise UserError(f"--noise must be >= 0, got {noise}")
    if router_init == "zeros" and noise == 0:
        log.warning(
            "--router-init zeros without --noise: without dropout the experts stay identical "
            "copies under training (a fixed point); use --router-init normal or --noise > 0"
        )
    model = U2Model(upcycled_config(dense.cfg, n_experts, top_k))
    generator = torch.Generator().manual_seed(seed)
    state = dense.state_dict()
    ffn_names = [name for name, m in dense.named_modules() if isinstance(m, FeedForward)]
    for name in ffn_names:
        if not isinstance(model.get_submodule(name), FeedForward):
            for part in ("w_1", "w_2"):
                state[f"{name}.{part}"] = _copies(state.pop(f"{name}.{part}.weight"), n_experts)
                bias = state.pop(f"{name}.{part}.bias")
                state[f"{name}.b_{part[-1]}"] = _copies(bias, n_experts)
            router = torch.zeros(n_experts, dense.cfg.encoder.d_model)
            if router_init == "normal":
                router.normal_(0.0, ROUTER_STD, generator=generator)
            state[f"{name}.router.weight"] = router
    if noise > 0:
        for key, value in state.items():
            if key.endswith((".w_1", ".w_2", ".b_1", ".b_2")) and value.dim() >= 2:
                scale = noise * value[0].float().std()
                value[1:] += scale * torch.randn(value[1:].shape, generator=generator)
    model.load_state_dict(state)
    return model.eval()


def _copies(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """(…) -> (n, …): n independent copies."""
    return tensor.detach().unsqueeze(0).repeat(n, *([1] * tensor.dim()))
