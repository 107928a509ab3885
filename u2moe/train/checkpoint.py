"""Training checkpoints: the best-N index by dev loss, and averaging (written atomically).

An experiment keeps `checkpoints/step-<N>.pt` files and `checkpoints/index.json`, a list
of `{"step", "file", "dev_loss"}` records, newest last. A checkpoint holds everything a
resumed run needs to continue exactly where the stopped one was: model, optimizer,
scheduler, step, epoch, data position and the RNG states of every rank.
"""

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from u2moe.data.files import save_torch_atomic, write_text_atomic
from u2moe.errors import UserError
from u2moe.model.io import torch_load

INDEX = "index.json"
log = logging.getLogger("u2moe.train")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain Python values only), or a one-line UserError."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not a u2moe training checkpoint (no 'model' entry)")
    return ckpt


def rng_state(model: nn.Module | None = None) -> dict[str, Any]:
    """This process's RNG states: Python, NumPy, torch CPU and CUDA, and every torch.Generator
    a module of `model` keeps (e.g. the encoder's chunk draws).

    Plain Python values only (byte states as lists of ints), so that they travel through
    `all_gather_object` and load with torch.load(weights_only=True).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state().tolist(),
        "modules": {k: g.get_state().tolist() for k, g in _module_generators(model).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any], model: nn.Module | None = None) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_bytes(state["cuda"]))
    for key, generator in _module_generators(model).items():
        generator.set_state(_bytes(state["modules"][key]))


def _bytes(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _module_generators(model: nn.Module | None) -> dict[str, torch.Generator]:
    if model is None:
        return {}
    return {
        f"{name}.{attr}": value
        for name, module in model.named_modules()
        for attr, value in vars(module).items()
        if isinstance(value, torch.Generator)
    }


def _as_tuples(value: Any) -> Any:
    # torch.load(weights_only=True) may hand tuples back as lists; random.setstate needs tuples.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def read_index(ckpt_dir: Path) -> list[dict[str, Any]]:
    """The checkpoint records of an experiment, oldest first ([] when there are none).

    Without index.json but with step-<N>.pt files (the index lost, or deleted by hand),
    the index is rebuilt from the files, so that no later save overwrites or deletes
    a checkpoint the index does not know about.
    """
    path = ckpt_dir / INDEX
    if not path.is_file():
        return rebuild_index(ckpt_dir)
    try:
        records = json.loads(path.read_text())
        assert isinstance(records, list) and all("file" in r and "step" in r for r in records)
    except (json.JSONDecodeError, AssertionError):
        raise UserError(f"{path}: corrupt checkpoint index (expected a JSON list)") from None
    return records


def rebuild_index(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Records for the step-<N>.pt files of `ckpt_dir` (dev losses read from them), written
    to index.json if there are any; [] if there are none."""
    steps = sorted(
        int(p.stem.removeprefix("step-"))
        for p in ckpt_dir.glob("step-*.pt")
        if p.stem.removeprefix("step-").isdigit()
    )
    if not steps:
        return []
    log.warning("%s: no %s; rebuilding it from %d checkpoint file(s)", ckpt_dir, INDEX, len(steps))
    records = []
    for step in steps:
        ckpt = load_checkpoint(ckpt_dir / f"step-{step}.pt")
        records.append({"step": step, "file": f"step-{step}.pt", "dev_loss": ckpt.get("dev_loss")})
    write_index(ckpt_dir, records)
    return records


def write_index(ckpt_dir: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(ckpt_dir / INDEX, json.dumps(records, indent=1) + "\n")


def best_records(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The n records with the lowest dev loss (ties: the later step), best first."""
    scored = [r for r in records if r.get("dev_loss") is not None]
    return sorted(scored, key=lambda r: (r["dev_loss"], -r["step"]))[:n]


def save_checkpoint(
    ckpt_dir: Path, state: dict[str, Any], dev_loss: float | None, keep_best: int
) -> Path:
    """Write step-<N>.pt atomically, record it, and delete those no longer needed.

    Kept: the `keep_best` best by dev loss, and always the newest (what --resume reads).
    The index is updated only after the new file is in place, and old files are deleted
    only after the index no longer names them, so a crash at any point loses nothing.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']}.pt"
    # read before the new file exists: a first save has no index yet and nothing to rebuild
    records = [r for r in read_index(ckpt_dir) if r["file"] != name]
    save_torch_atomic(state, ckpt_dir / name)
    records.append({"step": state["step"], "file": name, "dev_loss": dev_loss})
    keep = {r["file"] for r in best_records(records, keep_best)} | {name}
    write_index(ckpt_dir, [r for r in records if r["file"] in keep])
    for r in records:
        if r["file"] not in keep:
            (ckpt_dir / r["file"]).unlink(missing_ok=True)
    return ckpt_dir / name


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    records = read_index(ckpt_dir)
    return ckpt_dir / records[-1]["file"] if records else None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of `paths` (integer buffers from the last).

    Accumulates in float64 so that averaging many checkpoints does not lose precision.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        model = load_checkpoint(path)["model"]
        if total and model.keys() != total.keys():
            raise UserError(f"{path}: its model does not match {paths[0]} (different keys)")
        for key, value in model.items():
            if value.is_floating_point():
                total[key] = total.get(key, 0) + value.double()
            else:
                total[key] = value
    return {
        key: (total[key] / len(paths)).to(value.dtype) if value.is_floating_point() else value
        for key, value in model.items()
    }
