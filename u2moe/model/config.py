"""The `model:` section of a config: encoder, decoder, feed-forward (dense or MoE), chunks, loss."""

from dataclasses import dataclass, field
from typing import Literal

from u2moe.config import ConfigError


@dataclass
class FFNConfig:
    """Every FFN of the encoder (both macaron halves) or decoder: dense or MoE."""

    type: Literal["dense", "moe"] = "dense"
    n_experts: int = 8
    top_k: int = 2
    # Optional load-balancing loss (Switch-style); the paper uses none, so 0 by default.
    aux_loss_weight: float = 0.0


@dataclass
class EncoderConfig:
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 2048
    n_layers: int = 12
    subsampling: Literal[4, 6, 8] = 4
    kernel_size: int = 15
    causal: bool = True  # causal depthwise convolution (required for streaming)
    conv_norm: Literal["layer_norm", "batch_norm"] = "layer_norm"
    activation: Literal["swish", "relu", "gelu"] = "swish"
    macaron: bool = True
    use_conv: bool = True
    dropout: float = 0.1
    positional_dropout: float = 0.1
    attention_dropout: float = 0.0
    ffn: FFNConfig = field(default_factory=FFNConfig)


@dataclass
class DecoderConfig:
    n_heads: int = 4
    d_ff: int = 2048
    n_layers: int = 3  # left-to-right decoder blocks
    n_r2l_layers: int = 3  # right-to-left decoder blocks (0: no R2L decoder)
    activation: Literal["swish", "relu", "gelu"] = "relu"
    dropout: float = 0.1
    positional_dropout: float = 0.1
    self_attention_dropout: float = 0.0
    src_attention_dropout: float = 0.0
    ffn: FFNConfig = field(default_factory=FFNConfig)


@dataclass
class ChunkConfig:
    """Chunk masks in training (decode-time chunking is chosen per decode call)."""

    dynamic: bool = True  # dynamic chunk training: full context or a random chunk per batch
    max_chunk: int = 25  # random chunk sizes are uniform in [1, max_chunk] frames
    full_context_prob: float = 0.5  # probability of a full-context batch
    dynamic_left: bool = False  # also draw a random number of left chunks
    static_chunk_size: int = 0  # > 0: always this chunk size (static-chunk mode)


@dataclass
class ModelConfig:
    input_dim: int = 80
    vocab_size: int | None = None  # None: taken from the units file at training time
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    ctc_weight: float = 0.3
    reverse_weight: float = 0.3
    lsm_weight: float = 0.1
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
            (enc.kernel_size >= 1, f"encoder.kernel_size must be >= 1, got {enc.kernel_size}"),
            (
                enc.causal or enc.kernel_size % 2 == 1,
                f"encoder.kernel_size must be odd without causal, got {enc.kernel_size}",
            ),
            (0.0 <= self.ctc_weight <= 1.0, f"ctc_weight must be in [0, 1], got {self.ctc_weight}"),
            (
                0.0 <= self.reverse_weight <= 1.0,
                f"reverse_weight must be in [0, 1], got {self.reverse_weight}",
            ),
            (
                self.reverse_weight == 0.0 or dec.n_r2l_layers > 0,
                "reverse_weight > 0 needs a right-to-left decoder (decoder.n_r2l_layers > 0)",
            ),
            (
                self.vocab_size is None or self.vocab_size >= 3,
                f"vocab_size must be at least 3 (blank, unk, sos/eos), got {self.vocab_size}",
            ),
            (
                self.chunk.max_chunk >= 1,
                f"chunk.max_chunk must be >= 1, got {self.chunk.max_chunk}",
            ),
        ]
        for name, ffn in (("encoder", enc.ffn), ("decoder", dec.ffn)):
            checks.append((ffn.n_experts >= 1, f"{name}.ffn.n_experts must be >= 1"))
            checks.append(
                (
                    1 <= ffn.top_k <= ffn.n_experts,
                    f"{name}.ffn.top_k {ffn.top_k} must be in [1, n_experts {ffn.n_experts}]",
                )
            )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
