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
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from u2moe.config import ConfigError, as_dict, load_yaml, parse_section, save_yaml
from u2moe.data.cmvn import load_cmvn
from u2moe.data.config import DataConfig
from u2moe.data.dataset import make_dataloader
from u2moe.data.prepare import check_cmvn_features
from u2moe.data.tokenizer import Tokenizer, load_tokenizer
from u2moe.decode.scoring import ErrorCounts, word_errors
from u2moe.decode.search import ctc_greedy_search
from u2moe.errors import UserError
from u2moe.model.config import ModelConfig
from u2moe.model.u2 import U2Model
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


@dataclass
class Position:
    """Where training is: optimizer steps taken, epoch, and position within the epoch."""

    step: int = 0
    epoch: int = 0
    data: dict | None = None  # the train loader's state_dict; None: the epoch's start


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
) -> Path:
    """Train (or continue) the experiment in `exp_dir`; returns `exp_dir`, a model directory.

    data_dir: the prepared data directory (units.txt, optional bpe.model, global_cmvn).
    max_steps: overrides train.max_steps (the total, counted from the first step).
    data_type: of both manifests, `raw`, `shard`, `lhotse` or `auto` (make_dataloader).
    Under torchrun every process calls this; rank 0 alone writes files.
    """
    for path in (train_manifest, dev_manifest, data_dir / "global_cmvn"):
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    info = distributed.setup(device)
    try:
        result = _train(
            info, config, config_name, train_manifest, dev_manifest, data_dir, exp_dir,
            resume, max_steps, data_type,
        )  # fmt: skip
        distributed.synchronize()
        return result
    finally:
        close_logging()
        distributed.cleanup()


def _train(
    info: distributed.DistInfo,
    config: dict[str, Any],
    config_name: str,
    train_manifest: Path,
    dev_manifest: Path,
    data_dir: Path,
    exp_dir: Path,
    resume: bool,
    max_steps: int | None,
    data_type: str,
) -> Path:
    # ---- inputs: config, units, experiment directory ----
    data_cfg = parse_section(DataConfig, config.get("data"), f"{config_name}: data")
    tokenizer = load_tokenizer(data_dir, data_cfg.tokenizer)
    check_cmvn_features(data_dir, data_cfg.features, config_name)
    cfg = resolve_config(config, config_name, tokenizer)
    tc = cfg.train
    resume_from = check_experiment(exp_dir, cfg.raw, resume)
    if info.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg.raw, exp_dir / "config.yaml")
        shutil.copyfile(data_dir / data_cfg.tokenizer.units, exp_dir / "units.txt")
        if tokenizer.bpe is not None:
            shutil.copyfile(data_dir / data_cfg.tokenizer.bpe_model, exp_dir / "bpe.model")
    setup_logging(exp_dir / "train.log" if info.is_main else None)
    total_steps = tc.max_steps if max_steps is None else max_steps

    # ---- model, optimizer, schedule ----
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = U2Model(cfg.model)
    model.set_cmvn(*load_cmvn(data_dir / "global_cmvn"))
    model.to(info.device)
    monitor = ExpertMonitor(model)
    wrapped = distributed.wrap(model, info, tc.strategy, ("ctc_log_probs",))
    optimizer_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(wrapped.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = WarmupLR(optimizer, tc.warmup_steps)
    use_bf16 = tc.precision == "bf16" or (
        tc.precision == "auto" and info.device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model: %.2fM parameters, vocab %d, %s; %d process(es) on %s (%s), %s",
        n_params / 1e6, cfg.model.vocab_size, "MoE" if monitor else "dense",
        info.world_size, info.device, tc.strategy if info.enabled else "single",
        "bf16 autocast" if use_bf16 else "fp32",
    )  # fmt: skip

    # ---- resume ----
    pos = Position()
    torch.manual_seed(tc.seed + info.rank)  # different dropout and chunk draws per rank
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        distributed.load_states(wrapped, optimizer, ckpt["model"], ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        pos = Position(ckpt["step"], ckpt["epoch"], ckpt["data"])
        if len(ckpt["rng"]) == info.world_size:
            set_rng_state(ckpt["rng"][info.rank], model)
        else:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: the data "
                "shards and random streams differ, so the run will not repeat exactly",
                len(ckpt["rng"]), info.world_size,
            )  # fmt: skip
        log.info("resumed from %s: step %d, epoch %d", resume_from, pos.step, pos.epoch)
    elif resume:
        log.info("--resume: %s has no checkpoint yet, starting from step 0", exp_dir)
    metrics = MetricsLog(exp_dir, pos.step) if info.is_main else None
    dev_loader = make_dataloader(
        dev_manifest, cfg.data, tokenizer, train=False, seed=tc.seed, epoch=0,
        rank=info.rank, world_size=info.world_size, data_type=data_type,
    )  # fmt: skip

    def validate_and_checkpoint() -> None:
        train_rng = rng_state(model)
        monitor.reset()
        dev = evaluate(wrapped, model, dev_loader, tokenizer, info, autocast)
        dev_fractions = monitor.scalars("dev_experts")
        monitor.reset()
        set_rng_state(train_rng, model)
        state = {
            "model": distributed.model_state(wrapped),
            "optimizer": distributed.optimizer_state(wrapped, optimizer),
            "scheduler": scheduler.state_dict(),
            **vars(pos),
            "rng": distributed.all_gather_objects(train_rng),
            "dev_loss": dev["loss"],
        }
        if info.is_main:
            path = save_checkpoint(exp_dir / "checkpoints", state, dev["loss"], tc.keep_best)
            metrics.log(pos.step, {f"dev/{k}": v for k, v in dev.items()} | dev_fractions)
            log.info(
                "step %d dev: loss %.3f (ctc %.3f, att %.3f), WER %.2f%% -> %s",
                pos.step, dev["loss"], dev["loss_ctc"], dev["loss_att"], dev["wer"], path.name,
            )  # fmt: skip
        distributed.barrier()

    # ---- the loop ----
    bar = tqdm(
        total=total_steps or None, initial=pos.step, unit="step", dynamic_ncols=True,
        disable=not info.is_main, desc="train",
    )  # fmt: skip
    window = Window(info.device)
    last_checkpoint_step = pos.step if resume_from is not None else -1
    done = bool(total_steps) and pos.step >= total_steps
    while not done and pos.epoch < tc.max_epochs:
        loader = make_dataloader(
            train_manifest, cfg.data, tokenizer, train=True, seed=tc.seed, epoch=pos.epoch,
            rank=info.rank, world_size=info.world_size, data_type=data_type,
        )  # fmt: skip
        if pos.data is not None:
            loader.load_state_dict(pos.data)  # skip what was consumed before the checkpoint
        wrapped.train()
        optimizer.zero_grad(set_to_none=True)
        for batch, _ in distributed.lockstep(rng_neutral(loader), info.device, pad=False):
            pos.data = loader.state_dict()
            sync = loader.batches % tc.accum_grad == 0
            with distributed.gradient_sync(wrapped, sync):
                with autocast:
                    out = wrapped(*to_device(batch, info.device))
                (out["loss"] / tc.accum_grad).backward()
            window.add(out, batch)
            if not sync:
                continue

            grad_norm = clip_gradients(wrapped, tc.grad_clip)
            if math.isfinite(grad_norm):
                optimizer.step()
            else:
                log.warning("step %d: gradient norm is %s, update skipped", pos.step + 1, grad_norm)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            pos.step += 1
            lr = scheduler.get_last_lr()[0]
            window.note_step(grad_norm)
            bar.update()

            if pos.step % tc.log_interval == 0:
                scalars = window.flush(lr)
                bar.set_postfix(
                    loss=f"{scalars['train/loss']:.3f}", lr=f"{lr:.2e}",
                    fps=f"{scalars['train/frames_per_second']:.0f}",
                )  # fmt: skip
                utilization = monitor.scalars("experts")
                monitor.reset()
                if metrics:
                    metrics.log(pos.step, scalars | utilization)
                    log.info(
                        "epoch %d step %d: loss %.3f (ctc %.3f, att %.3f), acc %.3f, lr %.2e, "
                        "grad norm %.2f, %.0f frames/s%s",
                        pos.epoch, pos.step, scalars["train/loss"], scalars["train/loss_ctc"],
                        scalars["train/loss_att"], scalars["train/accuracy"], lr,
                        scalars["train/grad_norm"], scalars["train/frames_per_second"],
                        imbalance_note(utilization),
                    )  # fmt: skip
            if tc.valid_interval and pos.step % tc.valid_interval == 0:
                validate_and_checkpoint()
                last_checkpoint_step = pos.step
            if total_steps and pos.step >= total_steps:
                done = True
                break
        else:
            pos.epoch, pos.data = pos.epoch + 1, None
            log.info("epoch %d done (step %d)", pos.epoch - 1, pos.step)
            if not total_steps:  # the bar's total, estimated from the epochs so far
                bar.total = round(pos.step / pos.epoch * tc.max_epochs)
                bar.refresh()
            if not tc.valid_interval:
                validate_and_checkpoint()
                last_checkpoint_step = pos.step
    bar.close()
    if last_checkpoint_step != pos.step:
        validate_and_checkpoint()

    # ---- the final model and the plots ----
    if info.is_main:
        used = average_best(exp_dir, tc.average_num)
        log.info("model.pt: average of %s", ", ".join(p.name for p in used))
        records = metrics.records()
        plot_losses(records, exp_dir / "plots" / "loss.png")
        dev_util = fractions_from_record(records, "dev_experts")
        if dev_util:
            title = f"expert utilization on dev (step {pos.step})"
            plot_expert_heatmap(dev_util, exp_dir / "plots" / "experts.png", title)
        metrics.close()
        log.info("done: %s is a model directory (decode it with u2moe decode --model)", exp_dir)
    distributed.barrier()
    return exp_dir


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


@torch.no_grad()
def evaluate(
    wrapped: torch.nn.Module,
    model: U2Model,
    loader,
    tokenizer: Tokenizer,
    info: distributed.DistInfo,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """Dev losses (means over utterances) and the CTC greedy WER (%), over all ranks' shards."""
    wrapped.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, loss_ctc, loss_att (x utts), utts
    errors = ErrorCounts()
    # The loss forward runs the encoder (full context in eval mode); its output, caught
    # here, gives the greedy hypotheses without a second encoder pass.
    encoded = {}
    hook = model.encoder.register_forward_hook(lambda m, args, out: encoded.update(out=out))
    try:
        for batch, real in distributed.lockstep(loader, info.device, pad=True):
            feats, feats_lengths, targets, target_lengths = to_device(batch, info.device)
            with autocast:
                out = wrapped(feats, feats_lengths, targets, target_lengths)
                enc, enc_mask = encoded.pop("out")
                log_probs = model.ctc_log_probs(enc)
            if not real:
                continue
            n = len(batch["keys"])
            losses = [float(out[k]) * n for k in ("loss", "loss_ctc", "loss_att")]
            sums += torch.tensor([*losses, n], dtype=torch.float64)
            hyps = ctc_greedy_search(log_probs.float(), enc_mask.squeeze(1).sum(dim=1))
            for hyp, ref, length in zip(hyps, targets, target_lengths, strict=True):
                ref_text = tokenizer.decode(ref[:length].tolist())
                errors += word_errors(ref_text, tokenizer.decode(hyp.tokens))
    finally:
        hook.remove()
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
