"""The training loop: one experiment from a config and prepared data to a decodable model.

`train(...)` reads top to bottom: check inputs, build the model, restore a checkpoint,
loop over epochs and batches (accumulate, clip, step, log, validate, checkpoint), then
average the best checkpoints into the experiment's model directory and draw the plots.

Exact resume: a checkpoint stores the data position (epoch, and the data loader's count of
consumed batches) and each rank's RNG states as they were right after the last optimizer
step. A resumed run restores the RNG states, rebuilds the same epoch (its batches depend
only on seed and epoch) and lets the loader pass over the consumed batches, so dropout and
chunk-size draws continue exactly as in an uninterrupted run. Neither data loading (the
DataLoader draws worker seeds from the global RNG) nor validation may draw from the training
stream: both run with the RNG states set aside.
"""

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from u2moe.config import ConfigError, as_dict, load_yaml, parse_section, save_yaml
from u2moe.data.cmvn import load_cmvn
from u2moe.data.config import DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.files import copy_file_atomic
from u2moe.data.prepare import check_cmvn_features
from u2moe.data.tokenizer import Tokenizer, load_tokenizer, read_units
from u2moe.decode.scoring import ErrorCounts, word_errors
from u2moe.decode.search import ctc_greedy_search
from u2moe.errors import UserError
from u2moe.model.config import ModelConfig
from u2moe.model.io import UNITS, WEIGHTS, read_state_dict, state_dict_mismatch
from u2moe.model.u2 import U2Model
from u2moe.progress import progress
from u2moe.train import distributed
from u2moe.train.average import average_best
from u2moe.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from u2moe.train.config import TrainConfig
from u2moe.train.lock import ExperimentLock
from u2moe.train.monitor import (
    ExpertMonitor,
    MetricsLog,
    close_logging,
    fractions_from_record,
    setup_logging,
)
from u2moe.train.plots import plot_expert_heatmap, plot_losses
from u2moe.train.scheduler import WarmupLR

log = logging.getLogger("u2moe.train")

SECTIONS = ("model", "data", "train")
# What must match between a config and an experiment directory to continue it.
FIXED_SECTIONS = ("model", "data")


@dataclass
class Sections:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    raw: dict[str, Any]  # all sections, normalized (defaults filled in), as written to config.yaml


def resolve_config(config: dict[str, Any], name: str, tokenizer: Tokenizer) -> Sections:
    """Parse the sections and fill model.vocab_size from the units (an error if it conflicts)."""
    model = parse_section(ModelConfig, config.get("model"), f"{name}: model")
    data = parse_section(DataConfig, config.get("data"), f"{name}: data")
    train = parse_section(TrainConfig, config.get("train"), f"{name}: train")
    if model.vocab_size is None:
        model.vocab_size = tokenizer.vocab_size
    elif model.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"{name}: model.vocab_size is {model.vocab_size} but the units file has "
            f"{tokenizer.vocab_size} units (set it to null to take it from the units)"
        )
    if model.input_dim != data.features.num_mel_bins:
        raise ConfigError(
            f"{name}: model.input_dim {model.input_dim} does not match "
            f"data.features.num_mel_bins {data.features.num_mel_bins}"
        )
    raw = {k: v for k, v in config.items() if k not in SECTIONS}
    raw.update(model=as_dict(model), data=as_dict(data), train=as_dict(train))
    return Sections(model, data, train, raw)


def check_experiment(exp_dir: Path, raw: dict[str, Any], resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start); refuse to clobber another run."""
    saved_path = exp_dir / "config.yaml"
    if saved_path.is_file():
        saved = load_yaml(saved_path)
        for section in FIXED_SECTIONS:
            if saved.get(section) != raw[section]:
                key = _first_difference(saved.get(section) or {}, raw[section], section)
                raise UserError(
                    f"{exp_dir} was made with a different config ({key} differs from "
                    f"{saved_path}); use a new --exp directory"
                )
    latest = latest_checkpoint(exp_dir / "checkpoints")
    if latest is not None and not resume:
        raise UserError(
            f"{exp_dir} already has checkpoints (latest {latest.name}); pass --resume to "
            "continue it, or choose a new --exp directory"
        )
    return latest if resume else None


def read_init(model_dir: Path, cfg: ModelConfig, tokenizer: Tokenizer) -> dict:
    """The weights of a model directory, to start a run from; a one-line UserError when
    they do not fit the model `cfg` builds (naming the first parameters that differ) or
    the directory's units are not the data's."""
    state = read_state_dict(model_dir / WEIGHTS)
    with torch.device("meta"):  # shapes only, no memory
        problem = state_dict_mismatch(U2Model(cfg), state)
    if problem:
        raise UserError(f"--init {model_dir}: its weights do not fit the config: {problem}")
    units_path = model_dir / UNITS
    if units_path.is_file():
        units = read_units(units_path)
        if units != tokenizer.units:
            raise UserError(
                f"--init {model_dir}: its units.txt ({len(units)} units) is not the data's "
                f"({len(tokenizer.units)}); token ids would mean other tokens"
            )
    return state


def _first_difference(a: dict, b: dict, where: str) -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                return _first_difference(a[key], b[key], f"{where}.{key}")
            return f"{where}.{key}"
    return where


def train(
    config: dict[str, Any],
    *,
    train_manifest: Path,
    dev_manifest: Path,
    data_dir: Path,
    exp_dir: Path,
    resume: bool = False,
    max_steps: int | None = None,
    device: str = "auto",
    config_name: str = "config",
    data_type: str = "auto",
    init: Path | None = None,
) -> Path:
    """Train (or continue) the experiment in `exp_dir`; returns `exp_dir`, a model directory.

    data_dir: the prepared data directory (units.txt, optional bpe.model, global_cmvn).
    max_steps: overrides train.max_steps (the total, counted from the first step).
    data_type: of both manifests, `raw`, `shard`, `lhotse` or `auto` (make_dataloader).
    init: a model directory whose weights (CMVN included) the run starts from, with a fresh
    optimizer and schedule at step 0; a checkpoint that `resume` continues wins over it.
    Under torchrun every process calls this; rank 0 alone writes files.
    """
    for path in (train_manifest, dev_manifest, data_dir / "global_cmvn"):
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    info = distributed.setup(device)
    try:
        trainer = Trainer(
            info, config, config_name, data_dir, train_manifest, dev_manifest, data_type, init
        )
        with ExperimentLock(exp_dir) if info.is_main else contextlib.nullcontext() as lock:
            trainer.setup(exp_dir, resume, max_steps)
            if lock and lock.stale_note():
                log.warning(lock.stale_note())
            trainer.run()
            trainer.average()
        distributed.synchronize()
        return exp_dir
    finally:
        close_logging()
        distributed.cleanup()


@dataclass
class TrainState:
    """Everything a checkpoint saves and a resumed run restores.

    model: the model as trained (a DDP/FSDP2 wrapper, or the U2Model alone); scaler: fp16
    loss scaling (a disabled GradScaler, with an empty state, in bf16 and fp32);
    step: optimizer steps taken; epoch and data (the train loader's state_dict, None at
    an epoch's start): where the data stream is; rng: this rank's RNG states right
    after the last optimizer step (taken when saving, see `Trainer.save`).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupLR
    scaler: torch.amp.GradScaler
    step: int = 0
    epoch: int = 0
    data: dict | None = None
    rng: dict[str, Any] | None = None

    def checkpoint(self, dev_loss: float) -> dict[str, Any]:
        """What step-<N>.pt holds (collective: every rank calls it; rng of every rank)."""
        return {
            "model": distributed.model_state(self.model),
            "optimizer": distributed.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "data": self.data,
            "rng": distributed.all_gather_objects(self.rng),
            "dev_loss": dev_loss,
        }

    def restore(self, ckpt: dict[str, Any], rank: int, world_size: int) -> None:
        """Load a checkpoint's states; rng is this rank's (None: written by another number
        of processes, whose random streams cannot be continued)."""
        distributed.load_states(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # absent before fp16 training existed
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.data = ckpt["step"], ckpt["epoch"], ckpt["data"]
        self.rng = ckpt["rng"][rank] if len(ckpt["rng"]) == world_size else None


class Trainer:
    """One process's share of a training run; its methods, in the order they run:

    `setup` (experiment directory, model, optimizer, schedule, resume), `run` (epochs of
    `step`s; `save` evaluates on dev with `evaluate` and writes a checkpoint), `average`
    (the best checkpoints into model.pt, and the plots).
    """

    def __init__(
        self,
        info: distributed.DistInfo,
        config: dict[str, Any],
        config_name: str,
        data_dir: Path,
        train_manifest: Path,
        dev_manifest: Path,
        data_type: str = "auto",
        init: Path | None = None,
    ):
        """Read the config, the units and the --init weights; writes nothing (a bad config
        leaves no files)."""
        self.info, self.data_dir = info, data_dir
        self.train_manifest, self.dev_manifest = train_manifest, dev_manifest
        self.data_type = data_type  # of both manifests (make_dataloader)
        data_cfg = parse_section(DataConfig, config.get("data"), f"{config_name}: data")
        self.tokenizer = load_tokenizer(data_dir, data_cfg.tokenizer)
        check_cmvn_features(data_dir, data_cfg.features, config_name)
        self.cfg = resolve_config(config, config_name, self.tokenizer)
        self.precision = resolve_precision(self.cfg.train, info)
        self.init = init
        self.init_weights = (
            None if init is None else read_init(init, self.cfg.model, self.tokenizer)
        )

    # ---- setup ----
    def setup(self, exp_dir: Path, resume: bool, max_steps: int | None) -> None:
        """The experiment directory, the model and its training state (restored on resume)."""
        info, cfg, tc = self.info, self.cfg, self.cfg.train
        self.exp_dir = exp_dir
        self.total_steps = tc.max_steps if max_steps is None else max_steps
        resume_from = check_experiment(exp_dir, cfg.raw, resume)
        if info.is_main:
            self.write_experiment_files()
        setup_logging(exp_dir / "train.log" if info.is_main else None)

        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.model = U2Model(cfg.model)
        self.model.set_cmvn(*load_cmvn(self.data_dir / "global_cmvn"))
        if self.init_weights is not None and resume_from is None:
            self.model.load_state_dict(self.init_weights)  # its CMVN with it
            log.info("initialized from %s (fresh optimizer and schedule)", self.init / WEIGHTS)
        elif self.init_weights is not None:
            log.info("--init %s ignored: resuming from %s", self.init, resume_from)
        self.model.to(info.device)
        self.monitor = ExpertMonitor(self.model)
        wrapped = distributed.wrap(self.model, info, tc.strategy, ("ctc_log_probs",))
        optimizer_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_cls(wrapped.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        scaler = torch.amp.GradScaler(info.device.type, enabled=self.precision == "fp16")
        scheduler = WarmupLR(optimizer, tc.warmup_steps)
        self.state = TrainState(wrapped, optimizer, scheduler, scaler)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = torch.autocast(info.device.type, dtype=dtype, enabled=dtype is not None)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model: %.2fM parameters, vocab %d, %s; %d process(es) on %s (%s), %s",
            n_params / 1e6, cfg.model.vocab_size, "MoE" if self.monitor else "dense",
            info.world_size, info.device, tc.strategy if info.enabled else "single",
            PRECISION_NOTES[self.precision],
        )  # fmt: skip

        torch.manual_seed(tc.seed + info.rank)  # different dropout and chunk draws per rank
        self.resumed = resume_from is not None
        if self.resumed:
            self.restore(resume_from)
        elif resume:
            log.info("--resume: %s has no checkpoint yet, starting from step 0", exp_dir)
        self.metrics = MetricsLog(exp_dir, self.state.step) if info.is_main else None
        self.dev_loader = make_dataloader(
            self.dev_manifest, cfg.data, self.tokenizer, train=False, seed=tc.seed, epoch=0,
            rank=info.rank, world_size=info.world_size, data_type=self.data_type,
        )  # fmt: skip

    def write_experiment_files(self) -> None:
        """config.yaml and the units (and bpe.model) beside the checkpoints (rank 0)."""
        tokenizer_cfg = self.cfg.data.tokenizer
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(self.cfg.raw, self.exp_dir / "config.yaml")
        copy_file_atomic(self.data_dir / tokenizer_cfg.units, self.exp_dir / "units.txt")
        if self.tokenizer.bpe is not None:
            copy_file_atomic(self.data_dir / tokenizer_cfg.bpe_model, self.exp_dir / "bpe.model")

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.state.restore(ckpt, self.info.rank, self.info.world_size)
        if self.state.rng is not None:
            set_rng_state(self.state.rng, self.model)
        else:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: the data "
                "shards and random streams differ, so the run will not repeat exactly",
                len(ckpt["rng"]), self.info.world_size,
            )  # fmt: skip
        log.info("resumed from %s: step %d, epoch %d", path, self.state.step, self.state.epoch)

    # ---- the loop ----
    def run(self) -> None:
        """Epochs until train.max_steps (or --max-steps) or train.max_epochs; the last
        state is always checkpointed."""
        state, tc = self.state, self.cfg.train
        self.bar = progress(
            total=self.total_steps or None, initial=state.step, unit="step",
            disable=not self.info.is_main, desc="train",
        )  # fmt: skip
        self.window = Window(self.info.device)
        self.last_saved = state.step if self.resumed else -1
        done = self.finished()
        try:
            while not done and state.epoch < tc.max_epochs:
                done = self.train_epoch()
        finally:
            self.bar.close()  # before any error message
        if self.last_saved != state.step:
            self.save()

    def finished(self) -> bool:
        return bool(self.total_steps) and self.state.step >= self.total_steps

    def train_epoch(self) -> bool:
        """The rest of the current epoch (from the saved data position); True when the step
        budget ran out within it."""
        state, tc, info = self.state, self.cfg.train, self.info
        loader = make_dataloader(
            self.train_manifest, self.cfg.data, self.tokenizer, train=True, seed=tc.seed,
            epoch=state.epoch, rank=info.rank, world_size=info.world_size,
            data_type=self.data_type,
        )  # fmt: skip
        if state.data is not None:
            loader.load_state_dict(state.data)  # skip what was consumed before the checkpoint
        state.model.train()
        state.optimizer.zero_grad(set_to_none=True)
        for batch, _ in distributed.lockstep(rng_neutral(loader), info.device, pad=False):
            state.data = loader.state_dict()
            if not self.step(batch, sync=loader.batches % tc.accum_grad == 0):
                continue
            if state.step % tc.log_interval == 0:
                self.log_window()
            if tc.valid_interval and state.step % tc.valid_interval == 0:
                self.save()
            if self.finished():
                return True
        state.epoch, state.data = state.epoch + 1, None
        log.info("epoch %d done (step %d)", state.epoch - 1, state.step)
        if not self.total_steps:  # the bar's total, estimated from the epochs so far
            self.bar.total = round(state.step / state.epoch * tc.max_epochs)
            self.bar.refresh()
        if not tc.valid_interval:
            self.save()
        return False

    def step(self, batch: dict[str, Any], sync: bool) -> bool:
        """Forward and backward one batch; with `sync` (the last batch of an accumulation),
        also clip, update and advance the schedule. Returns whether it updated."""
        state, tc = self.state, self.cfg.train
        with distributed.gradient_sync(state.model, sync):
            with self.autocast:
                out = state.model(*to_device(batch, self.info.device))
            state.scaler.scale(out["loss"] / tc.accum_grad).backward()
        self.monitor.add()
        self.window.add(out, batch)
        if not sync:
            return False
        state.scaler.unscale_(state.optimizer)  # no-op unless fp16
        grad_norm = clip_gradients(state.model, tc.grad_clip)
        if math.isfinite(grad_norm):
            state.scaler.step(state.optimizer)
        elif state.scaler.is_enabled():  # fp16 overflow: the scale goes down, no update
            log.info("step %d: fp16 gradients overflowed, update skipped", state.step + 1)
        else:
            log.warning("step %d: gradient norm is %s, update skipped", state.step + 1, grad_norm)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            state.scheduler.step()
        state.step += 1
        self.window.note_step(grad_norm)
        self.bar.update()
        return True

    def log_window(self) -> None:
        """Means since the last log point to the bar, TensorBoard, metrics.jsonl and the log."""
        state = self.state
        lr = state.scheduler.get_last_lr()[0]
        scalars = self.window.flush(lr)
        self.bar.set_postfix(
            loss=f"{scalars['train/loss']:.3f}", lr=f"{lr:.2e}",
            fps=f"{scalars['train/frames_per_second']:.0f}",
        )  # fmt: skip
        utilization = self.monitor.scalars("experts")
        self.monitor.reset()
        if self.metrics:
            self.metrics.log(state.step, scalars | utilization)
            log.info(
                "epoch %d step %d: loss %.3f (ctc %.3f, att %.3f), acc %.3f, lr %.2e, "
                "grad norm %.2f, %.0f frames/s%s",
                state.epoch, state.step, scalars["train/loss"], scalars["train/loss_ctc"],
                scalars["train/loss_att"], scalars["train/accuracy"], lr,
                scalars["train/grad_norm"], scalars["train/frames_per_second"],
                imbalance_note(utilization),
            )  # fmt: skip

    # ---- evaluation and checkpoints ----
    def save(self) -> None:
        """Evaluate on dev, then write checkpoints/step-<N>.pt (rank 0) and log the result.

        The RNG states are taken before evaluating and put back after it, so that
        validation never shifts the training's random streams.
        """
        state = self.state
        state.rng = rng_state(self.model)
        self.monitor.reset()
        dev = self.evaluate()
        dev_fractions = self.monitor.scalars("dev_experts")
        self.monitor.reset()
        set_rng_state(state.rng, self.model)
        checkpoint = state.checkpoint(dev["loss"])
        if self.info.is_main:
            keep = self.cfg.train.keep_best
            path = save_checkpoint(self.exp_dir / "checkpoints", checkpoint, dev["loss"], keep)
            self.metrics.log(state.step, {f"dev/{k}": v for k, v in dev.items()} | dev_fractions)
            log.info(
                "step %d dev: loss %.3f (ctc %.3f, att %.3f), WER %.2f%% -> %s",
                state.step, dev["loss"], dev["loss_ctc"], dev["loss_att"], dev["wer"], path.name,
            )  # fmt: skip
        self.last_saved = state.step
        distributed.barrier()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev losses (means over utterances) and the CTC greedy WER (%), over all ranks."""
        wrapped, info = self.state.model, self.info
        wrapped.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, loss_ctc, loss_att (x utts), utts
        errors = ErrorCounts()
        for batch, real in distributed.lockstep(self.dev_loader, info.device, pad=True):
            feats, feats_lengths, targets, target_lengths = to_device(batch, info.device)
            with self.autocast:
                # The loss forward's encoder output (full context in eval mode) also gives
                # the greedy hypotheses: no second encoder pass.
                out = wrapped(feats, feats_lengths, targets, target_lengths, return_encoded=True)
                log_probs = self.model.ctc_log_probs(out["enc"])
            if not real:
                continue
            self.monitor.add()
            n = len(batch["keys"])
            losses = [float(out[k]) * n for k in ("loss", "loss_ctc", "loss_att")]
            sums += torch.tensor([*losses, n], dtype=torch.float64)
            hyps = ctc_greedy_search(log_probs.float(), out["enc_lengths"])
            for hyp, ref, length in zip(hyps, targets, target_lengths, strict=True):
                ref_text = self.tokenizer.decode(ref[:length].tolist())
                errors += word_errors(ref_text, self.tokenizer.decode(hyp.tokens))
        counts = torch.tensor([errors.errors, errors.ref_length], dtype=torch.float64)
        sums = distributed.all_reduce_sum(sums.to(info.device)).cpu()
        counts = distributed.all_reduce_sum(counts.to(info.device)).cpu()
        wrapped.train()
        utts = sums[3].clamp(min=1)
        return {
            "loss": float(sums[0] / utts),
            "loss_ctc": float(sums[1] / utts),
            "loss_att": float(sums[2] / utts),
            "wer": 100.0 * float(counts[0] / counts[1].clamp(min=1)),
        }

    # ---- the final model ----
    def average(self) -> None:
        """model.pt from the best checkpoints, and the plots (rank 0)."""
        if self.info.is_main:
            exp_dir = self.exp_dir
            used = average_best(exp_dir, self.cfg.train.average_num)
            log.info("model.pt: average of %s", ", ".join(p.name for p in used))
            records = self.metrics.records()
            plot_losses(records, exp_dir / "plots" / "loss.png")
            dev_util = fractions_from_record(records, "dev_experts")
            if dev_util:
                title = f"expert utilization on dev (step {self.state.step})"
                plot_expert_heatmap(dev_util, exp_dir / "plots" / "experts.png", title)
            self.metrics.close()
            log.info("done: %s is a model directory (decode it with u2moe decode --model)", exp_dir)
        distributed.barrier()


PRECISION_NOTES = {
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast with loss scaling",
}


def resolve_precision(tc: TrainConfig, info: distributed.DistInfo) -> str:
    """train.precision as run here: "fp32", "bf16" or "fp16" ("auto": bf16 on GPUs that
    support it, fp32 elsewhere)."""
    if tc.precision == "auto":
        bf16 = info.device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if bf16 else "fp32"
    if tc.precision == "fp16" and info.enabled and tc.strategy == "fsdp":
        raise UserError("train.precision fp16 is not supported with strategy fsdp; use bf16")
    return tc.precision


class Window:
    """Sums of per-batch values between two log points, reduced over ranks when flushed."""

    KEYS = ("loss", "loss_ctc", "loss_att", "loss_aux", "accuracy")

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.KEYS) + 2, dtype=torch.float64)  # + utts, frames
        self.grad_norms: list[float] = []
        self.start = time.perf_counter()

    def add(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        n = len(batch["keys"])
        values = [float(out[k].detach()) * n if k in out else 0.0 for k in self.KEYS]
        values += [n, float(batch["feats_lengths"].sum())]
        self.sums += torch.tensor(values, dtype=torch.float64)

    def note_step(self, grad_norm: float) -> None:
        self.grad_norms.append(grad_norm)

    def flush(self, lr: float) -> dict[str, float]:
        """Means over the window's utterances of every rank; frames/s summed over ranks."""
        sums = distributed.all_reduce_sum(self.sums.to(self.device)).cpu()
        utts, frames = sums[-2].clamp(min=1), sums[-1]
        out = {f"train/{k}": float(sums[i] / utts) for i, k in enumerate(self.KEYS)}
        if out["train/loss_aux"] == 0.0:
            del out["train/loss_aux"]
        out["train/lr"] = lr
        out["train/grad_norm"] = sum(self.grad_norms) / max(len(self.grad_norms), 1)
        out["train/frames_per_second"] = float(frames) / (time.perf_counter() - self.start)
        self.reset()
        return out


def rng_neutral(batches: Iterable[Any]) -> Iterator[Any]:
    """The items of `batches`, fetched with the global RNG states set aside and put back."""
    iterator = iter(batches)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The model's four inputs: feats, feats_lengths, targets, target_lengths."""
    names = ("feats", "feats_lengths", "targets", "target_lengths")
    return tuple(batch[n].to(device, non_blocking=True) for n in names)


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to max_norm (0: only measure it); returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), max_norm if max_norm > 0 else float("inf")
    )
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def imbalance_note(utilization: dict[str, float]) -> str:
    """', busiest expert 1.8x uniform (worst layer 3.2x)' from the per-layer scalars, if any."""
    ratios = [v for k, v in utilization.items() if k.startswith("experts_busiest/")]
    if not ratios:
        return ""
    mean = sum(ratios) / len(ratios)
    return f", busiest expert {mean:.1f}x uniform (worst layer {max(ratios):.1f}x)"
