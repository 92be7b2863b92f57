"""Is the data pipeline ever the bottleneck? Slices/s it delivers next to a UNet's train-step rate.

Data side: the cached `SliceDataset` (uint8 arrays decoded and resized once by `load_arrays`) with
the default paired augmentation (flips, rotation/zoom, intensity jitter) and unit normalisation,
read through a `DataLoader` the way training reads it (batch 16, the seeded epoch sampler, the
training default of `--workers 0`, i.e. loading in the training process itself). With `--config`,
the data settings of that config instead (its size, augmentation, normalisation, 2.5-D context,
sequence flags), as `brainseg train` builds them (binary mask targets only).

Model side: a train step of `create_model("unet", width=W)` on the same batch size and slice size:
forward, the default bce+dice loss, backward, gradient clipping at 1, AdamW step, on the CPU.

With `--workers 0` the two run one after the other, so the data share of a training step is
t_data / (t_data + t_step) per batch. Both are measured in alternating rounds (median of the
rounds), so load from other processes on a shared machine hits both alike.

    python benchmarks/data_pipeline.py            # real LGG data if present, else phantoms (≈3 min)
    python benchmarks/data_pipeline.py --quick    # 6 patients, one round of one step (< 1 min)
    python benchmarks/data_pipeline.py --config configs/unet_cpu.yaml --widths 16   # the CPU recipe's data
    python benchmarks/data_pipeline.py --config configs/unet_cpu.yaml --context 1  # … read 2.5-D
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from brainseg.data.dataset import SliceDataset, load_arrays
from brainseg.data.lgg import index_dataset
from brainseg.data.phantom import write_phantoms
from brainseg.fileio import write_json_atomic
from brainseg.losses import build_loss
from brainseg.models import count_parameters, create_model
from brainseg.training.trainer import EpochSampler

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg" / "kaggle_3m"


def dataset_root(data: str | None, patients: int | None, tmp: Path) -> tuple[Path, str]:
    """The dataset to read: --data, else the real development set, else fresh phantoms.

    With `patients`, a real or given set is narrowed to its first N patient folders through
    symbolic links in `tmp` (nothing is copied), so that indexing it stays quick.
    """
    if data or REAL_DATA.is_dir():
        root = Path(data) if data else REAL_DATA
        what = f"{root}" if data else "real LGG development data"
        if patients:
            inner = root / "kaggle_3m" if (root / "kaggle_3m").is_dir() else root
            sub = tmp / "subset" / "kaggle_3m"
            sub.mkdir(parents=True)
            for folder in sorted(p for p in inner.iterdir() if p.is_dir() and not p.name.startswith("."))[:patients]:
                (sub / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
            return sub, f"{what}, first {patients} patients"
        return root, what
    n = patients or 12
    return write_phantoms(tmp, patients=n, seed=0, size=256), f"{n} phantom patients at 256×256 (no real data)"


def data_rate(loader: DataLoader, batches: int, epoch: int) -> float:
    """Seconds per batch for `batches` batches (starting a new epoch when the loader runs out)."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        assert batch["image"].shape[0] == loader.batch_size
    return (time.perf_counter() - t0) / batches


class TrainStep:
    """One optimisation step of a model on a fixed batch, as the trainer does it on the CPU."""

    def __init__(self, width: int, batch: dict[str, torch.Tensor], in_channels: int = 3) -> None:
        torch.manual_seed(0)
        self.model = create_model("unet", width=width, in_channels=in_channels).train()
        self.params = count_parameters(self.model)
        self.loss = build_loss("bce+dice")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.x, self.y = batch["image"], batch["mask"]

    def __call__(self) -> None:
        logits = self.model(self.x)
        loss = self.loss(logits, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def seconds(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset folder (default: the real development data, else phantoms)")
    parser.add_argument("--quick", action="store_true", help="a few patients and rounds (< 1 min)")
    parser.add_argument("--size", type=int, default=128, help="slice size (default 128; with --config, the config's)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 16], help="UNet widths (default 32 16)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0, as training)")
    parser.add_argument("--patients", type=int, help="use only the first N patients (default: all; 6 with --quick)")
    parser.add_argument("--rounds", type=int, help="alternating measurement rounds (default 4; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--config", help="take augmentation, normalisation, context and size from this config")
    parser.add_argument("--context", type=int, help="2.5-D context (neighbouring slices each side), over the config's")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 4)
    n_patients = args.patients or (6 if args.quick else None)
    data_batches = 8 if args.quick else 30
    steps = 1 if args.quick else 2  # train steps per round and width

    settings: dict = {}
    in_channels = 3  # SliceDataset's default input: pre-contrast, FLAIR, post-contrast
    if args.config or args.context is not None:  # before the cache is built: the config's size counts
        from brainseg.config import build_config
        from brainseg.training.run import augment_from_config, network_channels

        cfg = build_config(args.config, {"data.context": args.context})
        d = cfg.data
        in_channels = network_channels(cfg)  # what the network takes, as the trainer counts it
        if d.mask_targets != "binary":
            raise SystemExit(f"data.mask_targets={d.mask_targets} is not measured here (binary targets only)")
        settings = {"augment": augment_from_config(d), "in_channels": d.in_channels, "normalization": d.normalization,
                    "context": d.context, "sequence_flags": d.sequence_flags}  # fmt: skip
        args.size = d.size
    with tempfile.TemporaryDirectory() as tmp:
        root, what = dataset_root(args.data, n_patients, Path(tmp))
        t0 = time.perf_counter()
        index = index_dataset(root)
        t_index = time.perf_counter() - t0
        patients, records = index.patients, index.records
        t0 = time.perf_counter()
        arrays = load_arrays(records, args.size)
        t_cache = time.perf_counter() - t0
    ds = SliceDataset(records, size=args.size, seed=0, arrays=arrays, **({"augment": True} | settings))
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        sampler=EpochSampler(len(ds), seed=0),
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    print(
        f"data: {what}: {len(patients)} patients, {len(records)} slices "
        f"(indexed in {t_index:.1f} s; uint8 cache at {args.size}×{args.size} "
        f"built in {t_cache:.1f} s, {arrays[0].nbytes / 2**20:.0f} MiB)"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.workers} loader workers, median of {rounds} round(s)"
    )
    print("data settings: " + (", ".join(f"{k} {v}" for k, v in settings.items()) if settings else
                               "default augmentation, unit normalisation, no context"))

    batch = next(iter(loader))
    steppers = {w: TrainStep(w, batch, in_channels) for w in args.widths}
    for s in steppers.values():  # warm-up: allocator, autograd graph, AdamW state
        s()
    data_rate(loader, 2, epoch=0)

    t_data: list[float] = []
    t_step: dict[int, list[float]] = {w: [] for w in args.widths}
    for r in range(rounds):
        t_data.append(data_rate(loader, data_batches, epoch=r + 1))
        for w, s in steppers.items():
            t_step[w].append(s.seconds(steps))

    d = statistics.median(t_data)
    rows = []
    print(f"\n{'pipeline':<34} {'slices/s':>9} {'ms/batch':>9} {'data share':>11}")
    print(f"{'cached SliceDataset + augment':<34} {args.batch / d:>9.0f} {1000 * d:>9.1f}")
    for w in args.widths:
        t = statistics.median(t_step[w])
        share = d / (d + t)
        label = f"UNet width {w} ({steppers[w].params / 1e6:.1f} M) train step"
        print(f"{label:<34} {args.batch / t:>9.1f} {1000 * t:>9.1f} {100 * share:>10.1f}%")
        rows.append({"width": w, "params": steppers[w].params, "train_slices_per_s": args.batch / t,
                     "train_ms_per_batch": 1000 * t, "data_share": share})  # fmt: skip
    print(
        "\ndata share = data time / (data time + train step time) per batch"
        + (", loading in the training process (workers 0)" if args.workers == 0 else "")
        + ".\nOn a machine shared with other jobs both sides slow down; torch's multi-threaded ops (the batch\n"
        "collation's torch.stack among them) suffer most from oversubscribed cores."
    )
    if args.json:
        write_json_atomic(args.json, {
            "data": what, "patients": len(patients), "slices": len(records), "size": args.size,
            "batch": args.batch, "workers": args.workers, "threads": torch.get_num_threads(),
            "index_seconds": t_index, "cache_seconds": t_cache,
            "data_slices_per_s": args.batch / d, "data_ms_per_batch": 1000 * d, "models": rows,
            "data_settings": {k: str(v) for k, v in settings.items()} or "default",
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
