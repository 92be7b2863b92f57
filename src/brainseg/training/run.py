"""Assemble one training run from a RunConfig: data, split, model, loss, optimiser, trainer.

This is the library function behind `brainseg train` (and each model of `brainseg compare`).
Files written to the run folder: config.json, splits.json, checkpoint_last.pt,
checkpoint_best.pt, history.csv and, when the run has finished, train_summary.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from brainseg.config import RunConfig
from brainseg.environment import environment
from brainseg.errors import BrainsegError
from brainseg.fileio import read_json, write_json_atomic
from brainseg.protocol import result_settings, settings_hash
from brainseg.runtime import resolve_amp, select_device
from brainseg.training import distributed as dist_utils
from brainseg.training.checkpoint import load_checkpoint
from brainseg.training.determinism import configure_run, warn_environment_change
from brainseg.training.init_weights import init_source, load_init_weights
from brainseg.training.rundata import load_run_data, records_for
from brainseg.training.trainer import EpochSampler, Trainer, lr_multiplier

CONFIG_NAME = "config.json"
SUMMARY_NAME = "train_summary.json"




class ShardSampler(Sampler[int]):
    """Fixed order, every rank a disjoint share (no padding, so no slice is counted twice)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def loader_options(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """DataLoader settings shared by training, validation and `benchmarks/speed.py`.

    Pinned memory only pays (and only exists) when batches are copied to a CUDA device.
    """
    workers = cfg.train.num_workers
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


def make_train_loader(
    dataset: Any,
    cfg: RunConfig,
    device: torch.device,
    *,
    weights: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """The training loader of one process: its share of every global batch.

    `cfg.train.batch_size` is the global batch; each of `world` processes loads
    batch_size / world slices per step (see `EpochSampler`), so one process with batch B and
    W processes with B/W each take the same optimisation steps on the same slices.
    """
    global_batch = cfg.train.batch_size
    if global_batch % world:
        raise BrainsegError(f"train.batch_size {global_batch} is not divisible by {world} processes")
    # Drop an incomplete last batch (a 1-slice batch breaks BatchNorm) unless there is only one.
    drop_last = len(dataset) >= global_batch
    sampler = EpochSampler(
        len(dataset), seed=cfg.train.seed, weights=weights, rank=rank, world_size=world, drop_last=drop_last and world > 1
    )
    return DataLoader(
        dataset, batch_size=global_batch // world, sampler=sampler, drop_last=drop_last, **loader_options(cfg, device)
    )


def make_val_fn(
    loader: DataLoader,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    threshold: float,
    empty_policy: str,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Validation at training resolution: loss and Dice per patient volume (and per slice)."""
    from brainseg.metrics.accumulator import MetricAccumulator
    from brainseg.metrics.confusion import confusion_counts

    @torch.no_grad()
    def val(model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        acc = MetricAccumulator()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        n = 0
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images)
            logits = logits.float()
            loss_sum += loss_fn(logits, masks).double() * images.shape[0]
            n += images.shape[0]
            counts = confusion_counts(torch.sigmoid(logits) >= threshold, masks > 0.5)
            acc.add(list(batch["patient"]), [int(s) for s in batch["slice"]], counts)
        model.train()
        parts = dist_utils.all_gather_objects((acc, loss_sum.item(), n))
        merged = parts[0][0]
        for other, _, _ in parts[1:]:
            merged.merge(other)
        total_loss = sum(p[1] for p in parts)
        total_n = sum(p[2] for p in parts)
        patient = [r["dice"] for r in merged.per_patient_rows(empty_policy)]
        slices = [r["dice"] for r in merged.per_slice_rows(empty_policy)]
        return {
            "val_loss": total_loss / max(total_n, 1),
            "val_dice": float(np.nanmean(patient)) if patient else float("nan"),
            "val_dice_slice": float(np.nanmean(slices)) if slices else float("nan"),
        }

    return val


def augment_from_config(d: Any) -> Any:
    """The training augmentation a DataConfig asks for: False, or a `brainseg.data.transforms.Augment`."""
    from brainseg.data.transforms import Augment

    if not d.augment:
        return False
    return Augment(
        gamma=(1.0 / d.gamma_max, d.gamma_max),
        bias_field=d.bias_field,
        seq_dropout=d.seq_dropout,
        curves=d.intensity_curves,
    )


def model_kwargs_for(cfg: RunConfig) -> dict[str, Any]:
    """The constructor options of the run's model: its training defaults, model.kwargs, width."""
    from brainseg.models import get_model_class

    # An architecture's own training protocol (e.g. PSPNet's auxiliary head) unless the user says otherwise.
    kwargs = {**get_model_class(cfg.model.name).training_defaults, **cfg.model.kwargs}
    if cfg.model.width is not None:
        kwargs["width"] = cfg.model.width
    return kwargs


def run_preprocessing(cfg: RunConfig) -> dict[str, Any]:
    """The preprocessing a checkpoint of this configuration stores (`preprocessing_dict`)."""
    from brainseg.data.preprocess import preprocessing_dict

    d = cfg.data
    return preprocessing_dict(d.size, d.in_channels, d.normalization, d.context, d.sequence_flags)


def network_channels(cfg: RunConfig) -> int:
    """Input channels of the network this configuration trains (`brainseg.data.preprocess.model_channels`)."""
    from brainseg.data.preprocess import model_channels

    return model_channels(run_preprocessing(cfg))


def check_model_settings(cfg: RunConfig) -> dict[str, Any]:
    """Model name, options and slice size checked before any data is read (a weightless build);
    returns that model's config."""
    from brainseg.models import create_model

    kwargs = {k: v for k, v in model_kwargs_for(cfg).items() if k != "encoder_weights"}
    if cfg.data.sequence_flags and cfg.data.in_channels != 3:
        raise BrainsegError(
            "data.sequence_flags: the flags mark FLAIR copies in the pre- and post-contrast channels, "
            f"so they need data.in_channels=3, not {cfg.data.in_channels}")
    channels = network_channels(cfg)
    if channels != cfg.data.in_channels and model_kwargs_for(cfg).get("encoder_weights"):
        extra = [f"data.context={cfg.data.context}"] * bool(cfg.data.context)
        extra += ["data.sequence_flags=true"] * cfg.data.sequence_flags
        raise BrainsegError(
            f"model.kwargs.encoder_weights: a pretrained encoder's first layer takes {cfg.data.in_channels} channel(s), "
            f"but {' and '.join(extra)} give{'s' * (len(extra) == 1)} the network {channels}; train such a model "
            "from scratch (data.context=0 and data.sequence_flags=false to use the weights)")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model(cfg.model.name, in_channels=channels, **kwargs)
    model.check_input_size(cfg.data.size, cfg.data.size)
    crop = cfg.data.train_crop
    if crop:
        if crop >= cfg.data.size:
            raise BrainsegError(f"data.train_crop={crop} must be smaller than data.size={cfg.data.size} (0: whole slices)")
        try:
            model.check_input_size(crop, crop)
        except BrainsegError as e:
            raise BrainsegError(f"data.train_crop={crop}: {e}") from None
    return dict(model.config)


def resumed_config(cfg: RunConfig, run_cfg: dict[str, Any], epochs_done: int, where: Path,
                   say: Callable[[str], None]) -> RunConfig:
    """`cfg` for continuing a run made with `run_cfg`: every result-changing setting must match,
    except train.epochs, which may extend (or shorten, down to the epochs done) the run, and the eval
    settings, which training does not read (the run's config.json takes the new ones); each said aloud."""
    from brainseg.protocol import changed_keys, diff_settings

    differences = diff_settings(run_cfg, cfg.to_dict())
    evals = [d for d in differences if d.startswith("eval.")]
    if evals:
        say(f"resuming {where} with other eval settings ({'; '.join(evals)}): they apply to its evaluation, "
            "not to its training")
        differences = [d for d in differences if not d.startswith("eval.")]
    if changed_keys(differences) == ["train.epochs"] or not differences:
        if differences:
            if cfg.train.epochs < epochs_done:
                raise BrainsegError(f"{where} has already trained {epochs_done} epochs; train.epochs "
                                    f"{cfg.train.epochs} cannot shorten it below that")
            say(f"resuming {where} with train.epochs {run_cfg['train']['epochs']} → {cfg.train.epochs} "
                f"(the run is {'extended' if cfg.train.epochs > run_cfg['train']['epochs'] else 'shortened'}; "
                "its learning-rate schedule is stretched to the new length from here on)")
        return cfg
    raise BrainsegError(
        f"--resume {where}: the run was made with other settings ({'; '.join(differences)}); resume "
        "without changing them (train.epochs and the eval settings may change), or train a new run in another --out"
    )


def train_run(
    cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one model as `cfg` says, in `run_dir`; with `resume`, continue from checkpoint_last.pt.

    `on_epoch` (single-process runs) sees each saved epoch's history row; an exception it raises
    stops training and propagates (the run stays resumable from its last epoch).

    The run folder is locked while this runs (`brainseg.locks`): a second process gets a clear
    error. With `resume`, `cfg` must match the run's own result-changing settings (see
    `resumed_config`); a folder killed before its first epoch (config.json, no checkpoint) starts.

    Returns the contents of train_summary.json.
    """
    import contextlib
    import os

    from brainseg.locks import folder_lock

    cfg.validate()
    model_config = check_model_settings(cfg)
    run_dir = Path(run_dir)
    init = None  # the source's file and architecture, before any data is read; a resumed run has its own weights
    if cfg.train.init_weights and not (resume and (run_dir / "checkpoint_last.pt").is_file()):
        init = init_source(cfg.train.init_weights, model_config)
    # torchrun: rank 0 alone writes the folder, so it alone holds the lock (the group is not up yet).
    main = int(os.environ.get("RANK", "0")) == 0
    with folder_lock(run_dir, "run folder") if main else contextlib.nullcontext():
        return _train_locked(cfg, run_dir, resume=resume, progress=progress, on_epoch=on_epoch, init=init)


def _train_locked(cfg: RunConfig, run_dir: Path, *, resume: bool, progress: bool,
                  on_epoch: Callable[[dict[str, Any]], None] | None, init: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    from brainseg.data.dataset import SliceDataset, load_arrays
    from brainseg.losses import build_loss
    from brainseg.models import count_parameters, create_model

    def say(msg: str) -> None:
        if dist_utils.is_main():
            print(msg, file=sys.stderr, flush=True)

    last = run_dir / "checkpoint_last.pt"
    ckpt = None
    if resume:
        if last.is_file():
            ckpt = load_checkpoint(last)
            cfg = resumed_config(cfg, ckpt["config"], int(ckpt.get("epoch") or 0), run_dir, say)
        elif (run_dir / CONFIG_NAME).is_file():
            cfg = resumed_config(cfg, read_json(run_dir / CONFIG_NAME), 0, run_dir, say)
            say(f"{run_dir} was stopped before its first epoch ended: starting it")
        else:
            raise BrainsegError(f"nothing to resume in {run_dir}: no checkpoint_last.pt")
    elif last.is_file():
        raise BrainsegError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out"
        )

    device = select_device(cfg.train.device)
    distributed = dist_utils.init_from_env(device.type)
    device = dist_utils.local_device(device)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if on_epoch is not None and world > 1:  # rank 0 alone would stop; the others would wait for it
        raise BrainsegError("an on_epoch hook needs a single-process run, not one of several (torchrun) processes")
    configure_run(cfg.train.seed, cfg.train.threads, device, cfg.train.deterministic)
    env = environment(device)
    if ckpt is not None and dist_utils.is_main():
        warn_environment_change(ckpt.get("environment"), env, lambda m: print(m, file=sys.stderr))
    if dist_utils.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_NAME, cfg.to_dict())
    dist_utils.barrier()

    data = load_run_data(cfg, run_dir)
    if ckpt is not None and ckpt.get("split", {}).get("id") not in (None, data.split.id):
        raise BrainsegError(f"{last} was trained on split {ckpt['split']['id']}, but this data gives {data.split.id}")
    d = cfg.data
    train_records = records_for(data.index, data.split.train)
    val_records = records_for(data.index, data.split.val)
    if not train_records or not val_records:
        raise BrainsegError(
            f"split {data.split.id} leaves {len(train_records)} training and {len(val_records)} validation "
            f"slices; the dataset at {data.root} is too small for these fractions"
        )
    common = {"size": d.size, "in_channels": d.in_channels, "normalization": d.normalization, "context": d.context,
              "sequence_flags": d.sequence_flags}
    soft = d.mask_targets == "soft"  # training targets only: validation scores binary masks
    train_ds = SliceDataset(
        train_records, augment=augment_from_config(d), seed=cfg.train.seed,
        arrays=load_arrays(train_records, d.size, soft_masks=soft), soft_masks=soft, crop=d.train_crop, **common
    )
    val_ds = SliceDataset(val_records, augment=False, arrays=load_arrays(val_records, d.size), **common)

    weights = None
    if d.tumour_weight > 0:
        weights = np.where(train_ds.has_tumour, d.tumour_weight, 1.0)
    train_loader = make_train_loader(train_ds, cfg, device, weights=weights, rank=rank, world=world)
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.train.batch_size // world,
        sampler=ShardSampler(len(val_ds), rank, world),
        **loader_options(cfg, device),
    )

    model = create_model(cfg.model.name, in_channels=network_channels(cfg), **model_kwargs_for(cfg))
    model.check_input_size(d.size, d.size)
    init_record = None
    if init is not None and ckpt is None:
        init_record = load_init_weights(init, model, data.split.to_dict(), run_preprocessing(cfg), say)
    model.channels_last_everywhere = cfg.train.channels_last
    model.to(device)
    loss_fn = build_loss(cfg.train.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = len(train_loader) if not cfg.train.max_batches_per_epoch else min(
        len(train_loader), cfg.train.max_batches_per_epoch
    )
    total = steps_per_epoch * cfg.train.epochs
    warm = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.train.lr_schedule, total, warm))
    amp_dtype = resolve_amp(cfg.train.amp, device)

    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)

    meta = {
        "model": dict(model.config),
        "preprocessing": run_preprocessing(cfg),
        "config": cfg.to_dict(),
        "split": data.split.to_dict(),
        "data_root": str(data.root),
        "params": count_parameters(model),
        "environment": env,
    }
    if ckpt is not None:
        init_record = ckpt.get("init_weights")
    if init_record is not None:
        meta["init_weights"] = init_record
    val_fn = make_val_fn(val_loader, loss_fn, device, amp_dtype, cfg.eval.threshold, cfg.eval.empty_policy)
    trainer = Trainer(
        net,
        loss_fn,
        optimizer,
        scheduler,
        train_loader,
        val_fn,
        device=device,
        epochs=cfg.train.epochs,
        run_dir=run_dir,
        meta=meta,
        amp_dtype=amp_dtype,
        grad_clip=cfg.train.grad_clip,
        patience=cfg.train.patience,
        max_batches=cfg.train.max_batches_per_epoch,
        progress=progress,
        channels_last=cfg.train.channels_last,
        time_limit_s=60.0 * cfg.train.time_limit_minutes,
        on_epoch=on_epoch,
        ema_decay=cfg.train.ema,
    )
    if ckpt is not None:
        trainer.load_state(ckpt)
        if dist_utils.is_main() and progress:
            print(f"resuming {run_dir} after epoch {trainer.state.epoch}/{cfg.train.epochs}", file=sys.stderr)
    if dist_utils.is_main() and progress:
        print(
            f"training {cfg.model.name} ({meta['params']:,} parameters) on {len(train_ds)} slices of "
            f"{len(data.split.train)} patients, validating on {len(data.split.val)} patients; "
            f"device {device}{f' ×{world}' if world > 1 else ''}, amp {amp_dtype or 'off'}",
            file=sys.stderr,
            flush=True,
        )
    t0 = time.perf_counter()
    state = trainer.fit()
    summary = {
        "model": cfg.model.name,
        "run_dir": str(run_dir),
        "finished": True,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_dice": state.best_dice,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "this_session_seconds": round(time.perf_counter() - t0, 2),
        "params": meta["params"],
        "train_slices": len(train_ds),
        "split_id": data.split.id,
        "settings_hash": settings_hash(result_settings(cfg), data.split.id),  # what compare's reuse checks
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "world_size": world,
        "amp": str(amp_dtype) if amp_dtype else "off",
        "torch": torch.__version__,
        "environment": env,
        **({"init_weights": init_record} if init_record is not None else {}),
    }
    if dist_utils.is_main():
        write_json_atomic(run_dir / SUMMARY_NAME, summary)
    dist_utils.barrier()
    return summary


def run_is_finished(run_dir: str | Path) -> bool:
    p = Path(run_dir) / SUMMARY_NAME
    if not p.is_file():
        return False
    try:
        return bool(read_json(p).get("finished"))
    except (OSError, json.JSONDecodeError):
        return False
