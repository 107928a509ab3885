"""Feed-forward layers: the dense FFN and the Mixture-of-Experts FFN that replaces it.

MoE (U2++ MoE, arXiv 2404.16407): a linear router scores n_experts per frame, the
top_k raw logits are softmax-normalized, and the output is the weighted sum of the
selected experts, each a dense FFN. No auxiliary loss unless asked for.

Expert weights are stacked into (n_experts, ...) tensors so that dispatch can index
them without Python-level module lists.
"""

import torch
import torch.nn.functional as F
from torch import nn

from u2moe.model.config import FFNConfig


class FeedForward(nn.Module):
    """Position-wise FFN: w_2(dropout(activation(w_1(x)))). x: (..., d_model)."""

    def __init__(self, d_model: int, d_ff: int, activation: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of `n_experts` FFNs. x: (..., d_model) -> (..., d_model).

    Parameters: router.weight (E, d); w_1 (E, d_ff, d), b_1 (E, d_ff);
    w_2 (E, d, d_ff), b_2 (E, d). Every frame is routed independently, so padding
    frames never change the output of real frames.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: nn.Module,
        n_experts: int = 8,
        top_k: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_1 = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.b_1 = nn.Parameter(torch.empty(n_experts, d_ff))
        self.w_2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.b_2 = nn.Parameter(torch.empty(n_experts, d_model))
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()
        # Frames routed to each expert since the last reset (training logs read this).
        self.register_buffer("expert_counts", torch.zeros(n_experts), persistent=False)
        self.track_utilization = False

    def reset_parameters(self) -> None:
        # Each expert initialized like nn.Linear would initialize it.
        for w, b in ((self.w_1, self.b_1), (self.w_2, self.b_2)):
            bound = 1.0 / w.shape[-1] ** 0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, d) -> weights (N, k) summing to 1, experts (N, k) int64."""
        logits, experts = self.router(x).topk(self.top_k, dim=-1)
        weights = logits.float().softmax(dim=-1).to(x.dtype)
        if self.track_utilization:
            self.expert_counts += torch.bincount(experts.flatten(), minlength=self.n_experts)
        return weights, experts

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on frames x: (n, d) -> (n, d)."""
        h = self.dropout(self.activation(F.linear(x, self.w_1[e], self.b_1[e])))
        return F.linear(h, self.w_2[e], self.b_2[e])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast dispatch: sort frame-slots by expert once, one GEMM pair per active expert."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = self.route(x)
        flat_experts = experts.flatten()  # (N*k,) slot s belongs to frame s // k
        order = flat_experts.argsort(stable=True)
        counts = torch.bincount(flat_experts, minlength=self.n_experts).tolist()
        frames = order // self.top_k
        slot_weights = weights.flatten()[order].unsqueeze(-1)
        out = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = frames[start : start + n]
            out.index_add_(0, idx, self.expert(e, x[idx]) * slot_weights[start : start + n])
            start += n
        return out.reshape(shape)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain dispatch (a loop over experts with masks): the oracle for `forward`."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = self.route(x)
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            frame, slot = torch.nonzero(experts == e, as_tuple=True)
            if frame.numel():
                out[frame] += weights[frame, slot, None] * self.expert(e, x[frame])
        return out.reshape(shape)


def make_feed_forward(
    cfg: FFNConfig, d_model: int, d_ff: int, activation: nn.Module, dropout: float = 0.0
) -> nn.Module:
    """The FFN that `cfg.type` names: dense, or MoE with cfg.n_experts and cfg.top_k."""
    if cfg.type == "moe":
        return MoEFeedForward(d_model, d_ff, activation, cfg.n_experts, cfg.top_k, dropout)
    return FeedForward(d_model, d_ff, activation, dropout)
