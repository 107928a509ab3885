"""`--format sherpa-onnx`: model.onnx + tokens.txt in the layout of sherpa-onnx's WeNet CTC
models (sherpa_onnx.OnlineRecognizer.from_wenet_ctc / OfflineRecognizer.from_wenet_ctc).

Streaming (chunk_size > 0; sherpa-onnx keeps a fixed cache of chunk * left_chunks slots and
counts offset from its end, as WeNet's runtime): inputs by position
  x (1, W, 80) float32 raw fbank, offset (1,) int64, required_cache_size (1,) int64,
  attn_cache (num_blocks, head, chunk * left_chunks, 2 * d_k), conv_cache (num_blocks, 1,
  d, kernel - 1), attn_mask (1, 1, chunk * left_chunks + chunk) bool
  -> log_probs (1, t, V), next_att_cache, next_conv_cache;
metadata model_type wenet_ctc, head, num_blocks, output_size, cnn_module_kernel,
right_context, subsampling_factor, vocab_size, chunk_size, left_chunks.
Full context (chunk_size -1): x (N, T, 80), x_lens (N,) int64 -> log_probs (N, T', V),
log_probs_lens (N,) int64; metadata model_type, subsampling_factor, vocab_size.
CMVN is inside the model; sherpa-onnx feeds WeNet models fbank of 16-bit-scaled samples.
"""

from pathlib import Path

import torch
from torch import nn

from u2moe.export.onnx import (
    EncoderStep,
    add_metadata,
    encoder_example,
    encoder_metadata,
    export_onnx,
    quantize,
)
from u2moe.model.u2 import U2Model


class StreamingCtc(nn.Module):
    """One streaming step and the CTC head: sherpa-onnx's streaming wenet_ctc model."""

    def __init__(self, model: U2Model, required_cache_size: int):
        super().__init__()
        self.step = EncoderStep(model.encoder, required_cache_size)
        self.ctc = model.ctc

    def forward(self, x, offset, required_cache_size, attn_cache, conv_cache, attn_mask):
        out, att, cnn = self.step(x, offset, required_cache_size, attn_cache, conv_cache, attn_mask)
        return self.ctc.log_probs(out), att, cnn


class OfflineCtc(nn.Module):
    """The full-context encoder and the CTC head: sherpa-onnx's offline wenet_ctc model.

    One `forward_chunk` over whole utterances with empty caches, padding masked from
    attention; equal to `U2Model.encode` for every utterance of a batch when the convolution
    is causal (padding comes after the real frames), and for a batch of one in any case.
    """

    def __init__(self, model: U2Model):
        super().__init__()
        self.model = model

    def forward(self, x, x_lens):
        enc = self.model.encoder
        attn = enc.encoders[0].self_attn
        conv = enc.encoders[0].conv_module
        b, t = x.size(0), enc.embed.output_length(x.size(1))
        lengths = x_lens
        for kernel, stride in enc.embed.layers:
            lengths = (lengths - kernel) // stride + 1
        att_cache = x.new_zeros(b, len(enc.encoders), attn.h, 0, 2 * attn.d_k)
        frames = conv.lorder if conv is not None else 0
        cnn_cache = x.new_zeros(b, len(enc.encoders), enc.output_size, frames)
        att_mask = torch.arange(t, device=x.device).view(1, 1, t) < lengths.view(b, 1, 1)
        out, _, _ = enc.forward_chunk(x, 0, -1, att_cache, cnn_cache, att_mask)
        return self.model.ctc_log_probs(out), lengths


def export_sherpa(model: U2Model, units, out: Path, chunk_size, left_chunks, moe_form, int8):
    """model.onnx (+ model.int8.onnx) and tokens.txt into `out`."""
    from u2moe.data.tokenizer import write_units

    path = out / "model.onnx"
    common = {"model_type": "wenet_ctc", "version": "1", "model_author": "u2moe"}
    auto = torch.export.Dim.AUTO
    if chunk_size > 0:
        example, dynamic = encoder_example(model, chunk_size, left_chunks)
        example = (example[0], example[1].reshape(1), example[2].reshape(1), *example[3:])
        names = ["x", "offset", "required_cache_size", "attn_cache", "conv_cache", "attn_mask"]
        outputs = ["log_probs", "next_att_cache", "next_conv_cache"]
        module = StreamingCtc(model, chunk_size * left_chunks)
        export_onnx(module, example, path, names, outputs, dynamic, moe_form)
        meta = encoder_metadata(model, chunk_size, left_chunks, moe_form)
        keys = ("head", "num_blocks", "output_size", "cnn_module_kernel", "right_context")
        keys += ("vocab_size", "chunk_size", "left_chunks", "moe_form")
        metadata = common | {"comment": "streaming"} | {k: meta[k] for k in keys}
    else:
        frames = 200
        example = (torch.randn(1, frames, model.encoder.input_dim), torch.tensor([frames]))
        dynamic = ({0: auto, 1: auto}, {0: auto})
        outputs = ["log_probs", "log_probs_lens"]
        export_onnx(OfflineCtc(model), example, path, ["x", "x_lens"], outputs, dynamic, moe_form)
        metadata = common | {"comment": "non-streaming", "vocab_size": model.vocab_size}
    metadata["subsampling_factor"] = model.encoder.subsampling_rate
    add_metadata(path, metadata)
    if int8:
        quantize(path)
    write_units(out / "tokens.txt", units)
