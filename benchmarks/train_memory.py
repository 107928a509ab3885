"""Memory of a training process: resident memory and CPU time of training steps on batches of
varying shape, with glibc's default allocator settings and with a fixed mmap threshold,
side by side in one run (each in its own subprocess, one thread).

    python benchmarks/train_memory.py [--config configs/small.yaml] [--steps 60]

Batches are random features of 200-2,000 frames, as many utterances as fit in the
config's max_frames_in_batch, so tensor sizes change every step as in real training. glibc
raises its mmap threshold each time a large block is freed, after which large tensors come
from the heap, whose freed pieces the process keeps: `MALLOC_MMAP_THRESHOLD_` pins the
threshold, so large tensors are mapped and unmapped each time instead.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VOCAB = 258  # the demo's units (configs/small.yaml leaves vocab_size to the data)

SETTINGS = {
    "glibc default": {},
    "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def child(config: str, steps: int) -> None:
    """Train the config's model for `steps` steps on random batches; print JSON figures."""
    import random
    import resource
    import time

    import torch

    from u2moe.config import load_yaml, parse_section
    from u2moe.model.config import ModelConfig
    from u2moe.model.u2 import U2Model

    torch.set_num_threads(1)
    config_dict = load_yaml(config)
    section = dict(config_dict["model"], vocab_size=VOCAB)
    model = U2Model(parse_section(ModelConfig, section, "model"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    max_frames = config_dict["data"]["batch"]["max_frames_in_batch"]
    rng = random.Random(0)
    torch.manual_seed(0)
    start = time.process_time()
    for _ in range(steps):
        frames = rng.randint(200, 2000)
        batch = max(1, max_frames // frames)
        tokens = rng.randint(5, 40)
        out = model(
            torch.randn(batch, frames, 80),
            torch.full((batch,), frames),
            torch.randint(2, VOCAB - 1, (batch, tokens)),
            torch.full((batch,), tokens),
        )
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    status = Path("/proc/self/status").read_text()
    rss_mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_mb": rss_mb, "peak_mb": peak_mb, "cpu_s": time.process_time() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.config, args.steps)
        return

    figures = {}
    for name, env in SETTINGS.items():
        argv = [sys.executable, __file__, "--child", "--config", args.config]
        argv += ["--steps", str(args.steps)]
        run = subprocess.run(
            argv, env=os.environ | env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True
        )
        if run.returncode != 0:
            sys.exit(f"{name}: {run.stderr.strip().splitlines()[-1]}")
        figures[name] = json.loads(run.stdout.strip().splitlines()[-1])
        f = figures[name]
        print(
            f"{name:>32}: resident {f['rss_mb']:.0f} MB (peak {f['peak_mb']:.0f} MB), "
            f"{f['cpu_s']:.1f} CPU s for {args.steps} steps"
        )
    default, pinned = figures.values()
    print(
        f"pinned / default: resident {pinned['rss_mb'] / default['rss_mb']:.2f}, "
        f"CPU time {pinned['cpu_s'] / default['cpu_s']:.2f}"
    )


if __name__ == "__main__":
    main()
