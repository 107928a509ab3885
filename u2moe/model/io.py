"""Model directories: what training, averaging and import-wenet write, and decoding reads.

A model directory holds
- `config.yaml`: every config section (`model` always; `data`, `train`, `decode` as known),
- `model.pt`: the U2Model state dict, global CMVN included (encoder.global_cmvn.*),
- `units.txt`: WeNet's `<token> <id>` table, its length the model's vocab_size,
- `bpe.model`: the sentencepiece model, for BPE units only.
Each file is written to a temporary name and renamed, so a reader never sees half of one.
"""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from u2moe.config import as_dict, load_yaml, parse_section, save_yaml
from u2moe.data.files import copy_file_atomic, save_torch_atomic
from u2moe.data.tokenizer import read_units, write_units
from u2moe.errors import UserError
from u2moe.model.config import ModelConfig
from u2moe.model.u2 import U2Model

CONFIG, WEIGHTS, UNITS, BPE = "config.yaml", "model.pt", "units.txt", "bpe.model"
NOT_TORCH = "not a file written by torch.save"


def save_model_dir(
    directory: str | Path,
    model: U2Model,
    config: dict[str, Any],
    units: list[str],
    bpe_model: str | Path | None = None,
) -> None:
    """Write `model` into `directory` (created if needed).

    config: all config sections; its `model` section is replaced by the model's own
    config, so the two cannot disagree. bpe_model: a sentencepiece model to copy beside.
    """
    if len(units) != model.vocab_size:
        raise ValueError(f"{len(units)} units for a model with vocab_size {model.vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch_atomic(state, directory / WEIGHTS)
    write_units(directory / UNITS, units)
    if bpe_model is not None and Path(bpe_model).resolve() != (directory / BPE).resolve():
        copy_file_atomic(bpe_model, directory / BPE)
    sections = {"model": as_dict(model.cfg)} | {k: v for k, v in config.items() if k != "model"}
    save_yaml(sections, directory / CONFIG)


def load_model_dir(directory: str | Path) -> tuple[U2Model, dict[str, Any], list[str]]:
    """-> (model in eval mode on CPU, config sections, units). One-line UserError for a
    missing file, a bad config, or weights that do not fit the config."""
    directory = Path(directory)
    cfg, config, units = read_model_config(directory)
    model = U2Model(cfg)
    load_weights(model, read_state_dict(directory / WEIGHTS), str(directory / WEIGHTS))
    return model.eval(), config, units


def read_model_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any], list[str]]:
    """A model (or experiment) directory's config -> (ModelConfig with vocab_size set from
    the units, all config sections, units). One-line UserError for a missing or bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model directory")
    config = load_yaml(directory / CONFIG)
    cfg = parse_section(ModelConfig, config.get("model"), f"{directory / CONFIG}: model")
    units = read_units(directory / UNITS)
    if cfg.vocab_size is None:
        cfg.vocab_size = len(units)
    elif cfg.vocab_size != len(units):
        raise UserError(
            f"{directory / UNITS}: {len(units)} units, but model.vocab_size is {cfg.vocab_size}"
        )
    return cfg, config, units


def torch_load(path: str | Path, what: str) -> Any:
    """`torch.load` (tensors and plain values only) of a `what` file, or a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if reason.startswith("Weights only load failed"):  # torch's advice is not for users
            objects = "Unsupported global" in str(e)
            reason = "it holds Python objects, not only tensors" if objects else NOT_TORCH
    except (LookupError, ValueError):  # other bytes (a WAV, text) upset the unpickler anyhow
        reason = NOT_TORCH
    raise UserError(f"{path}: corrupt or unreadable {what} ({reason})")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save (tensors only), or a one-line UserError."""
    state = torch_load(path, "weights file")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` strictly; a mismatch is one UserError naming the first offending keys."""
    problem = state_dict_mismatch(model, state)
    if problem:
        raise UserError(f"{where}: weights do not match the model config: {problem}")
    model.load_state_dict(state)


def state_dict_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'' when `state` fits `model`, else which keys are missing, unexpected or mis-shaped
    (the first three of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith(".pe")]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{label} {', '.join(keys[:3])}{more}")
    return "; ".join(parts)
