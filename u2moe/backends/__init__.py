"""What decoding needs from a model, numpy in and numpy out: the `Backend` protocol.

The torch-free core (features, the stream object, the searches, timestamps, endpointing,
`Recognizer`, `Transcriber`) talks to a model only through this interface, so the PyTorch
model (`torch_backend.TorchBackend`) and an ONNX runtime implement the same five members
and share everything else. This module imports no torch.

Arrays are batch first. Cache layouts (those of `ConformerEncoder.forward_chunk`, batch
first): att_cache (B, num_blocks, n_heads, C, 2 * d_k) float32, keys in the first d_k
channels; cnn_cache (B, num_blocks, output_size, cnn_cache_frames) float32. C may differ
between calls and may be 0; streams of different ages share one C by left-padding with
zeros, and att_mask says which slots are real.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model that streaming and the searches need."""

    subsampling_rate: int  # fbank frames per encoder frame
    right_context: int  # fbank frames an encoder frame reads past its first one
    num_blocks: int  # encoder layers (the caches' second dimension)
    n_heads: int
    d_k: int  # attention channels per head
    output_size: int  # d_model of the encoder
    cnn_cache_frames: int  # kernel - 1 of a causal convolution module; 0 otherwise
    vocab_size: int
    sos: int
    eos: int
    has_right_decoder: bool  # whether decoder_scores gives real right-to-left scores
    feature_dim: int  # fbank bins the encoder takes
    chunk_size: int = -1  # a static-chunk model's chunk (used when none is asked for); -1: any
    num_left_chunks: int = -1  # its chunks of left context; -1: all


class Backend(Protocol):
    info: ModelInfo

    def encoder_step(
        self,
        chunk: np.ndarray,
        offset: np.ndarray,
        required_cache_size: int,
        att_cache: np.ndarray,
        cnn_cache: np.ndarray,
        att_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One streaming step for B streams.

        chunk (B, W, feature_dim) float32 raw fbank (CMVN is inside the model); offset (B,)
        int64 encoder frames already emitted per stream; required_cache_size: encoder
        frames of attention cache to keep (< 0: all); caches as in the module docstring;
        att_mask (B, 1, C + t) bool, True where a key (cache slot or new frame) may be
        attended. -> (out (B, t, output_size), new att_cache, new cnn_cache), the new
        att_cache holding the last min(C + t, required_cache_size) slots (all when < 0).
        """
        ...

    def encode(
        self,
        feats: np.ndarray,
        lengths: np.ndarray,
        chunk_size: int = -1,
        num_left_chunks: int = -1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Full forward: feats (B, T, feature_dim), lengths (B,) -> (out (B, T', d),
        out_lengths (B,)); chunk_size > 0 masks attention as chunk-by-chunk streaming."""
        ...

    def ctc_log_probs(self, enc: np.ndarray) -> np.ndarray:
        """(B, T, d) -> (B, T, vocab_size) float32 log-probs."""
        ...

    def decoder_scores(
        self, enc: np.ndarray, enc_length: int, hyps: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rescoring scores of an n-best for ONE utterance: enc (T, d) of which the first
        enc_length frames are real, hyps (token ids without sos/eos) -> (l2r (N,), r2l (N,))
        float64 sums of the log-probs of each hypothesis followed by eos (r2l reads it
        reversed; all zeros without a right-to-left decoder)."""
        ...
