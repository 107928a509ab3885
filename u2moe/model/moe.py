"""Feed-forward layers: the dense FFN and the Mixture-of-Experts FFN that replaces it.

MoE (U2++ MoE, arXiv 2404.16407): a linear router scores n_experts per frame, the
top_k raw logits are softmax-normalized, and the output is the weighted sum of the
selected experts, each a dense FFN. No auxiliary loss unless asked for.

Expert weights are stacked into (n_experts, ...) tensors so that dispatch can index
them without Python-level module lists. For CPU inference, `u2moe.model.packing` swaps in
the same layer with prepacked fp32 or int8 expert weights (only `expert` differs).
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
        """Fast dispatch: sort the N*k frame-slots by expert once, one GEMM pair per expert.

        Each expert that received frames runs on one contiguous block of the sorted
        frames (its weights are read once per call, however many frames chose it);
        experts without frames cost nothing. The outputs go back to slot order and are
        mixed with the router weights. Exportable with torch.export (a dynamic number of
        frames): there, per-expert counts are data-dependent, so every expert runs, on
        a possibly empty block.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = self.route(x)  # (N, k), (N, k)
        sorted_experts, order = experts.flatten().sort(stable=True)  # slot s: frame s // k
        edges = torch.arange(self.n_experts + 1, device=x.device)
        bounds = torch.searchsorted(sorted_experts, edges).tolist()  # block e: [b[e], b[e+1])
        x_sorted = x.index_select(0, order // self.top_k)  # (N*k, d); faster than x[...]
        # Compiling/exporting, block sizes are symbolic: no branch on them, every expert runs.
        run_all = torch.compiler.is_compiling() or x.shape[0] == 0
        y_sorted = torch.cat(
            [
                self.expert(e, x_sorted[bounds[e] : bounds[e + 1]])
                for e in range(self.n_experts)
                if run_all or bounds[e + 1] > bounds[e]
            ]
        )
        y = y_sorted.index_select(0, order.argsort())  # (N*k, d) back in slot order
        y = torch.bmm(weights.unsqueeze(1), y.view(-1, self.top_k, shape[-1]))
        return y.reshape(shape)

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
