"""Process groups and model wrapping for multi-process training (torchrun).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training runs as a single
process and every helper here is a no-op. Backends: nccl on GPUs, gloo on CPU.
Strategies: DDP (every rank holds the whole model) or FSDP2 (`fully_shard`: parameters,
gradients and optimizer states sharded across ranks, for models that do not fit one device).
"""

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

from u2moe.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=30),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank, local_rank, world_size, dev)


def synchronize() -> None:
    """Wait until every rank gets here (no-op alone).

    Call it before a successful exit: the process group is torn down when its last owner
    (DDP's reducer) is freed, on a thread that holds the GIL and joins gloo's worker threads;
    a worker still freeing a finished collective needs the GIL too, a deadlock seen at exit.
    After a barrier no collective is pending, but a worker may not yet have freed the last
    one (seen under load): sleeping hands it the GIL to finish.
    """
    if dist.is_initialized():
        dist.barrier()
        time.sleep(0.5)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(
    model: nn.Module, info: DistInfo, strategy: str, forward_methods: tuple[str, ...] = ()
) -> nn.Module:
    """DDP or FSDP2 around `model` (already on info.device); the model itself when alone.

    FSDP2 makes every block of every nn.ModuleList (encoder and decoder layers) its own
    shard unit, so only one block's full parameters are gathered at a time, then the root.
    `forward_methods` (e.g. "encode") get FSDP2's gather-before/reshard-after hooks too.
    """
    if not info.enabled:
        return model
    if strategy == "fsdp":
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        for name in forward_methods:
            register_fsdp_forward_method(model, name)
        return model
    # Every parameter receives a gradient on every step even when some experts get no
    # frames: expert weights are stacked (E, ...) tensors, so indexing one expert makes the
    # whole tensor part of the graph (zero gradient rows for idle experts). DDP's default
    # (find_unused_parameters=False) therefore never hangs, and skips a graph walk per step.
    return DistributedDataParallel(
        model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches (enabled=False)."""
    if enabled or not dist.is_initialized():
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over ranks (the tensor itself when alone)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...]."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def lockstep(batches: Iterable[Any], device: torch.device, pad: bool) -> Iterator[tuple[Any, bool]]:
    """Iterate so that every rank runs the same number of steps: yields (batch, is_real).

    Ranks' data shards can hold different numbers of batches, and a rank that stops early
    would leave the others waiting forever in a collective. pad=False: all ranks stop
    when the first runs out (training; WeNet does the same). pad=True: all go on until the
    last runs out, ranks that are done repeating their last batch with is_real=False
    (evaluation, whose collectives FSDP2 needs on every rank; results must ignore those).
    """
    iterator = iter(batches)
    last = None
    while True:
        batch = next(iterator, None)
        have = torch.tensor([0 if batch is None else 1], device=device)
        if dist.is_initialized():
            dist.all_reduce(have, op=dist.ReduceOp.MAX if pad else dist.ReduceOp.MIN)
        if not have.item():
            return
        if batch is None:
            if last is None:
                raise UserError(
                    "the dev set is too small for the number of processes: a rank got no batch"
                )
            yield last, False
        else:
            last = batch
            yield batch, True


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded, CPU) state dict with plain keys, whatever the wrapping.

    Collective under FSDP2: every rank must call it.
    """
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state, keyed by parameter name (collective under FSDP2)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_states(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optimizer_sd: dict
) -> None:
    """Load full states (as `model_state`/`optimizer_state` return) into a wrapped model."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_sd, options=options)
