"""Feed-forward layers: the dense FFN and the Mixture-of-Experts FFN that replaces it.

MoE (U2++ MoE, arXiv 2404.16407): a linear router scores n_experts per frame, the
top_k raw logits are softmax-normalized, and the output is the weighted sum of the
selected experts, each a dense FFN. No auxiliary loss unless asked for.

Routing has one owner, the `Router` (logits, top-k, weights). On every forward it leaves
a `RoutingRecord` of what it saw (logits, chosen experts, which frames were real); the
Switch load-balancing loss (`balance_loss`), expert utilization summed over forwards
(`ExpertCounts`, which the training logs use) and anything else that wants routing
statistics read that record, nothing else. `set_top_k(model, k)` changes k at inference.

Expert weights are stacked into (n_experts, ...) tensors so that dispatch can index
them without Python-level module lists. For CPU inference, `u2moe.model.packing` swaps in
the same layer with prepacked fp32 or int8 expert weights (only `expert` differs).

`MoEFeedForward.forward` sorts the frame-slots by expert, then runs the experts one of
two ways on the sorted frames:
- loop (CPU, and every other case): one F.linear pair per expert that received frames;
  the block bounds are read on the host (`.tolist()`), a device sync on GPUs.
- grouped GEMM (CUDA, bf16 tensors or bf16 autocast, eager): each of the two expert GEMMs
  for all experts in one `torch._grouped_mm` call, the block ends (cumulative per-expert
  counts, int32) staying on the device, so the layer never waits for the host; biases are
  gathered per row by expert id. PyTorch's fast kernel for it is bf16 on SM90/SM100
  (Hopper, Blackwell); other GPUs fall back inside PyTorch to a loop that copies the
  offsets to the host. Not measured on a GPU in this project yet (docs/BENCHMARKS.md).
  `torch._grouped_mm` also runs on CPU (fp32, bf16, fp16), no faster than the loop
  there, so CPU takes it only when asked (`forward(x, grouped=True)`, what the tests do).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from u2moe.model.config import FFNConfig
from u2moe.model.mask import make_pad_mask


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


@dataclass
class RoutingRecord:
    """What a router saw in its last forward: N frames, E experts, top-k.

    logits (N, E): router logits (with their gradient in training); experts (N, k): the
    chosen experts, best first; frames: the input's leading shape (e.g. (B, T), N = B*T);
    real (N,) bool: the frames that are not padding, None while all count (the model,
    which knows the lengths, marks them with `mark_real`). Every summary below is over
    the real frames only and stays on the device (no host sync).
    """

    logits: torch.Tensor
    experts: torch.Tensor
    frames: tuple[int, ...]
    real: torch.Tensor | None = None

    def mark_real(self, lengths: torch.Tensor) -> None:
        """Frames past each sequence's length are padding: lengths (B,) for frames (B, T)."""
        if len(self.frames) != 2 or self.frames[0] != lengths.numel():
            raise ValueError(f"lengths {tuple(lengths.shape)} do not fit frames {self.frames}")
        self.real = ~make_pad_mask(lengths, self.frames[1]).flatten()

    def _real_weights(self) -> torch.Tensor:
        """(N,) 1.0 for a real frame, 0.0 for padding, in float32."""
        if self.real is None:
            return self.logits.new_ones(self.logits.shape[0], dtype=torch.float32)
        return self.real.float()

    @property
    def n_frames(self) -> torch.Tensor:
        """Real frames (a 0-dim float tensor)."""
        return self._real_weights().sum()

    def counts(self) -> torch.Tensor:
        """(k, E) real frames that chose each expert at each rank (row 0: first choice)."""
        k, n_experts = self.experts.shape[1], self.logits.shape[1]
        real = self._real_weights().expand(k, -1)
        counts = real.new_zeros(k, n_experts)
        return counts.scatter_add_(1, self.experts.detach().T, real)

    def mean_probability(self) -> torch.Tensor:
        """(E,) the router's softmax probability of each expert, averaged over real frames."""
        real = self._real_weights()
        probs = self.logits.float().softmax(dim=-1)
        return (probs * real[:, None]).sum(dim=0) / real.sum().clamp(min=1)

    def balance_loss(self) -> torch.Tensor:
        """Switch Transformer's load-balancing loss n_experts * sum_e f_e * P_e: f_e the
        fraction of routed slots (frame, rank) that chose expert e, P_e its mean router
        probability. 1.0 when balanced, n_experts when one expert takes everything."""
        slots = self.counts().sum(dim=0)
        fraction = slots / slots.sum().clamp(min=1)
        return self.logits.shape[1] * (fraction * self.mean_probability()).sum()


class Router(nn.Linear):
    """Scores n_experts per frame and picks the top_k: x (..., d) -> logits (..., E).

    A bias-free nn.Linear (its parameter stays `router.weight` in state dicts) that also
    owns top_k (settable at inference, see `set_top_k`) and, after each `route`, the
    `record` of what it saw.
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, device=None):
        super().__init__(d_model, n_experts, bias=False, device=device)
        self.n_experts = n_experts
        self.top_k = top_k
        self.record: RoutingRecord | None = None

    @property
    def top_k(self) -> int:
        return self._top_k

    @top_k.setter
    def top_k(self, k: int) -> None:
        if not 1 <= k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={self.n_experts}], got {k}")
        self._top_k = k

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., d) -> weights (N, k) summing to 1, experts (N, k) int64, N frames.

        The top_k raw logits are softmax-normalized (in float32); `record` is replaced.
        """
        logits = self(x.reshape(-1, x.shape[-1]))  # (N, E)
        top, experts = logits.topk(self.top_k, dim=-1)
        weights = top.float().softmax(dim=-1).to(x.dtype)
        if not torch.compiler.is_exporting():  # an exported graph keeps no Python state
            self.record = RoutingRecord(logits, experts, tuple(x.shape[:-1]))
        return weights, experts

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}"

    def __getstate__(self) -> dict:
        # Copies and pickles leave the record behind: it describes this router's last
        # forward, and its logits (non-leaf tensors in training) cannot be deep-copied.
        return {**self.__dict__, "record": None}


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of `n_experts` FFNs. x: (..., d_model) -> (..., d_model).

    The `router` (a `Router`) picks the experts; this layer dispatches the frames to them.
    Parameters: router.weight (E, d); w_1 (E, d_ff, d), b_1 (E, d_ff);
    w_2 (E, d, d_ff), b_2 (E, d). Every frame is routed independently, so padding
    frames never change the output of real frames. device="meta" builds the layer
    without memory (what `PackedMoEFeedForward` does before it swaps in its experts).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: nn.Module,
        n_experts: int = 8,
        top_k: int = 2,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts = n_experts
        self.router = Router(d_model, n_experts, top_k, device=device)
        self.w_1 = nn.Parameter(torch.empty(n_experts, d_ff, d_model, device=device))
        self.b_1 = nn.Parameter(torch.empty(n_experts, d_ff, device=device))
        self.w_2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff, device=device))
        self.b_2 = nn.Parameter(torch.empty(n_experts, d_model, device=device))
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def reset_parameters(self) -> None:
        # Each expert initialized like nn.Linear would initialize it.
        for w, b in ((self.w_1, self.b_1), (self.w_2, self.b_2)):
            bound = 1.0 / w.shape[-1] ** 0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, d) -> weights (N, k) summing to 1, experts (N, k) int64 (see `Router`)."""
        return self.router.route(x)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on frames x: (n, d) -> (n, d)."""
        h = self.dropout(self.activation(F.linear(x, self.w_1[e], self.b_1[e])))
        return F.linear(h, self.w_2[e], self.b_2[e])

    def forward(self, x: torch.Tensor, grouped: bool | None = None) -> torch.Tensor:
        """Fast dispatch: sort the N*k frame-slots by expert once, then run the experts.

        Each expert that received frames runs on one contiguous block of the sorted
        frames (its weights are read once per call, however many frames chose it);
        experts without frames cost nothing. The outputs go back to slot order and are
        mixed with the router weights. The experts run as one GEMM pair per expert (the
        loop) or as two grouped GEMMs over all blocks: `grouped` None picks the grouped
        GEMMs where `grouped_mm_usable(x)`, True forces them (e.g. to test them on CPU),
        False forces the loop. Exportable with torch.export (a dynamic number of
        frames): there, per-expert counts are data-dependent, so every expert runs, on
        a possibly empty block.
        """
        shape = x.shape
        weights, experts = self.route(x)  # (N, k), (N, k)
        x = x.reshape(-1, shape[-1])
        k = experts.shape[1]
        sorted_experts, order = experts.flatten().sort(stable=True)  # slot s: frame s // k
        edges = torch.arange(self.n_experts + 1, device=x.device)
        bounds = torch.searchsorted(sorted_experts, edges)  # block e: [b[e], b[e+1])
        x_sorted = x.index_select(0, order // k)  # (N*k, d); faster than x[...]
        if grouped is None:
            grouped = self.grouped_mm_usable(x)
        if grouped:
            # The block ends are the cumulative per-expert counts; they stay on the device.
            offsets = bounds[1:].to(torch.int32)
            y_sorted = self.grouped_experts(x_sorted, sorted_experts, offsets)
        else:
            bounds = bounds.tolist()  # a host sync on GPUs
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
        y = torch.bmm(weights.unsqueeze(1), y.view(-1, k, shape[-1]))
        return y.reshape(shape)

    def gemm_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype the expert GEMMs run in: autocast's where it is on, else x's."""
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    def grouped_mm_usable(self, x: torch.Tensor) -> bool:
        """Whether `forward` runs the experts as grouped GEMMs by default (x: (N, d)).

        CUDA only (on CPU the loop is faster), bf16 GEMMs (PyTorch's fast grouped kernel
        is bf16 only), rows of 16-byte multiples (its TMA loads need aligned strides),
        fewer than 1024 experts (its limit), and eager mode: under torch.compile/export the
        loop is the path that is tested. An empty batch takes the loop too (nothing to
        gain; it spares the kernel an all-empty problem). x.is_cuda comes first: a packed
        CPU layer (`u2moe.model.packing`) has no stacked weights to look at.

        Offsets need no alignment: the forward GEMMs are jagged in rows, and the weight
        gradients (jagged in the contraction) get a column-major left operand from
        autograd, for which PyTorch's kernel accepts any block sizes, empty ones included.
        """
        if not x.is_cuda or torch.compiler.is_compiling() or x.shape[0] == 0:
            return False
        d_ff, d_model = self.w_1.shape[1:]
        return (
            self.gemm_dtype(x) == torch.bfloat16
            and d_model % 8 == 0
            and d_ff % 8 == 0
            and self.n_experts < 1024
        )

    def grouped_experts(
        self, x: torch.Tensor, experts: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        """Every expert on its block of sorted frames, one `torch._grouped_mm` per GEMM.

        x: (M, d) frames sorted by expert; experts: (M,) their expert ids (sorted);
        offsets: (E,) int32, offsets[e] = end of expert e's block (offsets[-1] == M).
        -> (M, d) in the GEMM dtype. Empty blocks are allowed.
        """
        dtype = self.gemm_dtype(x)  # cast here: autocast leaves _grouped_mm alone (on CPU)
        x = x.to(dtype)
        # w_1.mT: (E, d, d_ff), column-major like F.linear's weight; no copy.
        h = torch._grouped_mm(x, self.w_1.to(dtype).mT, offs=offsets)  # (M, d_ff)
        h = h + self.b_1.to(dtype).index_select(0, experts)  # bias per row, by expert
        h = self.dropout(self.activation(h))
        y = torch._grouped_mm(h, self.w_2.to(dtype).mT, offs=offsets)  # (M, d)
        return y + self.b_2.to(dtype).index_select(0, experts)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain dispatch (a loop over experts with masks): the oracle for `forward`."""
        shape = x.shape
        weights, experts = self.route(x)
        x = x.reshape(-1, shape[-1])
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            frame, slot = torch.nonzero(experts == e, as_tuple=True)
            if frame.numel():
                out[frame] += weights[frame, slot, None] * self.expert(e, x[frame])
        return out.reshape(shape)


class ExpertCounts:
    """Routing of every MoE layer below a model, summed over forwards (`add()` after each):
    per layer (by module name) `counts[name]` (k, E), the real frames that chose each
    expert at each rank, and `frames[name]`, the real frames. What the training logs and
    an experts report read. After `set_top_k`, `reset` before adding again (k changes the
    shape of the counts)."""

    def __init__(self, model: nn.Module):
        self.layers = {
            name: m for name, m in model.named_modules() if isinstance(m, MoEFeedForward)
        }
        self.reset()

    def __bool__(self) -> bool:
        return bool(self.layers)

    def add(self) -> None:
        """Count the last forward's routing of every layer that ran (on its device)."""
        for name, layer in self.layers.items():
            record = layer.router.record
            if record is None:
                continue
            self.counts[name] = self.counts.get(name, 0) + record.counts().detach()
            self.frames[name] = self.frames.get(name, 0) + record.n_frames.detach()

    def reset(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}
        self.frames: dict[str, torch.Tensor] = {}

    def fractions(self) -> dict[str, list[float]]:
        """{layer name: [fraction of real frames each expert processed]}; with top-k a layer's
        fractions sum to k (layers that saw no frames: zeros)."""
        out = {}
        for name, layer in self.layers.items():
            if name not in self.counts:
                out[name] = [0.0] * layer.n_experts
                continue
            frames = max(float(self.frames[name]), 1.0)
            out[name] = (self.counts[name].sum(dim=0).double().cpu() / frames).tolist()
        return out


def make_feed_forward(
    cfg: FFNConfig, d_model: int, d_ff: int, activation: nn.Module, dropout: float = 0.0
) -> nn.Module:
    """The FFN that `cfg.type` names: dense, or MoE with cfg.n_experts and cfg.top_k."""
    if cfg.type == "moe":
        return MoEFeedForward(d_model, d_ff, activation, cfg.n_experts, cfg.top_k, dropout)
    return FeedForward(d_model, d_ff, activation, dropout)


def moe_layers(module: nn.Module) -> list[MoEFeedForward]:
    """Every MoE layer below `module` (itself included), in module order."""
    return [m for m in module.modules() if isinstance(m, MoEFeedForward)]


def mark_real_frames(module: nn.Module, lengths: torch.Tensor) -> None:
    """Tell the MoE layers below `module` which frames of their last input were real:
    lengths (B,) for inputs (B, T, d)."""
    for layer in moe_layers(module):
        layer.router.record.mark_real(lengths)


def balance_loss(module: nn.Module) -> torch.Tensor:
    """The Switch load-balancing loss of the MoE layers below `module` (their last forward,
    real frames only), averaged over the layers."""
    return torch.stack([layer.router.record.balance_loss() for layer in moe_layers(module)]).mean()


def set_top_k(model: nn.Module, k: int) -> None:
    """Route every frame to k experts in every MoE layer below `model` (e.g. fewer at
    inference than in training). A ValueError, naming the layer, if k is not in
    [1, n_experts] for some layer (then no layer is changed); also if there is no MoE layer."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MoEFeedForward)}
    if not layers:
        raise ValueError("top_k: the model has no MoE layer")
    for name, layer in layers.items():
        if not isinstance(k, int) or not 1 <= k <= layer.n_experts:
            raise ValueError(
                f"top_k must be an integer in [1, {layer.n_experts}] (the experts of "
                f"{name or 'the layer'}), got {k!r}"
            )
    for layer in layers.values():
        layer.router.top_k = k
