"""The final model: the best checkpoints of an experiment averaged into its model directory."""

import logging
from pathlib import Path

from u2moe.errors import UserError
from u2moe.model.io import read_model_config, save_model_dir
from u2moe.model.u2 import U2Model
from u2moe.train.checkpoint import average_checkpoints, best_records, read_index

log = logging.getLogger("u2moe.train")


def average_best(exp_dir: Path, num: int) -> list[Path]:
    """Average the `num` best checkpoints of `exp_dir` by dev loss into its model directory.

    Writes model.pt (with config.yaml and units.txt already there, the experiment directory
    is then a model directory). Returns the checkpoints used, best first.
    """
    ckpt_dir = exp_dir / "checkpoints"
    records = read_index(ckpt_dir)
    if not records:
        raise UserError(f"{ckpt_dir}: no checkpoints to average")
    best = best_records(records, num) or records[-1:]  # no dev losses: the latest
    if len(best) < num:
        log.warning("only %d checkpoint(s) with a dev loss in %s", len(best), ckpt_dir)
    paths = [ckpt_dir / r["file"] for r in best]
    cfg, config, units = read_model_config(exp_dir)
    model = U2Model(cfg)
    model.load_state_dict(average_checkpoints(paths))
    save_model_dir(exp_dir, model, config, units)
    return paths
