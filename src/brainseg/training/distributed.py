"""Thin helpers over torch.distributed, so the same code runs alone or under `torchrun`.

    torchrun --standalone --nproc_per_node=N -m brainseg train …      # or: … -m brainseg compare …

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `brainseg.cli` then starts the default process
group once for the whole command (`init_from_env`) and silences stdout on ranks other than 0.
What a distributed run does, and how it relates to a one-process run:

- **Global batch.** `train.batch_size` is the global batch: each of N processes loads
  batch_size / N slices per step (batch_size must divide by N), and rank r takes positions
  r, r+N, … of one shared per-epoch order (`EpochSampler`), so N processes take the same steps on
  the same slices as one process with the whole batch; learning rate and schedule need no change.
- **Gradients** are averaged over ranks by DistributedDataParallel (NCCL on GPUs, gloo on CPU).
  A loss that is a mean over pixels (BCE, focal) then gives exactly the one-process gradient;
  the batch-level Dice/Tversky losses are computed per rank's share, as in any DDP training.
- **BatchNorm** normalises with each rank's own share (torch offers SyncBatchNorm on GPUs only);
  the running statistics kept are rank 0's, and are copied to every rank before validation
  (`broadcast_buffers`), so every rank validates the model that rank 0 checkpoints.
- **Validation** runs on every rank over a disjoint share of the validation slices; the
  confusion counts are gathered and merged, so every rank ends an epoch with the same figures
  (and takes the same early-stopping and best-checkpoint decisions).
- **Files**: checkpoints, history.csv, config.json, splits.json and summaries are written by rank 0
  only; the others wait in a barrier where they would read them.
- **Resume** (`--resume`) works the same way: every rank loads checkpoint_last.pt. The order and
  the global batches depend on the global batch size only, so a run may even resume with another
  N (only the BatchNorm shares change).
- **compare**: every rank trains each model; rank 0 alone evaluates and builds the report while
  the others wait in a barrier (timeout `BRAINSEG_DIST_TIMEOUT_MIN`, default 120 minutes).

Backends: gloo for CPU tensors; on a machine with CUDA the group is "cpu:gloo,cuda:nccl", so
gradients of a GPU model travel over NCCL while object collectives and barriers (small, in CPU
memory) use gloo — and a `--device cpu` run on a GPU machine still works. Without torchrun
(WORLD_SIZE unset or 1) every helper is a no-op that returns the one-process answer.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 alone evaluates and writes reports while the other ranks wait in a barrier (`brainseg
# compare`); torch's default (30 min for gloo, 10 min for NCCL) is too short for a large test split.
TIMEOUT_ENV = "BRAINSEG_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def backend_for(device_type: str | None) -> str:
    """The process-group backend for a run on `device_type` (None: decide from this machine).

    CUDA → "cpu:gloo,cuda:nccl" (NCCL for GPU tensors, gloo for objects and CPU tensors);
    anything else → "gloo".
    """
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_from_env(device_type: str | None = None) -> bool:
    """Start the default process group when launched by torchrun; returns True when distributed.

    A no-op (returning the current state) outside torchrun or when the group already exists, so
    the CLI and `train_run` may both call it.
    """
    if is_distributed():
        return True
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        from brainseg.errors import BrainsegError

        raise BrainsegError("WORLD_SIZE > 1 (launched by torchrun?) but this torch has no torch.distributed")
    backend = backend_for(device_type)
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))
    return True


def local_device(device: torch.device) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK under torchrun on GPUs, `device` otherwise."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks, in float64 (the values themselves alone)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every rank's `module`, in place.

    DistributedDataParallel broadcasts them at the start of each training forward, but each rank
    then updates its own copy from its own shard; after the last step of an epoch they differ.
    Validation on every rank must use the model rank 0 checkpoints, so sync them first.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def cleanup() -> None:
    """Destroy the process group (call once, at the end of the program)."""
    if is_distributed():
        dist.destroy_process_group()
