"""Training and inference speed per model and slice size, and how much of a step waits for data.

For every architecture in the registry and every slice size it reports:

- train slices/s: whole training steps (`Trainer.train_step`: forward, loss, backward, clipping,
  AdamW, scheduler) including the wait for the next batch, over `--steps` timed steps after
  `--warmup` untimed ones;
- infer slices/s: eval-mode forward passes under no_grad (and autocast, as validation runs);
- peak memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak resident
  set size during that model's steps (sampled every 2 ms; DataLoader worker processes not counted);
- data share: time blocked in the DataLoader iterator / total step time. The data path is the real
  one: `SliceDataset` with augmentation on the in-memory cache, through `make_train_loader` exactly
  as `train_run` builds it (sampler, workers, pinned memory on CUDA).

Speed options are measured as variants (`--variants`): base (the TrainConfig defaults),
channels_last (`train.channels_last`: NHWC on every device; on a CPU the models already run
channels-last, see `models_speed.py --layouts`, so there it equals base), compile
(torch.compile), amp (bf16 autocast), workersN (N DataLoader workers).
Every run records the device, torch version, thread counts and the load average before and
after, because on a shared machine other processes slow every figure down.

    python benchmarks/speed.py --quick                     # < 1 min on 2 idle CPU cores
    python benchmarks/speed.py                             # all five models at 128×128 (~5 min)
    python benchmarks/speed.py --sizes 256 --device cuda --variants base,channels_last,amp,compile
    python benchmarks/speed.py --models unet --width 8 --variants base,workers1,workers2 --json w.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.config import RunConfig
from brainseg.data.dataset import SliceDataset, load_arrays
from brainseg.data.lgg import index_dataset
from brainseg.data.roots import resolve_data_root
from brainseg.fileio import write_json_atomic
from brainseg.losses import build_loss
from brainseg.models import count_parameters, create_model, list_models
from brainseg.runtime import resolve_amp, select_device
from brainseg.training.run import make_train_loader
from brainseg.training.trainer import Trainer, lr_multiplier

# name → settings changed from the TrainConfig defaults ("workersN" is parsed, any N)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "amp": {"amp": "bf16"},
    "fp32": {"amp": "off"},
}


def variant_settings(name: str) -> dict[str, Any]:
    if name.startswith("workers") and name[7:].isdigit():
        return {"num_workers": int(name[7:])}
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}, workersN")
    return VARIANTS[name]


class PeakRSS:
    """Peak resident set size of this process while the block runs (Linux /proc; else ru_maxrss)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: lifetime peak, an upper bound
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@dataclass
class Data:
    records: list[Any]
    arrays: dict[int, tuple[np.ndarray, np.ndarray]]


def load_data(root: str | None, sizes: list[int], max_slices: int) -> Data:
    root_path = resolve_data_root(root, announce=lambda m: print(m, file=sys.stderr))
    records = [r for r in index_dataset(root_path).records if r.mask is not None][:max_slices]
    return Data(records, {s: load_arrays(records, s) for s in sizes})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model_name: str, size: int, cfg: RunConfig, data: Data, device: torch.device, steps: int, warmup: int
) -> dict[str, Any]:
    """Time `steps` training steps and `steps` inference batches of one model at one size."""
    t = cfg.train
    images, masks = data.arrays[size]
    ds = SliceDataset(data.records, size=size, augment=cfg.data.augment, seed=t.seed, arrays=(images, masks))
    loader = make_train_loader(ds, cfg, device)
    torch.manual_seed(t.seed)
    kwargs = {} if cfg.model.width is None else {"width": cfg.model.width}
    model = create_model(model_name, **kwargs)
    model.check_input_size(size, size)
    # the same preparation as train_run: device, memory format, then torch.compile
    model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = torch.compile(model) if t.compile else model
    amp_dtype = resolve_amp(t.amp, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total = warmup + steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(t.lr_schedule, total, 1))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            net, build_loss(t.loss), optimizer, scheduler, loader, lambda m: {}, device=device, epochs=1,
            run_dir=tmp, meta={}, amp_dtype=amp_dtype, grad_clip=t.grad_clip, progress=False,
            channels_last=t.channels_last,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss = PeakRSS()
        with rss:
            net.train()
            epoch, it = 0, None
            wait = busy = 0.0
            n_train = 0
            t_first = time.perf_counter()
            for step in range(total):
                t0 = time.perf_counter()
                batch = next(it, None) if it is not None else None
                while batch is None:  # a new epoch (also the first): part of the data wait
                    epoch += 1
                    ds.set_epoch(epoch)
                    loader.sampler.set_epoch(epoch)
                    it = iter(loader)
                    batch = next(it, None)
                t1 = time.perf_counter()
                trainer.train_step(batch, epoch)
                _sync(device)
                t2 = time.perf_counter()
                if step >= warmup:
                    wait += t1 - t0
                    busy += t2 - t1
                    n_train += batch["image"].shape[0]
            first_steps = time.perf_counter() - t_first - wait - busy  # warm-up (compile) time

            # inference: eval mode, no_grad, autocast as validation does, on fixed batches
            model.eval()
            x = next(iter(loader))["image"].to(device)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            infer = 0.0
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                for step in range(total):
                    _sync(device)
                    t0 = time.perf_counter()
                    net(x)
                    _sync(device)
                    if step >= warmup:
                        infer += time.perf_counter() - t0
        del it
        loader = None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return {
        "model": model_name,
        "size": size,
        "params": count_parameters(model),
        "batch": t.batch_size,
        "train_slices_per_s": n_train / (wait + busy),
        "infer_slices_per_s": steps * x.shape[0] / infer,
        "step_ms": 1e3 * (wait + busy) / steps,
        "data_wait_ms": 1e3 * wait / steps,
        "data_share": wait / (wait + busy),
        "peak_mem_mib": peak / 2**20,
        "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss",
        "warmup_s": first_steps,
    }


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric figure over repeated measurements (with the raw values kept)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [r[key] for r in runs]
            out[key] = float(np.median(values))
            if len(runs) > 1 and key in ("train_slices_per_s", "infer_slices_per_s", "data_share"):
                out[f"{key}_all"] = values
    out["repeats"] = len(runs)
    return out


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        info["load_before"] = [round(v, 2) for v in os.getloadavg()]
    return info


def main(argv: list[str] | None = None) -> int:
    known = list_models()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(known), help=f"comma-separated (default all: {','.join(known)})")
    p.add_argument("--sizes", default=None, help="comma-separated slice sizes (default 128; quick 128)")
    p.add_argument("--width", type=int, default=None, help="base width (default: each model's own; quick 8)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per step (default 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; compile: 3)")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the variants; medians are shown (default 1)")
    p.add_argument("--variants", default="base", help="comma-separated: base, channels_last, compile, amp, fp32, workersN")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data", default=None, help="dataset folder (default: the built-in phantom set)")
    p.add_argument("--max-slices", type=int, default=256, help="slices loaded for the benchmark (default 256)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch's default)")
    p.add_argument("--quick", action="store_true", help="every model at 128×128 with width 8 (< 1 min on 2 idle cores)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = p.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    sizes = [int(s) for s in (args.sizes or "128").split(",")]
    width = args.width if args.width is not None else (8 if args.quick else None)
    steps = args.steps or 3
    batch = args.batch_size or 4
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    meta = describe_device(device)
    meta.update({"batch": batch, "steps": steps, "width": width, "variants": variants, "repeats": args.repeats})
    data = load_data(args.data, sizes, args.max_slices)
    meta["slices"] = len(data.records)
    print("  ".join(f"{k}={v}" for k, v in meta.items()))
    header = (
        f"{'model':<15}{'size':>5} {'variant':<14}{'params':>11}{'train/s':>9}{'infer/s':>9}"
        f"{'step ms':>9}{'wait ms':>9}{'data %':>8}{'peak MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for size in sizes:
        for name in models:
            # variants in turn, `--repeats` rounds: outside load then hits every variant alike
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for _ in range(args.repeats):
                for variant in variants:
                    cfg = RunConfig()
                    cfg.model.width = width
                    cfg.train.batch_size = batch
                    cfg.data.size = size
                    for k, v in variant_settings(variant).items():
                        setattr(cfg.train, k, v)
                    warmup = args.warmup if args.warmup is not None else (3 if cfg.train.compile else 1)
                    r = measure(name, size, cfg, data, device, steps, warmup)
                    r["settings"] = {k: getattr(cfg.train, k) for k in ("num_workers", "channels_last", "compile", "amp")}
                    runs[variant].append(r)
            for variant in variants:
                r = median_result(runs[variant])
                r["variant"] = variant
                results.append(r)
                print(
                    f"{name:<15}{size:>5} {variant:<14}{r['params']:>11,}{r['train_slices_per_s']:>9.2f}"
                    f"{r['infer_slices_per_s']:>9.1f}{r['step_ms']:>9.1f}{r['data_wait_ms']:>9.2f}"
                    f"{100 * r['data_share']:>7.2f}%{r['peak_mem_mib']:>10.0f}",
                    flush=True,
                )
    if hasattr(os, "getloadavg"):
        meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
        print(f"load average before {meta['load_before']}, after {meta['load_after']} ({os.cpu_count()} CPUs)")
    worst = max(results, key=lambda r: r["data_share"])
    print(f"largest data share: {100 * worst['data_share']:.2f}% ({worst['model']} {worst['size']} {worst['variant']})")
    if args.json:
        write_json_atomic(args.json, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
