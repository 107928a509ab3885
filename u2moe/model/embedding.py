"""Sinusoidal positional encodings: absolute (decoder) and WeNet's relative variant (encoder).

Encodings are computed from positions on each call rather than sliced from a table, so any
position works: far past the start of a long stream, negative (the padded cache slots of a
batch of streams, which attention masks out anyway), or a different offset per stream given
as a tensor (traceable by torch.onnx: no Python branch on tensor values). WeNet checkpoints
carry a saved table `pe`; it is accepted and ignored on load.
"""

import math

import torch
from torch import nn


def inverse_frequencies(d_model: int) -> torch.Tensor:
    """(d_model // 2,): the angular frequency of each sin/cos channel pair."""
    return torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model)
    )


def sinusoid_encoding(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """positions (...) integer or float -> (..., 2 * len(inv_freq)): sin on even channels,
    cos on odd ones (Vaswani et al.)."""
    angle = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model): the encodings of positions 0 .. length - 1."""
    return sinusoid_encoding(torch.arange(length), inverse_frequencies(d_model))


class PositionalEncoding(nn.Module):
    """Absolute encoding: x (B, T, d) -> (dropout(x * sqrt(d) + pos_emb), pos_emb).

    pos_emb (1 or B, T, d) are the encodings of positions offset .. offset + T - 1.
    """

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)
        # A buffer so the encodings follow the module's device; not saved.
        self.register_buffer("inv_freq", inverse_frequencies(d_model), persistent=False)

    def position_encoding(self, offset: int | torch.Tensor, size: int) -> torch.Tensor:
        """Encodings of positions offset .. offset + size - 1: (1, size, d) for an int
        offset, (B, size, d) for a (B,) tensor of per-stream offsets. Offsets may be < 0."""
        steps = torch.arange(size, device=self.inv_freq.device)
        if isinstance(offset, torch.Tensor) and offset.dim() > 0:
            positions = offset.to(steps.device).unsqueeze(-1) + steps
        else:
            positions = (steps + offset).unsqueeze(0)
        return sinusoid_encoding(positions, self.inv_freq)

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.position_encoding(offset, x.size(1))
        return self.dropout(x * self.xscale + pos_emb), self.dropout(pos_emb)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # WeNet saves a table of encodings; they are a pure function of position: ignore it.
        state_dict.pop(prefix + "pe", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RelPositionalEncoding(PositionalEncoding):
    """WeNet's `rel_pos`: x (B, T, d) -> (dropout(x * sqrt(d)), dropout(pos_emb)).

    The encodings are not added to x; the attention layer scores them against queries
    (`RelPositionMultiHeadAttention`).
    """

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.position_encoding(offset, x.size(1))
        return self.dropout(x * self.xscale), self.dropout(pos_emb)
