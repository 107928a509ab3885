"""CTC head: a linear projection of encoder frames to token log-probs, and the CTC loss."""

import torch
import torch.nn.functional as F
from torch import nn


class CTC(nn.Module):
    """`ctc_lo`: Linear(d_model, vocab_size), WeNet's name. Blank is token 0."""

    def __init__(self, vocab_size: int, d_model: int, blank_id: int = 0):
        super().__init__()
        self.ctc_lo = nn.Linear(d_model, vocab_size)
        self.blank_id = blank_id

    def log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """enc (B, T, d) -> log-probs (B, T, V)."""
        return self.ctc_lo(enc).log_softmax(dim=-1)

    def loss(
        self,
        enc: torch.Tensor,
        enc_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Summed over the batch and divided by batch size, as WeNet reports it.

        enc (B, T, d), enc_lengths (B,), targets (B, L) padded with -1, target_lengths (B,).
        Utterances too short for their transcript (infinite loss) contribute 0.
        """
        # The CTC recursion in fp32 even under autocast: it sums many small probabilities.
        log_probs = self.log_probs(enc).float().transpose(0, 1)  # (T, B, V)
        loss = F.ctc_loss(
            log_probs,
            targets.clamp(min=0),
            enc_lengths,
            target_lengths,
            blank=self.blank_id,
            reduction="sum",
            zero_infinity=True,
        )
        return loss / enc.size(0)
