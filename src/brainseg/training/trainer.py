"""A small training loop that receives its parts: model, loss, optimizer, scheduler and loaders.

Variants (mixed precision, clipping, early stopping, distributed data parallel) are settings, not
subclasses. The loop checkpoints after every epoch (atomically), so a run killed at any moment
resumes from its last completed epoch and — because every random draw is either restored from the
checkpoint or derived from (seed, epoch) — reaches the same result it would have reached
uninterrupted (on CPU; GPU kernels are not all deterministic).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from brainseg.config import LR_SCHEDULES
from brainseg.errors import BrainsegError
from brainseg.training import distributed as dist_utils
from brainseg.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from brainseg.training.history import write_history


class TrainingDiverged(BrainsegError):
    """The loss became NaN or infinite."""


class EpochSampler(Sampler[int]):
    """Per-epoch order derived from (seed, epoch), sharded over distributed ranks.

    Uniform shuffling by default; with `weights` (e.g. tumour slices weighted up) a weighted draw
    with replacement. Rank r of W takes every W-th index of the same global order (positions r,
    r+W, …), so W processes with batch B/W see the same global batches as one process with
    batch B: global batch j is positions jB…jB+B-1 of the order, split between the ranks.

    Args:
        n: dataset length.
        seed: the order of epoch e comes from (seed, e) alone.
        weights: optional per-item sampling weights (draws with replacement).
        rank, world_size: this process's share in distributed training.
        drop_last: with W > 1, drop the last n mod W items of the order instead of padding it
            with repeats; together with a loader's `drop_last` this gives every rank exactly the
            batches one process would make (one process drops the same incomplete tail).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise BrainsegError(f"rank {rank} is not in [0, {world_size})")
        if drop_last and n < world_size:
            raise BrainsegError(f"{n} training slices cannot be shared by {world_size} processes")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.drop_last = drop_last
        self.per_rank = n // world_size if drop_last else math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        """The order of the current epoch over all ranks (length per_rank × world_size)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        size = self.per_rank * self.world
        if size > self.n:  # pad with the first items so every rank has the same count
            order = torch.cat([order, order[: size - self.n]])
        return order[:size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


POLY_POWER = 0.9  # nnU-Net's exponent


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """LR multiplier per optimiser step: a linear warm-up to 1 over `warmup_steps`, then, with t the
    fraction of the remaining steps done,

    - "cosine": floor + (1 − floor)·(1 + cos πt)/2, down to `floor` at the end;
    - "poly": (1 − t)^0.9, down to 0 at the end (the "poly" schedule of nnU-Net and DeepLab);
    - "constant": 1.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if schedule == "poly":
            return (1.0 - t) ** POLY_POWER
        return 1.0

    return f


@dataclass
class TrainState:
    """Everything the loop carries between epochs (and into checkpoints)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs epochs of training and per-patient validation, checkpointing after each.

    Args:
        model: returns logits (or, in training mode, {"out": logits, "aux": logits or a list of
            them, finest first} for deep supervision: the k-th auxiliary loss weighs aux_weight / 2^k).
        loss_fn: maps (logits, target) to a scalar.
        val_fn: maps the (unwrapped) model to {"val_loss", "val_dice", "val_dice_slice"};
            `val_dice` is the per-patient mean Dice used for model selection.
        run_dir: where checkpoint_best.pt / checkpoint_last.pt / history.csv go (rank 0 only).
        meta: what every checkpoint carries besides training state (model config,
            preprocessing, run config, split).
        on_epoch: called on rank 0 with each epoch's history row once the epoch is saved; an
            exception it raises stops training there (single-process runs only: other ranks
            would wait for rank 0).
        ema_decay: > 0: keep an exponential moving average of the weights and BatchNorm buffers
            (`torch.optim.swa_utils.AveragedModel`), updated after every step; validation,
            model selection and the checkpoints' ``state_dict`` (what evaluation and prediction
            load) use it, and ``trained_state_dict`` keeps the weights as trained, for resuming.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        val_fn: Callable[[nn.Module], dict[str, float]],
        *,
        device: torch.device,
        epochs: int,
        run_dir: str | Path,
        meta: dict[str, Any],
        amp_dtype: torch.dtype | None = None,
        grad_clip: float = 0.0,
        patience: int = 0,
        aux_weight: float = 0.4,
        max_batches: int = 0,
        progress: bool = True,
        channels_last: bool = False,
        time_limit_s: float = 0.0,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        ema_decay: float = 0.0,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.time_limit_s, self.on_epoch = time_limit_s, on_epoch
        self.train_loader, self.val_fn = train_loader, val_fn
        self.device, self.epochs, self.run_dir, self.meta = device, epochs, Path(run_dir), meta
        self.amp_dtype, self.grad_clip, self.patience, self.aux_weight = amp_dtype, grad_clip, patience, aux_weight
        self.max_batches, self.channels_last = max_batches, channels_last
        self.progress = progress and dist_utils.is_main()
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.state = TrainState()
        self.ema = None
        if ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.bare_model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            # counts among the buffers (BatchNorm's num_batches_tracked) are copied after each update, not averaged:
            # torch would truncate their average. Found once: load_state_dict copies in place, so the pairs hold.
            self._ema_counts = [
                (mine, theirs) for mine, theirs in zip(self.ema.module.buffers(), self.bare_model.buffers(), strict=True)
                if not mine.is_floating_point()
            ]

    # -- state ------------------------------------------------------------------------------------
    @property
    def bare_model(self) -> nn.Module:
        """The model itself, without its DistributedDataParallel and torch.compile wrappers."""
        return unwrap(self.model)

    @property
    def used_model(self) -> nn.Module:
        """The weights that are validated and saved: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.bare_model

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG and loop state from a checkpoint."""
        self.bare_model.load_state_dict(ckpt.get("trained_state_dict", ckpt["state_dict"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["state_dict"])
            self.ema.n_averaged.fill_(int(ckpt.get("ema_steps", 0)))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.state = TrainState(**ckpt["train_state"])

    def _checkpoint(self, name: str) -> None:
        payload = {
            **self.meta,
            "state_dict": self.used_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(),
            "train_state": vars(self.state),
            "epoch": self.state.epoch,
        }
        if self.ema is not None:
            payload["trained_state_dict"] = self.bare_model.state_dict()
            payload["ema_steps"] = int(self.ema.n_averaged)
        save_checkpoint(self.run_dir / name, payload)

    # -- loop -------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        st = self.state
        while st.epoch < self.epochs and not st.stopped_early:
            epoch = st.epoch + 1
            t0 = time.perf_counter()
            train_loss, n_seen = self._train_epoch(epoch)
            train_time = time.perf_counter() - t0
            # every rank validates (and rank 0 saves) the same weights and BatchNorm statistics
            dist_utils.broadcast_buffers(self.bare_model)
            if self.ema is not None:  # averaged from each rank's own BatchNorm statistics: rank 0's count
                dist_utils.broadcast_buffers(self.ema.module)
            val = self.val_fn(self.used_model)
            seconds = time.perf_counter() - t0
            st.epoch = epoch
            st.train_seconds += seconds
            improved = val["val_dice"] > st.best_dice
            if improved:
                st.best_dice, st.best_epoch, st.bad_epochs = val["val_dice"], epoch, 0
            else:
                st.bad_epochs += 1
                if self.patience and st.bad_epochs >= self.patience:
                    st.stopped_early = True
            out_of_time = bool(self.time_limit_s) and st.train_seconds >= self.time_limit_s and epoch < self.epochs
            # rank 0's clock decides, so that every process stops after the same epoch
            out_of_time = bool(dist_utils.broadcast_object(out_of_time))
            st.stopped_early = st.stopped_early or out_of_time
            st.history.append(
                {
                    "epoch": epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss,
                    **val,
                    "epoch_seconds": round(seconds, 3),
                    "train_slices_per_s": round(n_seen / max(train_time, 1e-9), 2),
                    "best": int(improved),
                }
            )
            if dist_utils.is_main():
                # last first: if killed between the two writes, resume still finds this epoch.
                self._checkpoint("checkpoint_last.pt")
                if improved:
                    self._checkpoint("checkpoint_best.pt")
                write_history(self.run_dir / "history.csv", st.history)
                if self.progress:
                    flag = " *best*" if improved else ""
                    stop = "  (time limit: stopping)" if out_of_time else "  (early stop)" if st.stopped_early else ""
                    print(
                        f"  epoch {epoch}/{self.epochs}  train_loss {train_loss:.4f}  val_loss "
                        f"{val['val_loss']:.4f}  val_dice {val['val_dice']:.4f}{flag}  {seconds:.1f}s{stop}",
                        file=sys.stderr,
                        flush=True,
                    )
                if self.on_epoch is not None:  # after the epoch is saved: an exception here stops training
                    self.on_epoch(st.history[-1])
            dist_utils.barrier()
        return st

    def _forward_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(images)
        if isinstance(out, dict):  # deep supervision: PSPNet's auxiliary head, the U-Net's decoder heads
            aux = out["aux"] if isinstance(out["aux"], (list, tuple)) else [out["aux"]]
            loss = self.loss_fn(out["out"].float(), masks)
            for k, a in enumerate(aux):  # the k-th auxiliary output (finest first) weighs aux_weight / 2^k
                loss = loss + self.aux_weight / 2**k * self.loss_fn(a.float(), masks)
            return loss
        return self.loss_fn(out.float(), masks)

    def train_step(self, batch: dict[str, Any], epoch: int = 0) -> torch.Tensor:
        """One optimisation step on one loader batch; returns the loss (detached, on the device).

        Under DDP the backward pass averages gradients over ranks; `benchmarks/speed.py` times
        this method, so what it measures is what training runs.
        """
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = self._forward_loss(images, masks)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at epoch {epoch}, step {self.state.global_step + 1}: "
                f"try a lower learning rate (train.lr), gradient clipping (train.grad_clip) or amp off"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.bare_model)
            for mine, theirs in self._ema_counts:
                mine.copy_(theirs)
        self.state.global_step += 1
        return loss.detach()

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        self.model.train()
        loader = self.train_loader
        for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        total = len(loader) if not self.max_batches else min(self.max_batches, len(loader))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"  epoch {epoch}/{self.epochs}", leave=False, mininterval=1.0, file=sys.stderr)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n_batches = n_seen = 0
        for i, batch in enumerate(loader):
            if i >= total:
                break
            loss = self.train_step(batch, epoch)
            loss_sum += loss.detach().double()
            n_batches += 1
            n_seen += batch["image"].shape[0] * dist_utils.world_size()
            if bar is not None:
                bar.update(1)
                if n_batches % 5 == 0 or n_batches == total:
                    bar.set_postfix(loss=f"{loss_sum.item() / n_batches:.4f}")
        if bar is not None:
            bar.close()
        s, n = dist_utils.all_reduce_sum([loss_sum.item(), float(n_batches)], self.device)
        return s / max(n, 1.0), n_seen
