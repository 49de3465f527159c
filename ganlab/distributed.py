"""One run across processes: torchrun starts N ranks, and each trains the same run on its slice of every batch.

The `Runtime` is the one object that knows the rank, the world size, the device and whether this process writes.
In a single process it is trivial and every method is a no-op, so the training step is the same code with and
without distribution. Under torchrun (`WORLD_SIZE` > 1) the process group is set up once, with NCCL on CUDA and gloo
on the CPU, and:

- every rank draws the same global batch and the same global latent batch from the shared seed, and keeps its slice
  (`shard`): `train.batch_size` stays the global batch, and the random streams of all ranks stay in step;
- after each backward pass the gradients are averaged across ranks (`average_gradients`), one flat all-reduce per
  network, as stylegan3's training loop does instead of wrapping the networks in DistributedDataParallel. Gradient
  penalties (a double backward through D) then need nothing special, D gets no all-reduce during G's update, and N
  ranks compute the update of one process with the whole batch, up to summation order;
- every stop decision is agreed before anyone acts on it (`agree`), so no rank leaves the others waiting;
- rank 0 alone writes (TensorBoard, samples, checkpoints, metrics.json, the progress bar) and evaluates.

BatchNorm statistics stay per rank on the CPU; on CUDA the BatchNorm layers become SyncBatchNorm.
"""

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ganlab.device import rng_state, set_rng_state
from ganlab.errors import ConfigError
from ganlab.runfolder import Status

log = logging.getLogger("ganlab")

# the reasons a run stops, in the order they win when ranks disagree (a signal beats the time budget)
STOP_REASONS = (None, Status.COMPLETED, Status.TIME_BUDGET, Status.EARLY_STOPPED, Status.PRUNED, Status.DIVERGED,
                Status.STOPPED_BY_SIGUSR1, Status.STOPPED_BY_SIGUSR2, Status.STOPPED_BY_SIGINT,
                Status.STOPPED_BY_SIGTERM)  # fmt: skip


class Runtime:
    """Rank, world size and device of this process, and the few collective steps training needs.

    rank: this process's index (0 writes); world_size: the processes training this run (1 = no distribution).
    """

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1):
        self.device, self.rank, self.world_size = device, rank, world_size

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files and evaluates: rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        """This rank's contiguous slice of each global batch (None stays None); the batches themselves if alone."""
        if not self.distributed:
            return tensors
        return tuple(None if t is None else t.chunk(self.world_size)[self.rank] for t in tensors)

    def average_gradients(self, module: nn.Module) -> None:
        """Average the gradients of `module`'s parameters over the ranks: one all-reduce of one flat buffer."""
        if not self.distributed:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, piece in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(piece.view_as(grad))

    def average(self, tensor: Tensor) -> Tensor:
        """The mean of `tensor` over the ranks, on the device (no host sync); `tensor` itself if alone."""
        if not self.distributed:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    def agree(self, reason: str | None) -> str | None:
        """The stop reason every rank acts on: the strongest any rank has (see STOP_REASONS); `reason` if alone."""
        if not self.distributed:
            return reason
        code = torch.tensor([STOP_REASONS.index(reason)], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return STOP_REASONS[int(code)]

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (a NaN on one rank stops all of them)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over the ranks of each of `values` (the same keys on every rank): the global batch's statistics."""
        if not self.distributed or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist(), strict=True))

    def share_random_state(self) -> None:
        """Give every rank rank 0's random state (python, numpy, torch), after work rank 0 alone did: building the
        evaluator draws a feature net's initial weights. The ranks' streams, and so their batches, are equal again,
        and equal to one process's."""
        if not self.distributed:
            return
        state = [rng_state() if self.is_writer else None]
        dist.broadcast_object_list(state, src=0)
        set_rng_state(state[0])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (if this process set one up)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def world_from_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_writer_process() -> bool:
    """Whether this process writes the run's folder and says what went wrong: rank 0 (before `start`, whose
    Runtime.is_writer says the same, has run)."""
    return world_from_env()[0] == 0


def join_submitit_tasks() -> None:
    """In a submitit job of several tasks (`hydra.launcher.tasks_per_node` or `nodes`), make the tasks one process
    group: submitit's own TorchDistributedEnvironment exports RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT,
    which `start` then reads as it reads torchrun's. A job of one task is left alone."""
    import submitit  # the launcher's own dependency: only called under hydra's submitit launchers

    if submitit.JobEnvironment().num_tasks > 1 and "RANK" not in os.environ:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def start(device: torch.device, batch_size: int, timeout_minutes: float = 30.0) -> Runtime:
    """The runtime of this process: trivial alone; under torchrun, joined to the process group.

    device: the device the config resolved; under torchrun a CUDA device becomes this rank's GPU (`LOCAL_RANK`).
    batch_size: the global batch, which must divide by the world size. timeout_minutes: how long a rank waits for
    the others at a collective (rank 0 evaluates alone meanwhile) before the run fails instead of hanging.
    """
    rank, local_rank, world_size = world_from_env()
    if world_size == 1:
        return Runtime(device)
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} does not divide by the {world_size} processes: use a multiple of "
            f"{world_size}, since every process trains on an equal slice of the global batch."
        )
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend, timeout = ("nccl" if device.type == "cuda" else "gloo"), timedelta(minutes=timeout_minutes)
        store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        # torchrun keeps one store across restarts (--max-restarts): without a prefix per attempt, a restarted rank
        # can read the address a dead rank published and fail to connect ("Gloo connectFullMesh failed")
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"ganlab/attempt_{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return Runtime(device, rank, world_size)


def synchronise_batch_statistics(model: nn.Module, runtime: Runtime) -> bool:
    """Whether BatchNorm statistics become SyncBatchNorm: on CUDA under torchrun; on the CPU each rank keeps its own."""
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not runtime.distributed or not batch_norms:
        return False
    if runtime.device.type == "cuda":
        return True
    if runtime.is_writer:
        log.info("BatchNorm statistics are per process on the CPU (%d processes): SyncBatchNorm needs CUDA",
                 runtime.world_size)  # fmt: skip
    return False
