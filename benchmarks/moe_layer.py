"""One FFN layer: dense vs MoE (reference loop) vs MoE (fast dispatch), side by side.

    python benchmarks/moe_layer.py                      # d 512, d_ff 2048, 8 experts, top-2
    python benchmarks/moe_layer.py --layers 8           # weights streamed from DRAM
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --layers 8  # on a GPU

Every variant runs on the same input, repetitions interleaved (dense, ref, fast, dense,
...) and the median taken, so the ratios compare like with like on a shared machine.
Weights (`--weights`): eager nn.Parameters through F.linear (the training path), or
packed once for CPU inference by `u2moe.model.packing.pack_for_cpu` (fp32 or int8); each
MoE ratio is to the dense FFN with the same weights.

Floors printed beside the ratios:
- compute: top_k (each frame runs top_k expert FFNs, each as costly as the dense FFN);
- experts: the expert GEMMs alone on their routed blocks (no routing, gather or mixing),
  what any dispatch running one GEMM pair per selected expert must pay;
- memory: distinct experts selected per call x bytes of one expert / bytes of the dense
  FFN, what a call costs when reading weights dominates (small chunks on CPU); an expert
  has the dense FFN's shape, so this is the number of distinct experts selected.
`--layers N` cycles through N independent copies of each layer, so that the weights of
dense and MoE alike come from DRAM as in a whole model (22 blocks do not fit any cache);
with 1 the dense FFN (8 MB) stays in the last-level cache while the experts (64 MB) may not.
`moe_grp` is the same fast dispatch with its experts as two grouped GEMMs
(`forward(x, grouped=True)`, `torch._grouped_mm`, offsets kept on the device), beside
`moe_fast` with the per-expert loop (`grouped=False`); eager weights only (d_model and
d_ff multiples of 8). It is what `forward` picks on a GPU with bf16 (`--device cuda
--dtype bfloat16`); on CPU it runs too, no faster than the loop at d 512, d_ff 2048
(docs/BENCHMARKS.md). On CUDA each timing synchronizes the device before and after, and
packed weights do not apply.
Inputs are smooth in time (`--input smooth`, neighbouring frames close, like encoder
activations, so they often choose the same experts) or i.i.d. (`--input iid`).
"""

import argparse
import functools
import statistics
import time

import torch
from torch import nn

from u2moe.model.moe import FeedForward, MoEFeedForward
from u2moe.model.packing import pack_for_cpu

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def make_input(frames: int, d_model: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(1, frames, d_model): i.i.d. Gaussian, or an AR(1) process with correlation 0.9."""
    noise = torch.randn(frames, d_model, generator=generator)
    if kind == "smooth":
        for t in range(1, frames):
            noise[t] = 0.9 * noise[t - 1] + 0.19**0.5 * noise[t]
    return noise.unsqueeze(0)


def distinct_experts(layers: list[MoEFeedForward], x: torch.Tensor) -> float:
    """Mean over layers of how many different experts the frames of x select."""
    counts = [layer.route(x.reshape(-1, x.shape[-1]))[1].unique().numel() for layer in layers]
    return sum(counts) / len(counts)


def experts_alone(layer: MoEFeedForward, x: torch.Tensor):
    """A callable running only the expert GEMMs on the blocks x routes to (no routing,
    gather or mixing): the floor for any dispatch with one GEMM pair per expert."""
    flat = x.reshape(-1, x.shape[-1])
    experts = layer.route(flat)[1]
    blocks = [(e, flat[(experts == e).any(-1)]) for e in range(layer.n_experts)]
    blocks = [(e, block) for e, block in blocks if len(block)]
    return lambda _: [layer.expert(e, block) for e, block in blocks]


def sync(x: torch.Tensor) -> None:
    """Wait for the device of x (GPU kernels run asynchronously)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def time_variants(variants: dict, x: torch.Tensor, reps: int, clock=time.perf_counter):
    """Median seconds per layer call of each variant (a list of layer callables)."""
    times = {name: [] for name in variants}
    for fns in variants.values():  # warm-up: allocator, packing, caches, GPU kernels
        for fn in fns:
            fn(x)
    for _ in range(reps):
        for name, fns in variants.items():
            sync(x)
            start = clock()
            for fn in fns:
                fn(x)
            sync(x)
            times[name].append((clock() - start) / len(fns))
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_variants(args, weights: str) -> tuple[dict, list[MoEFeedForward]]:
    """Dense, MoE reference, MoE fast (loop) and, for eager weights, MoE fast with grouped
    GEMMs: layer callables, args.layers copies each."""
    torch.manual_seed(0)  # the same weights for every backend
    dtype = getattr(torch, args.dtype)
    dense = [FeedForward(args.d_model, args.d_ff, nn.SiLU()) for _ in range(args.layers)]
    moe = [
        MoEFeedForward(args.d_model, args.d_ff, nn.SiLU(), args.experts, args.top_k)
        for _ in range(args.layers)
    ]
    dense = [m.eval().to(args.device, dtype) for m in dense]
    moe = [m.eval().to(args.device, dtype) for m in moe]
    if weights != "eager":
        dense = [pack_for_cpu(m, weights) for m in dense]
        moe = [pack_for_cpu(nn.ModuleList([m]), weights)[0] for m in moe]
    variants = {
        "dense": dense,
        "moe_ref": [m.forward_reference for m in moe],
        "moe_fast": [functools.partial(m, grouped=False) for m in moe],
    }
    if weights == "eager":  # packed layers have no stacked weights to group
        variants["moe_grp"] = [functools.partial(m, grouped=True) for m in moe]
    return variants, moe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 250, 1000, 4000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1, help="independent copies cycled")
    parser.add_argument("--input", choices=["smooth", "iid"], default="smooth")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--weights",
        nargs="+",
        choices=["eager", "float32", "int8"],
        help="eager: nn.Parameters through F.linear; float32/int8: pack_for_cpu "
        "(default: all three on cpu, eager on cuda)",
    )
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per row (about)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, robust to other jobs on a shared machine (1 thread)",
    )
    args = parser.parse_args()
    args.weights = args.weights or (
        ["eager", "float32", "int8"] if args.device == "cpu" else ["eager"]
    )
    if args.dtype != "float32" and args.weights != ["eager"]:
        parser.error("packed weights are float32 or int8; use --weights eager with bfloat16")
    if args.device == "cuda" and args.weights != ["eager"]:
        parser.error("packed weights are for CPU; use --weights eager with --device cuda")
    if args.device == "cuda" and args.clock != "wall":
        parser.error("GPU time is not process CPU time; use --clock wall with --device cuda")

    print(
        f"d_model {args.d_model}, d_ff {args.d_ff}, {args.experts} experts, top-{args.top_k}, "
        f"{args.dtype}, {args.device}, {args.layers} layer copies, {args.input} input, "
        f"{args.clock} clock; compute floor {float(args.top_k):.1f}"
    )
    generator = torch.Generator().manual_seed(0)
    inputs = {n: make_input(n, args.d_model, args.input, generator) for n in args.frames}
    backends = {w: build_variants(args, w) for w in args.weights}
    dtype = getattr(torch, args.dtype)
    # On a GPU the CPU thread count does not matter: one pass with the current one.
    for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        where = f"{threads} thread(s)" if args.device == "cpu" else args.device
        print(f"\n{where}: ms per layer call; ratios to dense of the same weights")
        print(
            f"{'frames':>6} {'weights':>8} {'dense':>9} {'moe_ref':>9} {'moe_fast':>9}"
            f" {'ref/dense':>9} {'fast/dense':>10} {'fast/ref':>8} {'mem floor':>9}"
            f" {'experts/dense':>13} {'fast/experts':>12}"
            f" {'moe_grp':>9} {'grp/dense':>9} {'grp/fast':>8}"
        )
        for frames, x in inputs.items():
            x = x.to(args.device, dtype)
            for weights, (variants, moe) in backends.items():
                with torch.inference_mode():
                    probe = time_variants({"dense": variants["dense"]}, x, reps=1)["dense"]
                    reps = max(5, min(200, int(args.budget / (probe * args.layers * 6))))
                    alone = {"experts": [experts_alone(m, x) for m in moe]}
                    t = time_variants({**variants, **alone}, x, reps, CLOCKS[args.clock])
                    experts = distinct_experts(moe, x)
                print(
                    f"{frames:>6} {weights:>8} {t['dense'] * 1e3:>9.3f} {t['moe_ref'] * 1e3:>9.3f}"
                    f" {t['moe_fast'] * 1e3:>9.3f} {t['moe_ref'] / t['dense']:>9.2f}"
                    f" {t['moe_fast'] / t['dense']:>10.2f} {t['moe_fast'] / t['moe_ref']:>8.2f}"
                    f" {experts:>9.1f} {t['experts'] / t['dense']:>13.2f}"
                    f" {t['moe_fast'] / t['experts']:>12.2f}"
                    + (
                        f" {t['moe_grp'] * 1e3:>9.3f} {t['moe_grp'] / t['dense']:>9.2f}"
                        f" {t['moe_grp'] / t['moe_fast']:>8.2f}"
                        if "moe_grp" in t
                        else f" {'-':>9} {'-':>9} {'-':>8}"
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
