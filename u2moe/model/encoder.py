"""The Conformer encoder of U2++ (WeNet's ConformerEncoder, same module names).

Data path: raw fbank (B, T, 80) -> global CMVN -> Conv2d subsampling (x4/x6/x8) ->
N pre-norm Conformer blocks -> after_norm -> (B, T', d). Self-attention is masked by a
chunk mask: in training chosen per batch by the cfg.chunk policy (u2moe.model.mask), in
evaluation the one asked for, so one model serves full-context and streaming decoding.

Streaming (`forward_chunk`) keeps all state in two plain tensors, in one of two layouts:
- WeNet's (one stream): att_cache (n_layers, n_heads, C, 2 * d_k), the projected keys
  (first d_k channels) and values of the last C encoder frames per layer; cnn_cache
  (n_layers, 1, d, kernel - 1), the input of each causal convolution module over its last
  kernel - 1 frames. Both start as torch.zeros(0, 0, 0, 0).
- batch first (B streams; att_cache has 5 dimensions): att_cache (B, n_layers, n_heads, C,
  2 * d_k), cnn_cache (B, n_layers, d, kernel - 1). They start as zeros with C = 0 and
  kernel - 1 (or 0) convolution frames. Streams of different ages share one C: their caches
  are left-padded with zeros and `att_mask` hides the padding.
The last dimension of cnn_cache is 0 when the convolution is non-causal or absent.
"""

import torch
from torch import nn

from u2moe.errors import UserError
from u2moe.model.activation import make_activation
from u2moe.model.attention import RelPositionMultiHeadAttention
from u2moe.model.config import ModelConfig
from u2moe.model.convolution import ConvolutionModule
from u2moe.model.embedding import RelPositionalEncoding
from u2moe.model.mask import chunk_attention_mask, decoding_chunk, make_pad_mask, training_chunk
from u2moe.model.moe import make_feed_forward
from u2moe.model.subsampling import Conv2dSubsampling
from u2moe.model.window import ChunkWindows


class GlobalCMVN(nn.Module):
    """(x - mean) * istd over the feature dimension; identity until stats are set."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("istd", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, istd: torch.Tensor) -> None:
        """Copy in the mean and inverse standard deviation, each (dim,)."""
        if mean.shape != self.mean.shape or istd.shape != self.istd.shape:
            raise ValueError(
                f"CMVN stats must have shape {tuple(self.mean.shape)}, "
                f"got mean {tuple(mean.shape)} and istd {tuple(istd.shape)}"
            )
        self.mean.copy_(mean)
        self.istd.copy_(istd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.istd


class ConformerEncoderLayer(nn.Module):
    """One pre-norm Conformer block: x (B, T, d) -> (B, T, d).

    x += 1/2 FFN(norm_ff_macaron(x)); x += MHSA(norm_mha(x)); x += Conv(norm_conv(x));
    x += 1/2 FFN(norm_ff(x)); x = norm_final(x). Without macaron the one FFN is full-step;
    without the convolution module there is no norm_final (WeNet's structure).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        enc = cfg.encoder
        d = enc.d_model
        self.self_attn = RelPositionMultiHeadAttention(enc.n_heads, d, enc.attention_dropout)
        ffn = (enc.ffn, d, enc.d_ff, make_activation(enc.activation), enc.dropout)
        self.feed_forward = make_feed_forward(*ffn)
        self.feed_forward_macaron = make_feed_forward(*ffn) if enc.macaron else None
        self.conv_module = (
            ConvolutionModule(
                d, enc.kernel_size, make_activation(enc.activation), enc.conv_norm, enc.causal
            )
            if enc.use_conv
            else None
        )
        self.norm_ff = nn.LayerNorm(d)
        self.norm_mha = nn.LayerNorm(d)
        self.norm_ff_macaron = nn.LayerNorm(d) if enc.macaron else None
        self.norm_conv = nn.LayerNorm(d) if enc.use_conv else None
        self.norm_final = nn.LayerNorm(d) if enc.use_conv else None
        self.ff_scale = 0.5 if enc.macaron else 1.0
        self.dropout = nn.Dropout(enc.dropout)

    def forward(
        self,
        x: torch.Tensor,
        att_mask: torch.Tensor | None,
        pos_emb: torch.Tensor,
        mask_pad: torch.Tensor | None = None,
        att_cache: torch.Tensor | None = None,
        cnn_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """att_mask (B, T or 1, T_cache + T) or None; pos_emb (1, T_cache + T, d);
        mask_pad (B, 1, T) real frames for the convolution, or None.
        att_cache (B, H, T_cache, 2 d_k), cnn_cache (B, d, kernel - 1): this layer's caches
        (T_cache and the last dimension of cnn_cache may be 0), or None outside streaming.
        -> (x, new_att_cache (B, H, T_cache + T, 2 d_k), new_cnn_cache (B, d, kernel - 1 or 0));
        the caches are None when none were passed.
        """
        if self.feed_forward_macaron is not None:
            y = self.feed_forward_macaron(self.norm_ff_macaron(x))
            x = x + self.ff_scale * self.dropout(y)
        y = self.norm_mha(x)
        y, new_att_cache = self.self_attn(y, y, y, att_mask, pos_emb, att_cache)
        x = x + self.dropout(y)
        new_cnn_cache = None
        if self.conv_module is not None:
            y, new_cnn_cache = self.conv_module(self.norm_conv(x), mask_pad, cnn_cache)
            x = x + self.dropout(y)
        elif cnn_cache is not None:
            new_cnn_cache = x.new_zeros(x.size(0), x.size(2), 0)
        x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        if self.norm_final is not None:
            x = self.norm_final(x)
        return x, new_att_cache, new_cnn_cache


class ConformerEncoder(nn.Module):
    """Raw fbank (B, T, input_dim) -> encoder frames (B, T', d_model).

    Training chunk sizes are drawn from `chunk_generator`, a CPU torch.Generator seeded with
    torch's seed at construction (`torch.initial_seed()`, which does not advance torch's
    RNG): ranks that call torch.manual_seed(seed) alike before building the model draw the
    same chunk sizes, batch after batch. Save its `get_state()` with a checkpoint to resume
    the same draws.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        enc = cfg.encoder
        self.chunk_cfg = cfg.chunk
        self.global_cmvn = GlobalCMVN(cfg.input_dim)
        pos_enc = RelPositionalEncoding(enc.d_model, enc.positional_dropout)
        self.embed = Conv2dSubsampling(cfg.input_dim, enc.d_model, enc.subsampling, pos_enc)
        self.encoders = nn.ModuleList(ConformerEncoderLayer(cfg) for _ in range(enc.n_layers))
        self.after_norm = nn.LayerNorm(enc.d_model)
        self.input_dim = cfg.input_dim
        self.output_size = enc.d_model
        self.subsampling_rate = self.embed.subsampling_rate
        self.right_context = self.embed.right_context
        self.chunk_generator = torch.Generator().manual_seed(torch.initial_seed())

    def check_feature_dim(self, feats: torch.Tensor) -> None:
        """A one-line error when the features do not have the model's input_dim."""
        if feats.size(-1) != self.input_dim:
            raise UserError(
                f"features have {feats.size(-1)} dimensions but the model takes "
                f"{self.input_dim} (model.input_dim vs data.features.num_mel_bins)"
            )

    def forward(
        self,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        chunk_size: int = -1,
        num_left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, input_dim), feats_lengths (B,) -> (out (B, T', d), out_mask (B, 1, T')).

        out_mask is True at real frames. In training mode the chunk comes from the cfg.chunk
        policy and the arguments are ignored; in eval mode chunk_size > 0 masks attention to
        chunks of that many encoder frames with num_left_chunks chunks of left context
        (-1: all); chunk_size <= 0 is full context (for a static-chunk model: its chunk).
        """
        self.check_feature_dim(feats)
        if feats.size(1) < self.right_context + 1:
            raise UserError(
                f"input of {feats.size(1)} feature frames is too short: the encoder needs at "
                f"least {self.right_context + 1}"
            )
        pad_mask = ~make_pad_mask(feats_lengths, feats.size(1)).unsqueeze(1)  # (B, 1, T)
        x, pos_emb, pad_mask = self.embed(self.global_cmvn(feats), pad_mask)
        if self.training:
            chunk = training_chunk(self.chunk_cfg, x.size(1), self.chunk_generator)
        else:
            chunk = decoding_chunk(self.chunk_cfg, chunk_size, num_left_chunks)
        att_mask = chunk_attention_mask(pad_mask, *chunk)
        for layer in self.encoders:
            x, _, _ = layer(x, att_mask, pos_emb, mask_pad=pad_mask)
        return self.after_norm(x), pad_mask

    def forward_chunk(
        self,
        chunk_feats: torch.Tensor,
        offset: int | torch.Tensor,
        required_cache_size: int,
        att_cache: torch.Tensor,
        cnn_cache: torch.Tensor,
        att_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One streaming step, as WeNet's BaseEncoder.forward_chunk, for one or B streams.

        chunk_feats (B, (chunk - 1) * subsampling_rate + right_context + 1, input_dim): the
        fbank frames of one chunk plus the look-ahead the subsampling needs (consecutive
        windows overlap by right_context + 1 - subsampling_rate frames). offset: encoder
        frames already emitted, an int or a (B,) int64 tensor (one per stream); the keys of
        stream b sit at positions offset[b] - C .. offset[b] + t - 1. required_cache_size:
        encoder frames of attention cache to keep (< 0: all, 0: none). Caches in either
        layout of the module docstring (WeNet's takes B = 1); the new caches come back in
        the layout given. att_mask (B, 1, C + t) bool, True where a key (cache slot or new
        frame) may be attended; None (or WeNet's empty (0, 0, 0)) lets every key be seen.
        -> (out (B, t, d), new att_cache, new cnn_cache), t = output frames of the chunk.
        """
        if att_cache.dim() == 4:  # WeNet's layout: one stream
            if chunk_feats.size(0) != 1:
                raise ValueError(
                    f"forward_chunk with WeNet's 4-dimensional caches takes one stream, got "
                    f"batch {chunk_feats.size(0)}; pass batch-first caches for a batch"
                )
            att_cache, cnn_cache = self.batch_first_caches(att_cache, cnn_cache)
            out, att_cache, cnn_cache = self.forward_chunk(
                chunk_feats, offset, required_cache_size, att_cache, cnn_cache, att_mask
            )
            return out, att_cache[0], cnn_cache.transpose(0, 1)
        self.check_feature_dim(chunk_feats)
        if att_mask is not None and att_mask.size(-1) == 0:
            att_mask = None
        x, _, _ = self.embed(self.global_cmvn(chunk_feats), None, offset)
        cache_t = att_cache.size(3)
        key_t = cache_t + x.size(1)
        pos_emb = self.embed.pos_enc.position_encoding(offset - cache_t, key_t)
        if required_cache_size < 0:
            next_cache_start = 0
        else:
            next_cache_start = max(key_t - required_cache_size, 0)
        new_att_caches, new_cnn_caches = [], []
        for i, layer in enumerate(self.encoders):
            x, new_att, new_cnn = layer(
                x, att_mask, pos_emb, att_cache=att_cache[:, i], cnn_cache=cnn_cache[:, i]
            )
            new_att_caches.append(new_att[:, :, next_cache_start:])
            new_cnn_caches.append(new_cnn)
        return (
            self.after_norm(x),
            torch.stack(new_att_caches, dim=1),
            torch.stack(new_cnn_caches, dim=1),
        )

    def batch_first_caches(
        self, att_cache: torch.Tensor, cnn_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """WeNet's one-stream caches (empty ones included) in the batch-first layout."""
        n_layers = len(self.encoders)
        if att_cache.size(0) == 0:
            attn = self.encoders[0].self_attn
            att_cache = att_cache.new_zeros(n_layers, attn.h, 0, 2 * attn.d_k)
        if cnn_cache.size(0) == 0:
            cnn_cache = cnn_cache.new_zeros(n_layers, 1, self.output_size, 0)
        return att_cache.unsqueeze(0), cnn_cache.transpose(0, 1)

    def forward_chunk_by_chunk(
        self, feats: torch.Tensor, chunk_size: int, num_left_chunks: int = -1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulate streaming on a whole utterance: feats (1, T, input_dim).

        chunk_size > 0 encoder frames per step, num_left_chunks chunks of attention cache
        (-1: all). Equal to `forward` in eval mode with the same chunk arguments when the
        convolution is causal. -> (out (1, T', d), out_mask (1, 1, T')).
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk-by-chunk decoding needs chunk_size > 0, got {chunk_size}")
        windows = ChunkWindows(
            chunk_size, self.subsampling_rate, self.right_context, num_left_chunks
        )
        att_cache = feats.new_zeros(0, 0, 0, 0)
        cnn_cache = feats.new_zeros(0, 0, 0, 0)
        outputs, offset = [], 0
        for start, end in windows.chunks(feats.size(1)):
            y, att_cache, cnn_cache = self.forward_chunk(
                feats[:, start:end], offset, windows.required_cache_size, att_cache, cnn_cache
            )
            outputs.append(y)
            offset += y.size(1)
        out = torch.cat(outputs, dim=1) if outputs else feats.new_zeros(1, 0, self.output_size)
        return out, torch.ones(1, 1, out.size(1), dtype=torch.bool, device=out.device)
