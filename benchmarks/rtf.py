"""Real-time factor of the paper-scale models: Dense-225M vs MoE-1B vs Dense-1B.

    python benchmarks/rtf.py                          # CPU, packed fp32 and int8
    python benchmarks/rtf.py --weights eager float32 int8 --durations 5 7.5 10 --threads 2
    python benchmarks/rtf.py --device cuda --weights eager
    python benchmarks/rtf.py --engine torch,onnxruntime,onnxruntime-int8 --models Dense-225M

Random weights (the configs in configs/), random 80-dim features of the given durations
(features are computed the same way for every model, so they are left out). Rows:
- encoder: full context (`model.encode`) or streaming chunk by chunk with caches
  (`encoder.forward_chunk_by_chunk`, all left chunks);
- decode: the encoder, CTC log-probs, CTC prefix beam search, then attention rescoring of
  the n-best with both decoders. A random model's CTC n-best has no realistic length, so
  the rescoring pass scores a forced n-best of `--tokens-per-second` tokens per second.
RTF = seconds of compute / seconds of audio over all utterances: the median of --repeat
passes, the rows of one model interleaved pass by pass (a shared machine drifts);
`--clock cpu` counts CPU seconds instead, which other jobs on the machine do not inflate.
Weights: "eager" (nn.Parameters, the training path), "float32" or "int8" (packed once for
CPU inference by `u2moe.model.packing.pack_for_cpu`). Beside the RTF ratios, the ratio of
FLOPs actually run (counted with torch.utils.flop_counter on the eager model).
Engines (`--engine`): torch (the weights above), onnxruntime / onnxruntime-int8: the model
exported by `u2moe export` (a full-context and a chunk export, all left chunks, the default
MoE form) and run by `u2moe.backends.onnx_backend.OnnxBackend` with --threads intra-op
threads (fp32, or its *.int8.onnx files); rows are the same stages through the Backend.
"""

import argparse
import contextlib
import copy
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from u2moe.backends.torch_backend import TorchBackend
from u2moe.config import load_yaml, parse_section
from u2moe.decode.search import Hypothesis, attention_rescoring, ctc_prefix_beam_search
from u2moe.model.config import ModelConfig
from u2moe.model.packing import pack_for_cpu
from u2moe.model.u2 import U2Model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"Dense-225M": "dense_225m.yaml", "MoE-1B": "moe_1b.yaml", "Dense-1B": "dense_1b.yaml"}
FRAMES_PER_SECOND = 100  # fbank frame shift 10 ms


def build_model(config: Path, device: str) -> U2Model:
    cfg = parse_section(ModelConfig, load_yaml(config)["model"], f"{config}: model")
    torch.manual_seed(0)
    return U2Model(cfg).eval().to(device)


def forced_nbest(n: int, length: int, vocab_size: int, generator) -> list[Hypothesis]:
    """n hypotheses of about `length` tokens (ids between unk and sos/eos)."""
    lengths = [max(1, length + d) for d in torch.randint(-2, 3, (n,), generator=generator)]
    return [
        Hypothesis(torch.randint(2, vocab_size - 1, (k,), generator=generator).tolist(), -1.0)
        for k in lengths
    ]


class TorchEngine:
    """The PyTorch model: encode(feats, chunk) and the Backend its searches use."""

    def __init__(self, model: U2Model):
        self.model = model
        self.backend = TorchBackend(model)

    def encode(self, feats: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (1, T, 80) -> enc (1, T', d), enc_lengths (1,)."""
        model = self.model
        if chunk <= 0:
            return model.encode(feats, torch.tensor([feats.size(1)], device=feats.device))
        enc, mask = model.encoder.forward_chunk_by_chunk(feats, chunk, -1)
        return enc, mask.squeeze(1).sum(1)


class OrtEngine:
    """An `u2moe export` of the model in onnxruntime: one export per chunk setting."""

    def __init__(self, model: U2Model, chunks: list[int], int8: bool, threads: int, tmp: Path):
        from u2moe.backends.onnx_backend import OnnxBackend
        from u2moe.export import DEFAULT_MOE_FORM
        from u2moe.export.onnx import export_onnx_dir

        units = [str(i) for i in range(model.vocab_size)]
        self.backends = {}
        for chunk in chunks:
            out = tmp / f"chunk{chunk}"
            if not out.exists():
                out.mkdir()
                with contextlib.redirect_stdout(io.StringIO()):
                    export_onnx_dir(
                        model, units, out, chunk, -1, DEFAULT_MOE_FORM, True, batch_encoder=False
                    )
                (out / "config.yaml").write_text("export: {format: onnx, int8: true}\n")
            self.backends[chunk] = OnnxBackend(out, int8, threads)
        self.backend = self.backends[chunks[0]]

    def encode(self, feats: torch.Tensor, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        self.backend = self.backends[chunk]
        return self.backend.encode(feats.cpu().numpy(), np.array([feats.size(1)]), chunk, -1)


def decode(engine, feats: torch.Tensor, chunk: int, args, generator) -> None:
    enc, enc_lengths = engine.encode(feats, chunk)
    log_probs = engine.backend.ctc_log_probs(enc)
    ctc_prefix_beam_search(log_probs, enc_lengths, args.beam)
    seconds = feats.size(1) / FRAMES_PER_SECOND
    length = round(args.tokens_per_second * seconds)
    nbest = forced_nbest(args.beam, length, engine.backend.info.vocab_size, generator)
    attention_rescoring(engine.backend, [nbest], enc, enc_lengths, 0.3, 0.3)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def one_pass(engine, utterances: list[torch.Tensor], stage: str, chunk: int, args):
    """Seconds to run one stage ("encoder" or "decode") over all utterances."""
    generator = torch.Generator().manual_seed(0)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sync(args.device)
    start = clock()
    for feats in utterances:
        if stage == "encoder":
            engine.encode(feats, chunk)
        else:
            decode(engine, feats, chunk, args, generator)
    sync(args.device)
    return clock() - start


def measure(engine, utterances: list[torch.Tensor], rows: list, args) -> list[float]:
    """RTF of each (stage, chunk) row: median over --repeat passes, rows interleaved."""
    times = [[] for _ in rows]
    with torch.inference_mode():
        warm_up = [utterances[0][:, : 2 * FRAMES_PER_SECOND]]
        for stage, chunk in rows:
            one_pass(engine, warm_up, stage, chunk, args)
        for _ in range(args.repeat):
            for i, (stage, chunk) in enumerate(rows):
                times[i].append(one_pass(engine, utterances, stage, chunk, args))
    audio = sum(f.size(1) for f in utterances) / FRAMES_PER_SECOND
    return [statistics.median(t) / audio for t in times]


def count_flops(model: U2Model, feats: torch.Tensor, args) -> dict[str, int]:
    """FLOPs actually run on one utterance (full context): encoder, and the whole decode."""
    generator = torch.Generator().manual_seed(0)
    engine = TorchEngine(model)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as encoder_counter:
            engine.encode(feats, -1)
        with FlopCounterMode(display=False) as decode_counter:
            decode(engine, feats, -1, args, generator)
    return {
        "encoder": encoder_counter.get_total_flops(),
        "decode": decode_counter.get_total_flops(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--durations", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--repeat", type=int, default=1, help="passes per row (median)")
    parser.add_argument("--chunk", type=int, default=16, help="streaming chunk (encoder frames)")
    parser.add_argument("--stages", nargs="+", choices=["encoder", "decode"], default=None)
    parser.add_argument("--weights", nargs="+", choices=["eager", "float32", "int8"], default=None)
    parser.add_argument(
        "--engine", default="torch", help="comma-separated: torch, onnxruntime, onnxruntime-int8"
    )
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--tokens-per-second", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time per audio second (with --threads 1: robust to other jobs)",
    )
    args = parser.parse_args()
    stages = args.stages or ["encoder", "decode"]
    engines = args.engine.split(",")
    if set(engines) - {"torch", "onnxruntime", "onnxruntime-int8"}:
        parser.error(f"--engine: unknown engine in {args.engine!r}")
    weights = args.weights or (["float32", "int8"] if args.device == "cpu" else ["eager"])
    # a "weights" column per row: torch's packings, then the onnxruntime engines
    columns = (weights if "torch" in engines else []) + [e for e in engines if e != "torch"]
    if args.device != "cpu" and weights != ["eager"]:
        parser.error("packed float32/int8 weights are for CPU; use --weights eager on GPU")
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    utterances = [
        torch.randn(1, round(d * FRAMES_PER_SECOND), 80, generator=generator).to(args.device)
        for d in args.durations
    ]
    modes = {"full": -1, f"chunk{args.chunk}": args.chunk}
    print(
        f"{args.device}, {args.threads} thread(s), {args.clock} clock; {len(utterances)} "
        f"utterances, {sum(args.durations):.1f} s of audio; beam {args.beam}, "
        f"{args.tokens_per_second:g} tokens/s in the rescored n-best"
    )
    rtf, flops = {}, {}
    rows = [(stage, mode) for stage in stages for mode in modes]
    tmp = tempfile.TemporaryDirectory()
    for name in args.models:
        model = build_model(CONFIGS / MODELS[name], args.device)
        flops[name] = count_flops(model, utterances[-1], args)
        for w in columns:
            if w.startswith("onnxruntime"):
                exports = Path(tmp.name) / name
                exports.mkdir(exist_ok=True)
                engine = OrtEngine(
                    model, list(modes.values()), w.endswith("int8"), args.threads, exports
                )
            else:
                engine = TorchEngine(
                    model if w == "eager" else pack_for_cpu(copy.deepcopy(model), w)
                )
            values = measure(engine, utterances, [(st, modes[m]) for st, m in rows], args)
            for (stage, mode), value in zip(rows, values, strict=True):
                rtf[name, w, stage, mode] = value
                print(f"{name:>10} {w:>16} {stage:>7} {mode:>7}  RTF {value:.4f}", flush=True)
            del engine
        del model
    tmp.cleanup()

    print("\nratios of RTF (and of FLOPs run, full context):")
    pairs = [
        (a, b)
        for a, b in (("MoE-1B", "Dense-225M"), ("MoE-1B", "Dense-1B"))
        if a in args.models and b in args.models
    ]
    for a, b in pairs:
        for stage in stages:
            flop_ratio = flops[a][stage] / flops[b][stage]
            cells = [
                f"{w} {mode} {rtf[a, w, stage, mode] / rtf[b, w, stage, mode]:.2f}"
                for w in columns
                for mode in modes
            ]
            print(f"{a} / {b} {stage:>7}: " + ", ".join(cells) + f"  (FLOPs {flop_ratio:.2f})")


if __name__ == "__main__":
    main()
