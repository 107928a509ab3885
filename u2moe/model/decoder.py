"""Attention decoders: a Transformer decoder and the bidirectional pair of U2++.

WeNet's structure and parameter names: `embed.0` (token embedding), `embed.1`
(absolute positional encoding), `decoders.{i}` (self_attn, src_attn, feed_forward,
norm1/2/3, pre-norm), `after_norm`, `output_layer`. The right-to-left decoder has the
same structure and reads the reversed hypothesis (built by `u2.reverse_padded`).

Masks are boolean, True where attention is allowed: tgt_mask (B, L, L) causal and
padding, memory_mask (B, 1, T) the encoder's real frames.
"""

import torch
from torch import nn

from u2moe.model.activation import make_activation
from u2moe.model.attention import MultiHeadAttention
from u2moe.model.config import DecoderConfig
from u2moe.model.embedding import PositionalEncoding
from u2moe.model.mask import make_pad_mask, subsequent_mask
from u2moe.model.moe import make_feed_forward


class TransformerDecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, attention over the encoder, FFN."""

    def __init__(
        self,
        d_model: int,
        self_attn: MultiHeadAttention,
        src_attn: MultiHeadAttention,
        feed_forward: nn.Module,
        dropout: float,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.src_attn = src_attn
        self.feed_forward = feed_forward
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm3 = nn.LayerNorm(d_model, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        tgt_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d).

        With `cache` (B, L-1, d), this layer's outputs for the first L-1 positions, only
        the last position is computed and appended to it (incremental decoding).
        """
        residual, h = x, self.norm1(x)
        query, query_mask = h, tgt_mask
        if cache is not None:
            residual, query, query_mask = residual[:, -1:], h[:, -1:], tgt_mask[:, -1:]
        x = residual + self.dropout(self.self_attn(query, h, h, query_mask)[0])
        h = self.norm2(x)
        x = x + self.dropout(self.src_attn(h, memory, memory, memory_mask)[0])
        x = x + self.dropout(self.feed_forward(self.norm3(x)))
        if cache is not None:
            x = torch.cat([cache, x], dim=1)
        return x


class TransformerDecoder(nn.Module):
    """Token ids -> next-token logits, attending to the encoder output."""

    def __init__(self, vocab_size: int, d_model: int, cfg: DecoderConfig, n_layers: int):
        super().__init__()
        self.embed = nn.Sequential(
            nn.Embedding(vocab_size, d_model), PositionalEncoding(d_model, cfg.positional_dropout)
        )
        self.decoders = nn.ModuleList(
            TransformerDecoderLayer(
                d_model,
                MultiHeadAttention(cfg.n_heads, d_model, cfg.self_attention_dropout),
                MultiHeadAttention(cfg.n_heads, d_model, cfg.src_attention_dropout),
                make_feed_forward(
                    cfg.ffn, d_model, cfg.d_ff, make_activation(cfg.activation), cfg.dropout
                ),
                cfg.dropout,
            )
            for _ in range(n_layers)
        )
        self.after_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.output_layer = nn.Linear(d_model, vocab_size)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, L, d): embedding scaled by sqrt(d) plus positions."""
        return self.embed[1](self.embed[0](tokens))[0]

    def forward(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        ys_in: torch.Tensor,
        ys_in_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """memory (B, T, d), memory_mask (B, 1, T), ys_in (B, L) starting with sos,
        ys_in_lengths (B,) counting sos -> logits (B, L, V)."""
        length = ys_in.size(1)
        tgt_mask = ~make_pad_mask(ys_in_lengths, length).unsqueeze(1)  # (B, 1, L)
        tgt_mask = tgt_mask & subsequent_mask(length, ys_in.device).unsqueeze(0)  # (B, L, L)
        x = self.embed_tokens(ys_in)
        for layer in self.decoders:
            x = layer(x, tgt_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x))

    def forward_one_step(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        tokens: torch.Tensor,
        tgt_mask: torch.Tensor,
        cache: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Log-probs of the next token, reusing the layers' outputs of earlier steps.

        memory (N, T, d), memory_mask (N, 1, T), tokens (N, i) the prefixes, tgt_mask
        (N, i, i), cache: per layer (N, i-1, d) from the previous step or None at the
        first one -> (log-probs (N, V), the new cache: per layer (N, i, d)).
        """
        x = self.embed_tokens(tokens)
        new_cache = []
        for i, layer in enumerate(self.decoders):
            x = layer(x, tgt_mask, memory, memory_mask, None if cache is None else cache[i])
            new_cache.append(x)
        logits = self.output_layer(self.after_norm(x[:, -1]))
        return logits.log_softmax(dim=-1), new_cache


class BiTransformerDecoder(nn.Module):
    """U2++'s pair: `left_decoder` (L2R) and `right_decoder` (R2L, None when 0 layers)."""

    def __init__(self, vocab_size: int, d_model: int, cfg: DecoderConfig):
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d_model, cfg, cfg.n_layers)
        self.right_decoder = (
            TransformerDecoder(vocab_size, d_model, cfg, cfg.n_r2l_layers)
            if cfg.n_r2l_layers > 0
            else None
        )

    def forward(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        ys_in: torch.Tensor,
        ys_in_lengths: torch.Tensor,
        r2l_ys_in: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (L2R logits (B, L, V), R2L logits (B, L, V) or None).

        The R2L decoder runs when `r2l_ys_in` (reversed hypotheses with sos, same
        lengths as ys_in) is given and the model has one.
        """
        l2r = self.left_decoder(memory, memory_mask, ys_in, ys_in_lengths)
        r2l = None
        if r2l_ys_in is not None and self.right_decoder is not None:
            r2l = self.right_decoder(memory, memory_mask, r2l_ys_in, ys_in_lengths)
        return l2r, r2l
