"""One MoE layer in onnxruntime: its three ONNX forms side by side (u2moe/export/moe.py).

    python benchmarks/onnx_moe.py                       # d 512, d_ff 2048, 8 experts, top-2
    python benchmarks/onnx_moe.py --layers 8 --frames 16 250

- contrib: onnxruntime's com.microsoft::MoE operator (runs the experts frames selected);
- sorted: the layer's sorted dispatch through torch.export (every expert on its block of
  the sorted frames, possibly empty);
- dense: every expert on every frame (the slow baseline);
- dense FFN: one plain FFN of the experts' shape, the cost of one expert (reference).
Each form is exported as a model of `--layers` independent layers (weights from memory, as
in a whole encoder), run by onnxruntime with `--threads` intra-op threads on the same
smooth input; repetitions are interleaved and the median per layer is printed with the
ratio to the contrib form. Every form's output is checked against the PyTorch layer.
"""

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from u2moe.export.moe import FORMS
from u2moe.export.onnx import export_onnx
from u2moe.model.moe import FeedForward, MoEFeedForward


def smooth_input(frames: int, d_model: int) -> torch.Tensor:
    """(1, frames, d): an AR(1) process (neighbouring frames close, like encoder frames)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(frames, d_model, generator=g)
    for t in range(1, frames):
        x[t] = 0.9 * x[t - 1] + 0.19**0.5 * x[t]
    return x.unsqueeze(0)


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 250])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    d, d_ff = args.d_model, args.d_ff
    moe = nn.Sequential(
        *(MoEFeedForward(d, d_ff, nn.SiLU(), args.experts, args.top_k) for _ in range(args.layers))
    ).eval()
    dense = nn.Sequential(*(FeedForward(d, d_ff, nn.SiLU()) for _ in range(args.layers))).eval()
    auto = torch.export.Dim.AUTO
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        example = (smooth_input(7, d),)
        for form in FORMS:
            path = Path(tmp) / f"{form}.onnx"
            export_onnx(moe, example, path, ["x"], ["y"], ({1: auto},), form)
            sessions[form] = make_session(path, args.threads)
        path = Path(tmp) / "dense_ffn.onnx"
        export_onnx(dense, example, path, ["x"], ["y"], ({1: auto},), "sorted")
        sessions["dense FFN"] = make_session(path, args.threads)
    print(
        f"{args.layers} layers d {d} d_ff {d_ff}, {args.experts} experts top-{args.top_k}, "
        f"onnxruntime {ort.__version__}, {args.threads} thread(s); ms per layer (median of "
        f"{args.repeats}), ratio to contrib"
    )
    for frames in args.frames:
        x = smooth_input(frames, d)
        with torch.no_grad():
            want = moe(x).numpy()
        feed = {"x": x.numpy()}
        times = {name: [] for name in sessions}
        for name, sess in sessions.items():
            got = sess.run(None, feed)[0]  # warm-up and check
            if name != "dense FFN":
                np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
        for _ in range(args.repeats):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append(time.perf_counter() - start)
        medians = {n: statistics.median(t) * 1e3 / args.layers for n, t in times.items()}
        cells = "  ".join(
            f"{n} {m:7.3f} ms ({m / medians['contrib']:.2f}x)" for n, m in medians.items()
        )
        print(f"{frames:5d} frames: {cells}")


if __name__ == "__main__":
    main()
