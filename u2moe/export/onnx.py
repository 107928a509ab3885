"""encoder.onnx, ctc.onnx and decoder.onnx: WeNet's ONNX layout of a U2++ model.

encoder.onnx, one streaming step (batch 1, WeNet's CPU layout and names):
  chunk (1, W, 80) float32 raw fbank (global CMVN is inside), W <= window
  offset () int64, required_cache_size () int64
  att_cache (num_blocks, head, C, 2 * d_k), cnn_cache (num_blocks, 1, d, kernel - 1) float32
  att_mask (1, 1, C + t) bool: True where a key (cache slot or new frame) may be attended
  -> output (1, t, d), r_att_cache (num_blocks, head, C', 2 * d_k), r_cnn_cache (like cnn_cache)
With left chunks (WeNet's fixed-shape mode), C is always chunk * left_chunks: the cache
starts as zeros, `offset` starts at required_cache_size (WeNet's and sherpa-onnx's
runtimes do so) and att_mask opens the cache chunk by chunk. Inside, the position of the
first new frame is offset - required_cache_size, so the step equals u2moe's forward_chunk on
a growing cache exactly (padding slots get negative positions and are masked). Without left
chunks C grows from 0 and offset counts encoder frames. A full-context export
(chunk_size -1) is the same step over a whole utterance with an empty cache.

encoder_batch.onnx, the same step for B streams at once (the server batches with it):
  chunk (B, W, 80), offset (B,) int64 (one per stream, as above), required_cache_size (),
  att_cache (B, num_blocks, head, C, 2 * d_k), cnn_cache (B, num_blocks, d, kernel - 1),
  att_mask (B, 1, C + t) -> output (B, t, d), r_att_cache, r_cnn_cache (batch first).
Streams of different ages share one C: their caches are left-padded and att_mask hides
the padding (u2moe/decode/stream.py).

ctc.onnx: hidden (B, T, d) -> probs (B, T, V) CTC log-probs (WeNet's names).

decoder.onnx, the scores of an n-best for attention rescoring (one utterance):
  encoder_out (1, T, d); hyps (N, L) = sos + tokens padded with eos; hyps_lens (N,)
  = tokens + 1; r_hyps (N, L) = sos + reversed tokens padded with eos
  -> score (N,), r_score (N,): sums of the L2R / R2L decoder's log-probs of each
  hypothesis followed by eos (r_score is 0 without a right decoder).
"""

import contextlib
import io
import logging
from pathlib import Path

import onnx
import torch
from torch import nn

from u2moe.export.moe import TRANSLATIONS, register_moe_schema, with_moe_form
from u2moe.model.u2 import U2Model, decoder_inputs

# Models bigger than this keep their weights in a side file (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1 << 30


class EncoderStep(nn.Module):
    """WeNet's encoder.onnx around `ConformerEncoder.forward_chunk`."""

    def __init__(self, encoder: nn.Module, required_cache_size: int):
        super().__init__()
        self.encoder = encoder
        self.required_cache_size = required_cache_size
        self.fixed_cache = required_cache_size >= 0

    def forward(self, chunk, offset, required_cache_size, att_cache, cnn_cache, att_mask):
        # WeNet's fixed-shape mode counts offset from the end of the zero cache.
        position = offset - required_cache_size if self.fixed_cache else offset
        return self.encoder.forward_chunk(
            chunk, position, self.required_cache_size, att_cache, cnn_cache, att_mask
        )


class CtcHead(nn.Module):
    def __init__(self, model: U2Model):
        super().__init__()
        self.ctc = model.ctc

    def forward(self, hidden):
        return self.ctc.log_probs(hidden)


def hypothesis_scores(log_probs: torch.Tensor, hyps: torch.Tensor, lengths: torch.Tensor, eos):
    """log_probs (N, L, V) of decoder inputs hyps (N, L) (sos first, eos padded), lengths (N,)
    counting sos -> (N,) sum of log-probs of each hypothesis and then eos."""
    eos_column = torch.full_like(hyps[:, :1], eos)
    targets = torch.cat([hyps[:, 1:], eos_column], dim=1)  # the token after each input
    picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
    real = torch.arange(hyps.size(1), device=hyps.device).unsqueeze(0) < lengths.unsqueeze(1)
    return (picked * real).sum(dim=1)


class DecoderScores(nn.Module):
    """decoder.onnx: both decoders' scores of an n-best (see the module docstring)."""

    def __init__(self, model: U2Model):
        super().__init__()
        self.model = model

    def forward(self, encoder_out, hyps, hyps_lens, r_hyps):
        n = hyps.size(0)
        enc = encoder_out.expand(n, -1, -1)
        enc_lengths = torch.full_like(hyps_lens, encoder_out.size(1))
        l2r, r2l = self.model.decoder_log_probs(enc, enc_lengths, hyps, hyps_lens, r_hyps)
        eos = self.model.eos
        score = hypothesis_scores(l2r, hyps, hyps_lens, eos)
        if r2l is None:
            return score, torch.zeros_like(score)
        return score, hypothesis_scores(r2l, r_hyps, hyps_lens, eos)


def encoder_example(model: U2Model, chunk_size: int, left_chunks: int, batched: bool = False):
    """Example inputs of encoder.onnx (the first step), or of encoder_batch.onnx when
    batched, and their dynamic dimensions."""
    enc = model.encoder
    attn = enc.encoders[0].self_attn
    conv = enc.encoders[0].conv_module
    kernel = conv.lorder if conv is not None and conv.lorder else 0
    example_chunk = chunk_size if chunk_size > 0 else 16  # full context: any length
    frames = (example_chunk - 1) * enc.subsampling_rate + enc.right_context + 1
    cache = chunk_size * left_chunks if chunk_size > 0 and left_chunks >= 0 else 0
    t = enc.embed.output_length(frames)
    batch = 2 if batched else 1  # an example batch of 1 would fix the batch dimension at 1
    att_mask = torch.ones(batch, 1, cache + t, dtype=torch.bool)
    att_mask[..., :cache] = False
    offset = torch.full((batch,), cache)
    att_cache = torch.zeros(batch, len(enc.encoders), attn.h, cache, 2 * attn.d_k)
    cnn_cache = torch.zeros(batch, len(enc.encoders), enc.output_size, kernel)
    if not batched:  # WeNet's layout
        offset, att_cache, cnn_cache = offset[0], att_cache[0], cnn_cache.transpose(0, 1)
    example = (
        torch.randn(batch, frames, enc.input_dim),
        offset,
        torch.tensor(cache if cache else -1),
        att_cache,
        cnn_cache,
        att_mask,
    )
    auto = torch.export.Dim.AUTO
    if batched:
        batch = {0: auto}
        dynamic = ({0: auto, 1: auto}, batch, None, {0: auto, 3: auto}, batch, {0: auto, 2: auto})
    else:
        dynamic = ({1: auto}, None, None, {2: auto}, None, {2: auto})
    return example, dynamic


def export_onnx(module, args, path, input_names, output_names, dynamic_shapes, moe_form):
    """Export `module(*args)` to `path` (MoE layers in `moe_form`) with the dynamo exporter."""
    register_moe_schema()
    module = with_moe_form(module, moe_form).eval()
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    # the exporter prints its progress on stdout: kept out of the command's output
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            module,
            args,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            custom_translation_table=TRANSLATIONS,
            opset_version=18,
            verbose=False,
        )
    program.save(str(path), external_data=size > EXTERNAL_DATA_BYTES)


def add_metadata(path: Path, metadata: dict) -> None:
    """Write string metadata into an .onnx file (in place)."""
    proto = onnx.load(str(path), load_external_data=False)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=str(key), value=str(value))
    onnx.save(proto, str(path))


def export_encoder(
    model: U2Model, path, chunk_size: int, left_chunks: int, moe_form: str, batched=False
):
    """encoder.onnx (WeNet's batch-1 step) or, batched, encoder_batch.onnx."""
    required = chunk_size * left_chunks if chunk_size > 0 and left_chunks >= 0 else -1
    example, dynamic = encoder_example(model, chunk_size, left_chunks, batched)
    names = ["chunk", "offset", "required_cache_size", "att_cache", "cnn_cache", "att_mask"]
    step = EncoderStep(model.encoder, required)
    export_onnx(
        step, example, path, names, ["output", "r_att_cache", "r_cnn_cache"], dynamic, moe_form
    )


def export_ctc(model: U2Model, path) -> None:
    hidden = torch.randn(2, 16, model.encoder.output_size)
    dynamic = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},)
    export_onnx(CtcHead(model), (hidden,), path, ["hidden"], ["probs"], dynamic, "sorted")


def export_decoder(model: U2Model, path, moe_form: str) -> None:
    hyps, lengths, r_hyps = decoder_inputs([[2, 3, 4], [5, 6]], model.sos, model.eos)
    enc = torch.randn(1, 20, model.encoder.output_size)
    auto = torch.export.Dim.AUTO
    dynamic = ({1: auto}, {0: auto, 1: auto}, {0: auto}, {0: auto, 1: auto})
    names = ["encoder_out", "hyps", "hyps_lens", "r_hyps"]
    args = (enc, hyps, lengths, r_hyps)
    export_onnx(DecoderScores(model), args, path, names, ["score", "r_score"], dynamic, moe_form)


def encoder_metadata(model: U2Model, chunk_size: int, left_chunks: int, moe_form: str) -> dict:
    """encoder.onnx's metadata: WeNet's keys (its runtime reads sos_symbol / eos_symbol) and
    what u2moe's runtime needs. cnn_module_kernel is the cached frames + 1 (the kernel of a
    causal convolution; 1 for a non-causal one, whose cache is empty)."""
    enc = model.encoder
    conv = enc.encoders[0].conv_module
    frames = (chunk_size - 1) * enc.subsampling_rate + enc.right_context + 1
    return {
        "output_size": enc.output_size,
        "num_blocks": len(enc.encoders),
        "head": enc.encoders[0].self_attn.h,
        "cnn_module_kernel": (conv.lorder if conv is not None else 0) + 1,
        "subsampling_rate": enc.subsampling_rate,
        "right_context": enc.right_context,
        "sos": model.sos,
        "eos": model.eos,
        "sos_symbol": model.sos,
        "eos_symbol": model.eos,
        "is_bidirectional_decoder": int(model.decoder.right_decoder is not None),
        "chunk_size": chunk_size,
        "left_chunks": left_chunks,
        "decoding_window": frames if chunk_size > 0 else -1,
        "feature_size": enc.input_dim,
        "vocab_size": model.vocab_size,
        "batch": 1,
        "moe_form": moe_form,
    }


def quantize(path: Path) -> Path:
    """path.onnx -> path.int8.onnx: onnxruntime's dynamic int8 quantization of MatMul/Gemm
    weights (per output channel). The MoE operator's expert weights stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_suffix(".int8.onnx")
    # a model over protobuf's 2 GB limit (fp32 weights kept fp32 beside int8 ones, the MoE
    # operator's experts) is saved with its weights in an external-data file, as exported
    external = path.stat().st_size > EXTERNAL_DATA_BYTES or any(
        p.is_file() and p.name.startswith(f"{path.name}.") for p in path.parent.iterdir()
    )
    logging.disable(logging.WARNING)  # its advice to pre-process, once per file
    try:
        quantize_dynamic(
            path,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=external,
        )
    finally:
        logging.disable(logging.NOTSET)
    return target


def export_onnx_dir(
    model, units, out: Path, chunk_size, left_chunks, moe_form, int8, batch_encoder=True
) -> None:
    """encoder.onnx, ctc.onnx, decoder.onnx, encoder_batch.onnx unless not batch_encoder
    (+ *.int8.onnx of each) and units.txt into `out`."""
    from u2moe.data.tokenizer import write_units

    metadata = encoder_metadata(model, chunk_size, left_chunks, moe_form)
    files = {"encoder.onnx": metadata, "ctc.onnx": metadata, "decoder.onnx": metadata}
    export_encoder(model, out / "encoder.onnx", chunk_size, left_chunks, moe_form)
    export_ctc(model, out / "ctc.onnx")
    export_decoder(model, out / "decoder.onnx", moe_form)
    if batch_encoder:
        path = out / "encoder_batch.onnx"
        export_encoder(model, path, chunk_size, left_chunks, moe_form, batched=True)
        files[path.name] = metadata | {"batch": -1}  # any number of streams
    for name, file_metadata in files.items():
        add_metadata(out / name, file_metadata)
        if int8:
            quantize(out / name)
    write_units(out / "units.txt", units)
