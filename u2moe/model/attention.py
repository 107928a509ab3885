"""Multi-head attention (WeNet parameter names) with a key/value cache for streaming.

Shapes: query (B, T1, d), key/value (B, T2, d); mask (B, 1 or T1, T2) bool, True where
attention is allowed, or None for no mask. A cache holds the projected keys and values
of earlier frames, (B, H, T_cache, 2 * d_k) with keys in the first d_k channels (WeNet's
layout); T_cache is 0 at the first chunk.
"""

import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `n_heads` heads: linear_q/k/v, linear_out."""

    def __init__(self, n_heads: int, d_model: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.h = n_heads
        self.d_k = d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward_qkv(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split heads: q (B, H, T1, d_k), k and v (B, H, T2, d_k)."""
        b = query.size(0)
        q = self.linear_q(query).view(b, -1, self.h, self.d_k).transpose(1, 2)
        k = self.linear_k(key).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(value).view(b, -1, self.h, self.d_k).transpose(1, 2)
        return q, k, v

    def update_cache(
        self, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prepend cached keys/values; new_cache (B, H, T_cache + T2, 2 d_k), None without one."""
        if cache is None:
            return k, v, None
        k_cache, v_cache = cache.split(self.d_k, dim=-1)
        k = torch.cat((k_cache, k), dim=2)
        v = torch.cat((v_cache, v), dim=2)
        return k, v, torch.cat((k, v), dim=-1)

    def forward_attention(
        self, value: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """value (B, H, T2, d_k), scores (B, H, T1, T2) -> (B, T1, d).

        Masked keys get -inf before the softmax and exactly 0 after it, so a row with no
        allowed key yields zeros instead of NaN.
        """
        if mask is not None:
            blocked = ~mask.unsqueeze(1)  # (B, 1, 1 or T1, T2)
            scores = scores.masked_fill(blocked, float("-inf"))
            attn = scores.softmax(dim=-1).masked_fill(blocked, 0.0)
        else:
            attn = scores.softmax(dim=-1)
        x = self.dropout(attn) @ value  # (B, H, T1, d_k)
        x = x.transpose(1, 2).reshape(value.size(0), -1, self.h * self.d_k)
        return self.linear_out(x)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (out (B, T1, d), new_cache or None when no cache was passed)."""
        q, k, v = self.forward_qkv(query, key, value)
        k, v, new_cache = self.update_cache(k, v, cache)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask), new_cache


class RelPositionMultiHeadAttention(MultiHeadAttention):
    """Self-attention with positional scores, as WeNet's U2++ Conformer computes it.

    scores = ((q + pos_bias_u) k^T + (q + pos_bias_v) p^T) / sqrt(d_k), where p is
    linear_pos of the positional encodings of the key frames. Like WeNet's `rel_pos`
    (and unlike Transformer-XL) there is no relative shift: p follows the key positions,
    which keeps chunk-by-chunk streaming identical to the masked full forward.
    """

    def __init__(self, n_heads: int, d_model: int, dropout: float = 0.0):
        super().__init__(n_heads, d_model, dropout)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        pos_emb: torch.Tensor,
        cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pos_emb (1 or B, T_cache + T2, d) for the key frames -> (out, new_cache)."""
        q, k, v = self.forward_qkv(query, key, value)
        k, v, new_cache = self.update_cache(k, v, cache)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q = q.transpose(1, 2)  # (B, T1, H, d_k): the biases broadcast over heads
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask), new_cache
