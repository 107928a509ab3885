"""Sinusoidal positional encodings: absolute (decoder) and WeNet's relative variant (encoder).

The table `pe` (1, max_len, d_model) is a non-persistent buffer: it is recomputed, not
saved, and a state dict that carries it (WeNet checkpoints do) still loads. It grows on
demand when a position past its end is asked for (very long inputs or streams).
"""

import math

import torch
from torch import nn


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model): sin on even channels, cos on odd ones (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model)
    )
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class PositionalEncoding(nn.Module):
    """Absolute encoding: x (B, T, d) -> (dropout(x * sqrt(d) + pe[offset:offset+T]), pos_emb).

    pos_emb (1, T, d) is the slice of the table that was added.
    """

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 5000):
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoid_table(max_len, d_model).unsqueeze(0), persistent=False)

    def position_encoding(self, offset: int | torch.Tensor, size: int) -> torch.Tensor:
        """(1, size, d): encodings of positions offset .. offset + size - 1."""
        if offset + size > self.pe.size(1):
            table = sinusoid_table(2 * int(offset + size), self.d_model)
            self.pe = table.unsqueeze(0).to(self.pe)
        return self.pe[:, offset : offset + size]

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.position_encoding(offset, x.size(1))
        return self.dropout(x * self.xscale + pos_emb), self.dropout(pos_emb)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The table is a pure function of its shape: accept and ignore a saved copy.
        state_dict.pop(prefix + "pe", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RelPositionalEncoding(PositionalEncoding):
    """WeNet's `rel_pos`: x (B, T, d) -> (dropout(x * sqrt(d)), dropout(pe[offset:offset+T])).

    The encodings are not added to x; the attention layer scores them against queries
    (`RelPositionMultiHeadAttention`).
    """

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.position_encoding(offset, x.size(1))
        return self.dropout(x * self.xscale), self.dropout(pos_emb)
