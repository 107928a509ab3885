"""The `train:` section of a config: optimizer, schedule, steps, validation, checkpoints."""

from dataclasses import dataclass
from typing import Literal

from u2moe.config import ConfigError


@dataclass
class TrainConfig:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    weight_decay: float = 1e-6
    warmup_steps: int = 25000  # WeNet's warmuplr: linear warmup, then lr ~ 1/sqrt(step)
    grad_clip: float = 5.0  # max global gradient norm (0: no clipping)
    accum_grad: int = 1  # batches per optimizer step
    max_epochs: int = 100
    max_steps: int = 0  # optimizer steps; 0: stop after max_epochs only
    seed: int = 777
    # auto: bf16 autocast on GPUs that support it, fp32 elsewhere (bf16 on CPU is slow).
    # fp16: fp16 autocast with dynamic loss scaling (GPUs without bf16; not with fsdp).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    log_interval: int = 50  # optimizer steps between log lines / TensorBoard points
    valid_interval: int = 0  # optimizer steps between dev evaluations; 0: end of each epoch
    keep_best: int = 10  # checkpoints kept, ranked by dev loss (the latest is always kept)
    average_num: int = 10  # best checkpoints averaged into model.pt at the end of training
    strategy: Literal["ddp", "fsdp"] = "ddp"  # multi-process: DDP, or FSDP2 sharding

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.accum_grad >= 1, f"accum_grad must be >= 1, got {self.accum_grad}"),
            (self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}"),
            (self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}"),
            (self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval}"),
            (self.valid_interval >= 0, f"valid_interval must be >= 0, got {self.valid_interval}"),
            (self.keep_best >= 1, f"keep_best must be >= 1, got {self.keep_best}"),
            (
                1 <= self.average_num <= self.keep_best,
                f"average_num must be in [1, keep_best {self.keep_best}], got {self.average_num}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
