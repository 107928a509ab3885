"""Training loop, schedulers, checkpoints, averaging, distributed training."""
