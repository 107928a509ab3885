"""Streaming server load: N websocket clients on loopback against a `u2moe serve` process.

    python benchmarks/serve.py                                   # demo-sized MoE and dense
    python benchmarks/serve.py --models MoE-1B Dense-225M --clients 1 2 4 8 16 32 64
    python benchmarks/serve.py --models demo-MoE --onnx          # `u2moe serve --onnx`

For each model (random weights from configs/; a random model's text is meaningless, its
compute is not) and each --max-batch (batched, and 1: every stream's chunk alone), a
`u2moe serve` subprocess (chunk 16, 4 left chunks, endpoints off; with --onnx, serving
`u2moe export`'s directory of the model, onnxruntime) takes N clients for N in
--clients, in order, until an N is not real time (with --keep-going, every N). Each client
streams --seconds of audio in 100 ms messages, started within one message of each other:
- real-time pass (messages at the audio's pace): first partial = from a stream's first
  audio to its first partial_result; final = from its end signal to its final_result
  (median and p95 over streams); real time = the p95 final latency is within --slack s;
- fast pass (messages as fast as the server takes them): RTF = wall seconds from the first
  audio to the last final / (N x seconds of audio), the server's aggregate compute per
  second of audio; CPU RTF = the server process's CPU seconds in that pass / (N x seconds
  of audio), which other jobs on a shared machine do not inflate.
The last lines compare the models' largest real-time N (batched) with their ratio of active
parameters per frame (`u2moe info`), the issue's target for MoE-1B vs Dense-225M.
Bounded: --clients caps N, --budget caps the seconds spent per model and setting.
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from websockets.asyncio.client import connect

from u2moe.config import load_yaml, parse_section
from u2moe.export import export_model
from u2moe.model.config import ModelConfig
from u2moe.model.io import save_model_dir
from u2moe.model.params import count_config
from u2moe.model.u2 import U2Model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {
    "demo-MoE": "small.yaml",
    "demo-dense": "small_dense.yaml",
    "MoE-1B": "moe_1b.yaml",
    "Dense-225M": "dense_225m.yaml",
}
MESSAGE_MS = 100


def model_config(name: str) -> ModelConfig:
    section = load_yaml(CONFIGS / MODELS[name])["model"]
    section["vocab_size"] = section.get("vocab_size") or 256  # the demo's BPE vocabulary
    return parse_section(ModelConfig, section, MODELS[name])


def model_dir(name: str, root: Path) -> Path:
    """A random model of the config, saved as a model directory (char units)."""
    cfg = model_config(name)
    torch.manual_seed(0)
    model = U2Model(cfg).eval()
    units = ["<blank>", "<unk>"] + [f"u{i}" for i in range(cfg.vocab_size - 3)] + ["<sos/eos>"]
    decode = {"modes": ["attention_rescoring"], "endpoint": {"enabled": False}}
    save_model_dir(root / name, model, {"data": {}, "decode": decode}, units)
    return root / name


def active_params(name: str) -> int:
    """Parameters a frame runs through, as `u2moe info` counts them."""
    return sum(part.active for part in count_config(model_config(name)))


def test_audio(seconds: float) -> bytes:
    """16-bit PCM: a gliding tone with noise (the model is random; only the length matters)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t) + 0.03 * rng.standard_normal(
        len(t)
    )
    return (wave * 32767).astype("<i2").tobytes()


class ServerProcess:
    def __init__(self, source: list[str], max_batch: int, threads: int):
        """source: `--model DIR` or `--onnx EXPORT_DIR`."""
        command = [sys.executable, "-m", "u2moe", "serve", *source]
        command += ["--port", "0", "--max-batch", str(max_batch), "--max-streams", "4096"]
        command += ["--chunk-size", "16", "--left-chunks", "4", "--idle-timeout", "3600"]
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        for line in self.process.stderr:
            if "serving on " in line:
                self.url = line.split("serving on ")[1].strip()
                break
        else:
            raise SystemExit(f"u2moe serve did not start for {' '.join(source)}")
        # keep reading its log, or a full pipe would stall the server
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (Linux /proc), which other jobs on a shared
        machine do not inflate."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def client(url: str, pcm: bytes, realtime: bool, delay: float) -> tuple[float, float]:
    """(first partial latency, final latency) of one stream, in seconds."""
    await asyncio.sleep(delay)
    async with connect(url, max_size=None, open_timeout=600) as ws:
        await ws.send(json.dumps({"signal": "start", "nbest": 1}))
        assert json.loads(await ws.recv())["type"] == "server_ready"
        step = 32 * MESSAGE_MS
        times = {}

        async def receive():
            async for text in ws:
                kind = json.loads(text).get("type")
                if kind == "partial_result":
                    times.setdefault("partial", time.perf_counter())
                elif kind == "final_result":
                    times["final"] = time.perf_counter()
                    return

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for k, i in enumerate(range(0, len(pcm), step)):
            if realtime:
                await asyncio.sleep(max(0.0, start + k * MESSAGE_MS / 1000 - time.perf_counter()))
            await ws.send(pcm[i : i + step])
        if realtime:  # the end of speech is when the audio's last sample would have come
            await asyncio.sleep(max(0.0, start + len(pcm) / 32000 - time.perf_counter()))
        end = time.perf_counter()
        await ws.send(json.dumps({"signal": "end"}))
        await receiver
    return times.get("partial", times["final"]) - start, times["final"] - end


async def load(url: str, n: int, pcm: bytes, realtime: bool) -> tuple[list, float]:
    """N clients at once: their latencies and the wall seconds until the last final."""
    rng = np.random.default_rng(n)
    delays = rng.uniform(0, MESSAGE_MS / 1000, n)
    start = time.perf_counter()
    results = await asyncio.gather(*(client(url, pcm, realtime, d) for d in delays))
    return results, time.perf_counter() - start


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def run_setting(name: str, source: list[str], max_batch: int, args) -> int:
    """Print a row per N; the largest real-time N."""
    server = ServerProcess(source, max_batch, args.threads)
    pcm = test_audio(args.seconds)
    largest, spent = 0, time.perf_counter()
    try:
        for n in args.clients:
            if time.perf_counter() - spent > args.budget:
                print(f"{name:>13} {max_batch:>5} {n:>4}  (budget of {args.budget:g} s spent)")
                break
            latencies, _ = asyncio.run(load(server.url, n, pcm, realtime=True))
            cpu = server.cpu_seconds()
            _, wall = asyncio.run(load(server.url, n, pcm, realtime=False))
            cpu = server.cpu_seconds() - cpu
            first = [a for a, _ in latencies]
            final = [b for _, b in latencies]
            realtime = p95(final) <= args.slack
            print(
                f"{name:>13} {max_batch:>5} {n:>4} {statistics.median(first):8.2f} "
                f"{p95(first):6.2f} {statistics.median(final):8.2f} {p95(final):6.2f} "
                f"{wall / (n * args.seconds):7.3f} {cpu / (n * args.seconds):7.3f} "
                f"{'yes' if realtime else 'no':>5}",
                flush=True,
            )
            if realtime:
                largest = n
            elif not args.keep_going:
                break
    finally:
        server.stop()
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo-MoE", "demo-dense"], choices=MODELS)
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-batch", nargs="+", type=int, default=[32, 1])
    parser.add_argument("--seconds", type=float, default=2.5, help="audio per client")
    parser.add_argument("--slack", type=float, default=1.0, help="p95 final latency, seconds")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per setting")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument(
        "--onnx", action="store_true", help="serve each model's ONNX export (chunk 16, 4 left)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="measure every N, also after one not real time"
    )
    args = parser.parse_args()

    print(f"{args.seconds:g} s of audio per client, {MESSAGE_MS} ms messages, chunk 16 (640 ms),")
    print(f"server on {args.threads} thread(s); real time: p95 final latency <= {args.slack:g} s")
    print(f"{'model':>13} {'batch':>5} {'N':>4} {'1st part':>8} {'p95':>6} {'final':>8} "
          f"{'p95':>6} {'RTF':>7} {'CPU RTF':>7} {'real':>5}")  # fmt: skip
    largest = {}
    with tempfile.TemporaryDirectory(prefix="u2moe-serve-bench-") as tmp:
        for name in args.models:
            directory = model_dir(name, Path(tmp))
            source = ["--model", str(directory)]
            if args.onnx:
                with contextlib.redirect_stdout(io.StringIO()):
                    export_model(directory, Path(tmp) / f"{name}-onnx", 16, 4)
                source = ["--onnx", str(Path(tmp) / f"{name}-onnx")]
            for max_batch in args.max_batch:
                largest[name, max_batch] = run_setting(name, source, max_batch, args)
    print()
    for (name, max_batch), n in largest.items():
        print(f"{name} --max-batch {max_batch}: {n} real-time streams (of {args.clients})")
    pairs = [("Dense-225M", "MoE-1B"), ("demo-dense", "demo-MoE")]
    batch = max(args.max_batch)
    for dense, moe in pairs:
        if (dense, batch) in largest and largest.get((moe, batch)):
            ratio = largest[dense, batch] / largest[moe, batch]
            flops = active_params(moe) / active_params(dense)
            print(f"{dense} / {moe} real-time streams (batch {batch}): {ratio:.2f}; "
                  f"active-parameter ratio {flops:.2f}; target <= {1.15 * flops:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
