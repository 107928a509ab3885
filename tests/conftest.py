"""Tiny U2 models shared by the test files: a few thousand parameters, built in milliseconds.

`tiny_config`/`tiny_model` are plain functions (import them: `from conftest import
tiny_model`) because tests call them with different options; `peaky` makes a random
model decode without near-ties, as a trained one would.
"""

import signal
import subprocess
import time
from pathlib import Path

import torch

from u2moe.model.config import ChunkConfig, DecoderConfig, EncoderConfig, FFNConfig, ModelConfig
from u2moe.model.u2 import U2Model
from u2moe.train.checkpoint import read_index


def tiny_config(
    ffn: str = "dense", aux: float = 0.0, vocab_size: int = 10, **overrides
) -> ModelConfig:
    """Encoder 2 x d_model 32, decoder 1 L2R + 1 R2L block; FFNs dense or MoE (4 experts,
    top-2, aux_loss_weight `aux`); `overrides`: other ModelConfig fields."""
    moe = FFNConfig(type=ffn, n_experts=4, top_k=2, aux_loss_weight=aux)
    return ModelConfig(
        vocab_size=vocab_size,
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5, ffn=moe),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=1, n_r2l_layers=1, ffn=moe),
        chunk=ChunkConfig(dynamic=True),
        **overrides,
    )


def tiny_model(ffn: str = "dense", aux: float = 0.0, seed: int = 0, **overrides) -> U2Model:
    """`tiny_config(...)`'s model, initialized from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return U2Model(tiny_config(ffn, aux, **overrides)).eval()


def peaky(model: U2Model) -> U2Model:
    """A sharper CTC head (no near-ties between batched and single decoding, as in trained
    models) and a CMVN that fits raw fbank roughly; returns the model."""
    with torch.no_grad():
        model.ctc.ctc_lo.weight.mul_(8.0)
    model.set_cmvn(torch.full((80,), 8.0), torch.full((80,), 0.25))
    return model


def kill_at_first_checkpoint(argv: list[str], exp: Path, env: dict) -> int:
    """Run a `u2moe train` command line, kill -9 it once its first checkpoint is indexed,
    and return the step of its last checkpoint."""
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    index = exp / "checkpoints" / "index.json"
    deadline = time.monotonic() + 120
    while not index.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return read_index(exp / "checkpoints")[-1]["step"]
