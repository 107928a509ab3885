"""What the experts do: routing statistics of a model's MoE layers over many forwards.

`RoutingStats` reads each layer's `Router.record` (u2moe/model/moe.py, the one owner of
routing) after every forward, optionally under a group label (a speaker, a voice, ...), and
sums per layer: the real frames that chose each expert at each rank, how often neighbouring
frames keep the same first choice and the same set of experts (what streaming chunks
exploit), and the entropy of the router's softmax over all experts. `report()` turns the
sums into shares; `u2moe experts` (commands/experts.py) writes them as JSON and heatmaps.
"""

import math
from collections import defaultdict

import torch
from torch import nn

from u2moe.model.moe import MoEFeedForward, RoutingRecord


class LayerSums:
    """Running sums of one MoE layer with E experts and top-k routing."""

    def __init__(self, n_experts: int, top_k: int):
        self.counts = torch.zeros(top_k, n_experts, dtype=torch.float64)  # (k, E)
        self.frames = 0.0
        self.pairs = 0.0  # neighbouring real frames
        self.same_top1 = 0.0
        self.same_set = 0.0
        self.entropy = 0.0  # summed over real frames, nats
        self.groups: dict[str, torch.Tensor] = defaultdict(
            lambda: torch.zeros(n_experts, dtype=torch.float64)
        )  # group -> (E,) frame-slots

    def add(self, record: RoutingRecord, group: str | None) -> None:
        counts = record.counts().detach().double().cpu()
        self.counts += counts
        self.frames += float(record.n_frames)
        if group is not None:
            self.groups[group] += counts.sum(dim=0)
        n = record.logits.shape[0]
        real = torch.ones(n, dtype=torch.bool) if record.real is None else record.real.cpu()
        probs = record.logits.detach().float().softmax(dim=-1).cpu()
        self.entropy += float(-(probs * probs.clamp(min=1e-30).log()).sum(dim=-1)[real].sum())
        # Neighbours along time, within each sequence: frames (B, T) or one sequence (N,).
        n_seq = record.frames[0] if len(record.frames) == 2 else 1
        experts = record.experts.detach().cpu().view(n_seq, -1, record.experts.shape[1])
        real = real.view(n_seq, -1)
        pair = real[:, 1:] & real[:, :-1]
        chosen = experts.sort(dim=-1).values
        self.pairs += float(pair.sum())
        self.same_top1 += float((pair & (experts[:, 1:, 0] == experts[:, :-1, 0])).sum())
        self.same_set += float((pair & (chosen[:, 1:] == chosen[:, :-1]).all(dim=-1)).sum())

    def report(self) -> dict:
        """Shares of this layer (see `RoutingStats.report`)."""
        top_k, n_experts = self.counts.shape
        frames = max(self.frames, 1.0)
        slots = self.counts.sum(dim=0)
        share = slots / max(float(slots.sum()), 1.0)
        nonzero = share[share > 0]
        return {
            "n_experts": n_experts,
            "top_k": top_k,
            "frames": int(self.frames),
            "share": share.tolist(),
            "share_by_rank": (self.counts / frames).tolist(),
            "frame_fraction": (slots / frames).tolist(),
            "same_top1": self.same_top1 / max(self.pairs, 1.0),
            "same_set": self.same_set / max(self.pairs, 1.0),
            "router_entropy": self.entropy / frames,
            "usage_entropy": float(-(nonzero * nonzero.log()).sum()),
            "max_entropy": math.log(n_experts),
            "by": {
                group: (c / max(float(c.sum()), 1.0)).tolist() for group, c in self.groups.items()
            },
        }


class RoutingStats:
    """Routing of the MoE layers below `module` (by module name), summed over forwards.

    Call `add(group)` after each forward; the records must have their real frames marked
    (`mark_real_frames`) when the batch holds padding. Layers that did not run are skipped.
    """

    def __init__(self, module: nn.Module):
        self.layers = {
            name: m for name, m in module.named_modules() if isinstance(m, MoEFeedForward)
        }
        self.sums = {name: LayerSums(m.n_experts, m.top_k) for name, m in self.layers.items()}

    def add(self, group: str | None = None) -> None:
        for name, layer in self.layers.items():
            if layer.router.record is not None:
                self.sums[name].add(layer.router.record, group)

    def report(self) -> dict[str, dict]:
        """{layer name: statistics}: over real frames, `share` (E,) of the frame-slots routed
        to each expert (sums to 1); `share_by_rank` (k, E): of the frames, the share whose
        r-th choice was each expert (each row sums to 1); `frame_fraction` (E,): of the
        frames, the share that used each expert (sums to k); `same_top1`, `same_set`: of
        the pairs of neighbouring frames, the share that keep the first choice, the set of
        k experts; `router_entropy`: mean per frame of the entropy (nats) of the softmax
        over all router logits; `usage_entropy`: entropy of `share`; `max_entropy`:
        log(E); `by`: {group: (E,) share of the group's frame-slots per expert}."""
        return {name: sums.report() for name, sums in self.sums.items()}
