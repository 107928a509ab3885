"""An `u2moe export` directory behind the `Backend` protocol: onnxruntime sessions, no torch.

`encoder_step` runs the B streams of a call in one encoder_batch.onnx call when the export
has it (encoder.onnx, there for WeNet's and sherpa-onnx's runtimes, is then not loaded);
otherwise through encoder.onnx, WeNet's batch-1 step, one after another (each with
its own rows of the padded caches and of att_mask), stacking the results. In a fixed-shape
(left-chunk) export, both count `offset` from the end of a cache of required_cache_size
slots (WeNet's convention); the stream object's offset is the real one, so the backend
adds required_cache_size. The export's chunk size and left chunks become the model's
defaults (ModelInfo.chunk_size / num_left_chunks): a left-chunk export keeps at most its
own cache, a full-cache export any. Full-context `encode` runs each utterance as one chunk
through the same step (every export can).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from u2moe.backends import ModelInfo
from u2moe.config import load_yaml
from u2moe.decode.batch import encode_streams
from u2moe.errors import UserError


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session, or a one-line UserError for a missing or broken file."""
    if not path.is_file():
        raise UserError(f"{path}: no such file (is {path.parent} an `u2moe export` directory?)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a usable ONNX model ({reason[:200]})") from None


def export_section(export_dir: Path) -> dict:
    config = export_dir / "config.yaml"
    if not export_dir.is_dir():
        raise UserError(f"{export_dir}: no such export directory")
    section = load_yaml(config).get("export") if config.is_file() else None
    if not isinstance(section, dict) or section.get("format") != "onnx":
        raise UserError(f"{export_dir}: not an `u2moe export` (--format onnx) directory")
    return section


def model_info(metadata: dict[str, str]) -> ModelInfo:
    """ModelInfo from encoder.onnx's metadata (u2moe/export/onnx.py)."""
    value = {key: int(text) for key, text in metadata.items() if text.lstrip("-").isdigit()}
    return ModelInfo(
        subsampling_rate=value["subsampling_rate"],
        right_context=value["right_context"],
        num_blocks=value["num_blocks"],
        n_heads=value["head"],
        d_k=value["output_size"] // value["head"],
        output_size=value["output_size"],
        cnn_cache_frames=value["cnn_module_kernel"] - 1,
        vocab_size=value["vocab_size"],
        sos=value["sos"],
        eos=value["eos"],
        has_right_decoder=bool(value["is_bidirectional_decoder"]),
        feature_dim=value["feature_size"],
        chunk_size=value["chunk_size"],
        num_left_chunks=value["left_chunks"],
    )


class OnnxBackend:
    """`Backend` over encoder.onnx, ctc.onnx and decoder.onnx (their *.int8.onnx with int8)."""

    def __init__(self, export_dir: str | Path, int8: bool = False, threads: int = 1):
        export_dir = Path(export_dir)
        section = export_section(export_dir)
        if int8 and not section.get("int8"):
            raise UserError(f"{export_dir}: exported without --int8 (no *.int8.onnx files)")
        suffix = ".int8.onnx" if int8 else ".onnx"
        # encoder_batch.onnx does all that encoder.onnx does, so only one is loaded
        self.batched = (export_dir / f"encoder_batch{suffix}").is_file()
        encoder = "encoder_batch" if self.batched else "encoder"
        self.encoder, self.ctc, self.decoder = (
            open_session(export_dir / f"{name}{suffix}", threads)
            for name in (encoder, "ctc", "decoder")
        )
        self.info = model_info(self.encoder.get_modelmeta().custom_metadata_map)
        chunk, left = self.info.chunk_size, self.info.num_left_chunks
        self.cache_limit = chunk * left if chunk > 0 and left >= 0 else -1

    def encoder_step(self, chunk, offset, required_cache_size, att_cache, cnn_cache, att_mask):
        limit = self.cache_limit
        if limit >= 0 and not 0 <= required_cache_size <= limit:
            raise UserError(
                f"this export keeps {limit} frames of attention cache "
                f"(chunk {self.info.chunk_size} x {self.info.num_left_chunks} left chunks); "
                f"decoding asked for {required_cache_size}"
            )
        inputs = {
            "chunk": np.ascontiguousarray(chunk, dtype=np.float32),
            "offset": np.asarray(offset, dtype=np.int64) + max(limit, 0),
            "required_cache_size": np.array(limit, dtype=np.int64),
            "att_cache": np.ascontiguousarray(att_cache, dtype=np.float32),
            "cnn_cache": np.ascontiguousarray(cnn_cache, dtype=np.float32),
            "att_mask": np.ascontiguousarray(att_mask, dtype=bool),
        }
        if self.batched:
            return tuple(self.encoder.run(None, inputs))
        outputs = [self.encoder.run(None, one_stream(inputs, b)) for b in range(len(chunk))]
        out = np.concatenate([o[0] for o in outputs])
        new_att = np.stack([o[1] for o in outputs])
        new_cnn = np.stack([o[2][:, 0] for o in outputs])
        return out, new_att, new_cnn

    def encode(self, feats, lengths, chunk_size=-1, num_left_chunks=-1):
        return encode_streams(self, feats, lengths, chunk_size, num_left_chunks)

    def ctc_log_probs(self, enc):
        return self.ctc.run(None, {"hidden": np.ascontiguousarray(enc, dtype=np.float32)})[0]

    def decoder_scores(self, enc, enc_length, hyps):
        if not hyps:
            return np.zeros(0), np.zeros(0)
        hyps_in, lengths, r_hyps = decoder_inputs(hyps, self.info.sos, self.info.eos)
        score, r_score = self.decoder.run(
            None,
            {
                "encoder_out": np.ascontiguousarray(enc[None, :enc_length], dtype=np.float32),
                "hyps": hyps_in,
                "hyps_lens": lengths,
                "r_hyps": r_hyps,
            },
        )
        r_score = r_score if self.info.has_right_decoder else np.zeros_like(r_score)
        return score.astype(np.float64), r_score.astype(np.float64)


def one_stream(inputs: dict, b: int) -> dict:
    """Stream b of encoder_batch.onnx's inputs in encoder.onnx's (WeNet's batch-1) layout."""
    return {
        "chunk": inputs["chunk"][b : b + 1],
        "offset": np.array(inputs["offset"][b]),
        "required_cache_size": inputs["required_cache_size"],
        "att_cache": inputs["att_cache"][b],
        "cnn_cache": np.ascontiguousarray(inputs["cnn_cache"][b][:, None]),
        "att_mask": inputs["att_mask"][b : b + 1],
    }


def decoder_inputs(hyps: list[list[int]], sos: int, eos: int):
    """decoder.onnx's inputs of an n-best: hyps (N, L) = sos + tokens padded with eos,
    lengths (N,) = tokens + 1, r_hyps (N, L) = sos + reversed tokens padded with eos."""
    width = max(len(h) for h in hyps) + 1
    hyps_in = np.full((len(hyps), width), eos, dtype=np.int64)
    r_hyps = hyps_in.copy()
    hyps_in[:, 0] = r_hyps[:, 0] = sos
    for i, hyp in enumerate(hyps):
        hyps_in[i, 1 : len(hyp) + 1] = hyp
        r_hyps[i, 1 : len(hyp) + 1] = hyp[::-1]
    return hyps_in, np.array([len(h) + 1 for h in hyps], dtype=np.int64), r_hyps
