"""Export a u2moe model directory for deployment (`u2moe export`).

Formats (one directory each):
- `onnx`: WeNet's ONNX layout (u2moe/export/onnx.py): encoder.onnx (one streaming step with
  caches, or the full-context encoder), ctc.onnx, decoder.onnx (n-best scores for attention
  rescoring), encoder_batch.onnx (the step for B streams at once), units.txt (+ bpe.model),
  config.yaml (`export` section: what was exported; `model`, `data`, `decode` copied from
  the model directory); `--int8` adds *.int8.onnx. `u2moe.runtime` runs it without torch.
- `sherpa-onnx`: model.onnx + tokens.txt for sherpa-onnx's WeNet CTC models (sherpa.py).
- `wenet`: a WeNet experiment directory (wenet.py).
MoE layers keep their top-k sparsity in ONNX (moe.py: the `sorted` form by default).
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from u2moe.config import load_yaml, save_yaml
from u2moe.errors import UserError

FORMATS = ("onnx", "sherpa-onnx", "wenet")
DEFAULT_MOE_FORM = "sorted"  # the fastest by benchmarks/onnx_moe.py (docs/BENCHMARKS.md)


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 of the model's weights: tells one model's export from another's."""
    digest = hashlib.sha256()
    with open(model_dir / "model.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(out: Path, fingerprint: str) -> None:
    """OUT may be absent, empty, or an earlier export of the same model (overwritten)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    config = out / "config.yaml"
    section = load_yaml(config).get("export") if config.is_file() else None
    if not isinstance(section, dict):
        raise UserError(f"{out}: not empty and not an export; choose another --out")
    if section.get("fingerprint") != fingerprint:
        raise UserError(
            f"{out}: holds the export of another model ({section.get('source')}); "
            "choose another --out"
        )


def check_options(fmt: str, chunk_size: int, left_chunks: int, int8: bool) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format: unsupported format {fmt!r} (supported: {', '.join(FORMATS)})")
    if chunk_size == 0 or chunk_size < -1:
        raise UserError(f"--chunk-size: must be > 0, or -1 for full context, got {chunk_size}")
    if left_chunks < -1:
        raise UserError(f"--left-chunks: must be >= 0, or -1 for all, got {left_chunks}")
    if fmt == "wenet" and int8:
        raise UserError("--int8: not supported with --format wenet (a PyTorch checkpoint)")
    if fmt == "sherpa-onnx" and chunk_size > 0 and left_chunks < 0:
        raise UserError(
            "--left-chunks -1: not supported with --format sherpa-onnx streaming "
            "(sherpa-onnx keeps a fixed-size cache; give --left-chunks N >= 0)"
        )


def export_model(
    model_dir: str | Path,
    out: str | Path,
    chunk_size: int = 16,
    left_chunks: int = 4,
    int8: bool = False,
    fmt: str = "onnx",
    moe_form: str = DEFAULT_MOE_FORM,
    top_k: int | None = None,
    batch_encoder: bool = True,
) -> list[str]:
    """Export the model in `model_dir` to the directory `out` -> names of the files written.
    top_k: MoE experts per frame in the exported graphs (None: as trained); batch_encoder:
    with `onnx`, also encoder_batch.onnx (a second copy of the encoder's weights).

    Files are written in a temporary directory beside `out` and moved in at the end, so a
    failed export leaves no half-written file.
    """
    from u2moe.model.io import load_model_dir

    check_options(fmt, chunk_size, left_chunks, int8)
    model_dir, out = Path(model_dir), Path(out)
    model, config, units = load_model_dir(model_dir)
    if top_k is not None:
        from u2moe.model.moe import set_top_k

        try:
            set_top_k(model, top_k)
        except ValueError as e:
            raise UserError(str(e)) from None
    fingerprint = model_fingerprint(model_dir)
    check_output_dir(out, fingerprint)
    if chunk_size < 0:
        left_chunks = -1
    section = {
        "format": fmt,
        "chunk_size": chunk_size,
        "left_chunks": left_chunks,
        "moe_form": moe_form,
        "top_k": top_k,
        "int8": int8,
        "source": str(model_dir.resolve()),
        "fingerprint": fingerprint,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp = Path(tmp)
        bpe = model_dir / "bpe.model"
        if fmt == "onnx":
            from u2moe.export.onnx import export_onnx_dir

            export_onnx_dir(
                model, units, tmp, chunk_size, left_chunks, moe_form, int8, batch_encoder
            )
            if bpe.is_file():
                shutil.copyfile(bpe, tmp / bpe.name)
        elif fmt == "sherpa-onnx":
            from u2moe.export.sherpa import export_sherpa

            export_sherpa(model, units, tmp, chunk_size, left_chunks, moe_form, int8)
            if bpe.is_file():
                shutil.copyfile(bpe, tmp / bpe.name)
        else:
            from u2moe.export.wenet import export_wenet

            export_wenet(model, config, units, tmp, bpe if bpe.is_file() else None)
        names = sorted(p.name for p in tmp.iterdir()) + ["config.yaml"]
        section["files"] = names
        sections = {"export": section} | {k: v for k, v in config.items() if k != "export"}
        save_yaml(sections, tmp / "config.yaml")
        out.mkdir(parents=True, exist_ok=True)
        for name in names:  # config.yaml last: a reader sees a complete export or none
            os.replace(tmp / name, out / name)
    return names
