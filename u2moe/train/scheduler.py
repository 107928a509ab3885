"""WeNet's `warmuplr`: linear warmup to the peak rate, then inverse-square-root decay."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (1-based).

    warmup * min(step^-0.5, step * warmup^-1.5) * warmup^0.5: rises linearly to 1 at
    step == warmup_steps, then decays as sqrt(warmup_steps / step). Without warmup it is
    step^-0.5, as in WeNet.
    """
    if warmup_steps == 0:
        return step**-0.5
    return warmup_steps**0.5 * min(step**-0.5, step * warmup_steps**-1.5)


class WarmupLR(LRScheduler):
    """lr(step) = base_lr * warmup_factor(step); call `.step()` after each optimizer step."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_factor(self.last_epoch + 1, self.warmup_steps)
        return [base_lr * factor for base_lr in self.base_lrs]
