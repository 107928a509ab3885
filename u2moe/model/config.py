"""The `model:` section of a config: encoder, decoder, feed-forward (dense or MoE), chunks, loss."""

from dataclasses import dataclass, field
from typing import Literal

from u2moe.config import ConfigError, bounded


@dataclass
class FFNConfig:
    """Every FFN of the encoder (both macaron halves) or decoder: dense or MoE."""

    type: Literal["dense", "moe"] = "dense"
    n_experts: int = bounded(8, ge=1)
    top_k: int = bounded(2, ge=1)  # and at most n_experts
    # Optional load-balancing loss (Switch-style); the paper uses none, so 0 by default.
    aux_loss_weight: float = bounded(0.0, ge=0)


@dataclass
class EncoderConfig:
    d_model: int = bounded(256, ge=1)
    n_heads: int = bounded(4, ge=1)
    d_ff: int = bounded(2048, ge=1)
    n_layers: int = bounded(12, ge=1)
    subsampling: Literal[4, 6, 8] = 4
    kernel_size: int = bounded(15, ge=1)
    causal: bool = True  # causal depthwise convolution (required for streaming)
    conv_norm: Literal["layer_norm", "batch_norm"] = "layer_norm"
    activation: Literal["swish", "relu", "gelu"] = "swish"
    macaron: bool = True
    use_conv: bool = True
    dropout: float = bounded(0.1, ge=0, le=1)
    positional_dropout: float = bounded(0.1, ge=0, le=1)
    attention_dropout: float = bounded(0.0, ge=0, le=1)
    ffn: FFNConfig = field(default_factory=FFNConfig)


@dataclass
class DecoderConfig:
    n_heads: int = bounded(4, ge=1)
    d_ff: int = bounded(2048, ge=1)
    n_layers: int = bounded(3, ge=1)  # left-to-right decoder blocks
    n_r2l_layers: int = bounded(3, ge=0)  # right-to-left decoder blocks (0: no R2L decoder)
    activation: Literal["swish", "relu", "gelu"] = "relu"
    dropout: float = bounded(0.1, ge=0, le=1)
    positional_dropout: float = bounded(0.1, ge=0, le=1)
    self_attention_dropout: float = bounded(0.0, ge=0, le=1)
    src_attention_dropout: float = bounded(0.0, ge=0, le=1)
    ffn: FFNConfig = field(default_factory=FFNConfig)


@dataclass
class ChunkConfig:
    """Chunk masks in training (decode-time chunking is chosen per decode call)."""

    dynamic: bool = True  # dynamic chunk training: full context or a random chunk per batch
    max_chunk: int = bounded(25, ge=1)  # random chunk sizes are uniform in [1, max_chunk] frames
    full_context_prob: float = bounded(0.5, ge=0, le=1)  # probability of a full-context batch
    dynamic_left: bool = False  # also draw a random number of left chunks
    static_chunk_size: int = bounded(0, ge=0)  # > 0: always this chunk size (static-chunk mode)


@dataclass
class ModelConfig:
    input_dim: int = bounded(80, ge=1)
    # None: taken from the units file at training time; at least blank, unk, sos/eos
    vocab_size: int | None = bounded(None, ge=3)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    ctc_weight: float = bounded(0.3, ge=0, le=1)
    reverse_weight: float = bounded(0.3, ge=0, le=1)
    lsm_weight: float = bounded(0.1, ge=0, lt=1)
    length_normalized_loss: bool = False

    def __post_init__(self):
        enc, dec = self.encoder, self.decoder
        checks = [
            (
                enc.d_model % enc.n_heads == 0,
                f"encoder.d_model {enc.d_model} is not divisible by encoder.n_heads {enc.n_heads}",
            ),
            (
                enc.d_model % dec.n_heads == 0,
                f"encoder.d_model {enc.d_model} is not divisible by decoder.n_heads {dec.n_heads}",
            ),
            (
                enc.causal or enc.kernel_size % 2 == 1,
                f"encoder.kernel_size must be odd without causal, got {enc.kernel_size}",
            ),
            (
                self.reverse_weight == 0.0 or dec.n_r2l_layers > 0,
                "reverse_weight > 0 needs a right-to-left decoder (decoder.n_r2l_layers > 0)",
            ),
        ]
        for name, ffn in (("encoder", enc.ffn), ("decoder", dec.ffn)):
            checks.append(
                (
                    1 <= ffn.top_k <= ffn.n_experts,
                    f"{name}.ffn.top_k {ffn.top_k} must be in [1, n_experts {ffn.n_experts}]",
                )
            )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
