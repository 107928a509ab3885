"""Attention masks: padding, causal (decoder), chunk masks, and the chunk policy.

Convention: a boolean mask is True where attention (or a frame) is allowed, except
`make_pad_mask`, which is True at padding as in WeNet. Chunk sizes and left-chunk counts
are in encoder frames (after subsampling); -1 means full context / all left chunks.

Chunk policy (U2++ dynamic chunk training):
- training (`training_chunk`): static chunk if `static_chunk_size > 0`; else with
  `dynamic`, full context with probability `full_context_prob`, otherwise a chunk drawn
  uniformly from [1, max_chunk] (and with `dynamic_left` a number of left chunks drawn
  uniformly from [0, all]); else full context.
- decoding (`decoding_chunk`): the requested chunk size (<= 0 means full context, or the
  static chunk of a static-chunk model).

Training draws come from a caller-owned `torch.Generator` and always consume the same
number of values whatever the batch, so ranks of a DDP job whose generators were seeded
alike draw the same chunk sizes in lock-step, and a seed makes training reproducible.
"""

import torch

from u2moe.model.config import ChunkConfig


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """lengths (B,) -> (B, max_len) bool, True at padded positions.

    max_len 0 means lengths.max().
    """
    max_len = max_len or int(lengths.max())
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def subsequent_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size, size) bool: position i may attend to positions 0..i (decoder self-attention)."""
    positions = torch.arange(size, device=device)
    return positions.unsqueeze(0) <= positions.unsqueeze(1)


def subsequent_chunk_mask(
    size: int, chunk_size: int, num_left_chunks: int = -1, device: torch.device | None = None
) -> torch.Tensor:
    """(size, size) bool: frame i sees every frame of its own chunk and of earlier chunks.

    Chunks are consecutive runs of `chunk_size` frames; with num_left_chunks >= 0 only that
    many chunks to the left are visible (0: the current chunk alone).
    E.g. size 4, chunk 2: [[1,1,0,0], [1,1,0,0], [1,1,1,1], [1,1,1,1]].
    """
    chunk = torch.arange(size, device=device) // chunk_size
    query, key = chunk.unsqueeze(1), chunk.unsqueeze(0)
    mask = key <= query
    if num_left_chunks >= 0:
        mask &= key >= query - num_left_chunks
    return mask


def chunk_attention_mask(
    pad_mask: torch.Tensor, chunk_size: int, num_left_chunks: int = -1
) -> torch.Tensor:
    """Self-attention mask of the encoder for one chunk setting.

    pad_mask (B, 1, T) True at real frames -> (B, T, T) with a chunk mask, or pad_mask
    itself for full context (chunk_size <= 0). A padded frame whose window holds only
    padding gets a row with no visible key; attention gives it zeros (as WeNet does).
    """
    if chunk_size <= 0:
        return pad_mask
    size = pad_mask.size(-1)
    return pad_mask & subsequent_chunk_mask(size, chunk_size, num_left_chunks, pad_mask.device)


def training_chunk(
    cfg: ChunkConfig, num_frames: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(chunk_size, num_left_chunks) for one training batch of `num_frames` encoder frames."""
    if cfg.static_chunk_size > 0:
        return cfg.static_chunk_size, -1
    if not cfg.dynamic:
        return -1, -1
    # Always three draws, so generators stay in step whatever the batch shapes.
    full, chunk, left = torch.rand(3, generator=generator).tolist()
    if full < cfg.full_context_prob:
        return -1, -1
    chunk_size = 1 + int(chunk * cfg.max_chunk)
    if not cfg.dynamic_left:
        return chunk_size, -1
    max_left_chunks = (num_frames - 1) // chunk_size  # this many already sees everything
    return chunk_size, int(left * (max_left_chunks + 1))


def decoding_chunk(cfg: ChunkConfig, chunk_size: int, num_left_chunks: int) -> tuple[int, int]:
    """(chunk_size, num_left_chunks) for decoding: the request, or the model's static chunk.

    chunk_size <= 0 asks for full context; a static-chunk model only knows its own chunk,
    so it decodes with that one unless a chunk size is given.
    """
    if chunk_size > 0:
        return chunk_size, num_left_chunks
    if cfg.static_chunk_size > 0:
        return cfg.static_chunk_size, num_left_chunks
    return -1, -1
