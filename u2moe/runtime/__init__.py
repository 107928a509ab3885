"""Speech recognition from an `u2moe export` directory without PyTorch.

    from u2moe.runtime import load_model
    model = load_model("exp/onnx")                     # encoder/ctc/decoder.onnx, units.txt
    print(model.transcribe("a.wav", timestamps=True).words)
    recognizer = model.recognizer()                    # streaming: partials, endpoints

The same surface as `u2moe.load_model`: a `Transcriber` (decode/transcriber.py) over the
onnxruntime backend (backends/onnx_backend.py), so features, the stream object, CTC greedy
and prefix beam search, attention rescoring (with decoder.onnx), timestamps and
endpointing are the PyTorch path's own code. Needs onnxruntime, numpy, kaldi-native-fbank,
sentencepiece, soundfile, soxr, pyyaml: `pip install u2moe` without the `[torch]` extra.
"""

from pathlib import Path

from u2moe.decode.transcriber import Transcriber, Transcription

__all__ = ["Transcriber", "Transcription", "load_model"]


def load_model(
    export_dir: str | Path, int8: bool = False, threads: int = 1, **decode_options
) -> Transcriber:
    """Load an export directory (`u2moe export --format onnx`); int8: its *.int8.onnx files;
    threads: onnxruntime's intra-op threads. decode_options override the `decode:` section
    of its config.yaml (DecodeConfig fields), as in `u2moe.load_model`."""
    from u2moe.backends.onnx_backend import OnnxBackend
    from u2moe.config import load_yaml
    from u2moe.decode.transcriber import configured_transcriber

    export_dir = Path(export_dir)
    backend = OnnxBackend(export_dir, int8, threads)
    config = load_yaml(export_dir / "config.yaml")
    return configured_transcriber(backend, export_dir, config, decode_options)
