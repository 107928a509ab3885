"""The Python API: load a model directory, transcribe audio, or stream it.

    import u2moe
    model = u2moe.load_model("exp/model")              # a directory from train / import-wenet
    print(model.transcribe("a.wav").text)
    for word in model.transcribe("a.wav", timestamps=True).words:
        print(word.start, word.end, word.text)
    recognizer = model.recognizer()                    # streaming, see decode/recognizer.py

Decoding options come from the model directory's `decode:` section and can be overridden
as keywords: `u2moe.load_model(d, chunk_size=16, modes=["attention_rescoring"])`.
`load_model` returns a `Transcriber` (decode/transcriber.py) over the PyTorch backend.
"""

from pathlib import Path

from u2moe.backends.torch_backend import TorchBackend
from u2moe.decode.transcriber import Transcriber, Transcription, configured_transcriber
from u2moe.errors import UserError
from u2moe.model.io import load_model_dir

__all__ = ["Transcriber", "Transcription", "load_model"]


def load_model(model_dir: str | Path, device: str = "cpu", **decode_options) -> Transcriber:
    """Load a model directory (config.yaml, model.pt, units.txt[, bpe.model]).

    decode_options override fields of the directory's `decode:` section (DecodeConfig).
    """
    model_dir = Path(model_dir)
    model, config, _ = load_model_dir(model_dir)
    try:
        backend = TorchBackend(model, device)
    except (RuntimeError, AssertionError) as e:  # e.g. cuda asked for on a CPU-only build
        raise UserError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    return configured_transcriber(backend, model_dir, config, decode_options)
