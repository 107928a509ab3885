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

import dataclasses
from pathlib import Path

from u2moe.backends.torch_backend import TorchBackend
from u2moe.config import parse_section
from u2moe.data.config import DataConfig
from u2moe.data.tokenizer import load_tokenizer
from u2moe.decode.config import DecodeConfig
from u2moe.decode.transcriber import Transcriber, Transcription
from u2moe.errors import UserError
from u2moe.model.io import CONFIG, load_model_dir

__all__ = ["Transcriber", "Transcription", "load_model"]


def load_model(model_dir: str | Path, device: str = "cpu", **decode_options) -> Transcriber:
    """Load a model directory (config.yaml, model.pt, units.txt[, bpe.model]).

    decode_options override fields of the directory's `decode:` section (DecodeConfig).
    """
    model_dir = Path(model_dir)
    model, config, _ = load_model_dir(model_dir)
    where = f"{model_dir / CONFIG}"
    data_cfg = parse_section(DataConfig, config.get("data"), f"{where}: data")
    parse_section(DecodeConfig, decode_options, "decode options")  # blame bad options first
    decode_section = {**(config.get("decode") or {}), **decode_options}
    decode_cfg = parse_section(DecodeConfig, decode_section, f"{where}: decode")
    if model.decoder.right_decoder is None and decode_cfg.reverse_weight > 0:
        # without an R2L decoder, rescoring uses the L2R one alone unless told otherwise
        if "reverse_weight" in decode_section:
            raise UserError(
                f"{model_dir}: reverse_weight {decode_cfg.reverse_weight} needs a "
                "right-to-left decoder, which this model does not have"
            )
        decode_cfg = dataclasses.replace(decode_cfg, reverse_weight=0.0)
    tokenizer = load_tokenizer(model_dir, data_cfg.tokenizer)
    try:
        backend = TorchBackend(model, device)
    except (RuntimeError, AssertionError) as e:  # e.g. cuda asked for on a CPU-only build
        raise UserError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    return Transcriber(backend, tokenizer, data_cfg, decode_cfg)
