"""CPU speed of the five architectures, and of MONAI's U-Net and Attention U-Net at the same size.

For every model and slice size: forward ms/slice (eval mode, no_grad) and train-step ms/slice
(forward + backward + AdamW step, BCE-with-logits loss), full (default) width, 3 input channels,
1 output channel, batch 16 (the default batch of `train` and `predict`; per-slice costs change
with the batch, so compare figures taken at one batch size). In the same run, MONAI's own
networks at a matched parameter budget:

* `monai.networks.nets.BasicUNet` against our `unet`: the same U-Net layout (2×2 max-pool, two
  3×3 conv + norm + ReLU per level, transposed-conv upsampling, concatenated skips), configured
  with batch norm and in-place ReLU like ours;
* `monai.networks.nets.AttentionUnet` against our `attention_unet`, as MONAI defines it;

each with the base width whose parameter count is closest to ours (both counts are printed).
The ratio ours/MONAI is printed for both figures: below 1 means ours is faster. MONAI's networks
run as MONAI builds them (NCHW); `--monai-channels-last` runs them channels-last too (input and
weights), the layout ours use on a CPU, for the comparison at each side's best.

Measuring on a shared CPU: ours and its MONAI counterpart are timed in alternation, one
iteration each, the order swapped every repeat, so that load from other processes hits both
alike; the ratio is the median of the per-repeat ratios of these adjacent pairs, which is far
steadier than the ratio of two medians taken minutes apart. The load average is printed before
and after the run: absolute figures from a busy machine are slow and noisy, ratios much less so.

    python benchmarks/models_speed.py --quick     # 128×128, batch 2, 2 repeats (< 1 min idle)
    python benchmarks/models_speed.py             # 128 and 256, batch 16, 3 repeats (~15 min idle)
    python benchmarks/models_speed.py --sizes 256 --models unet monai_basicunet --repeats 9
    python benchmarks/models_speed.py --quick --threads 1 --clock cpu   # steadiest on a busy CPU
    python benchmarks/models_speed.py --layouts --threads 1 --clock cpu  # NCHW vs channels-last

Our models run on a CPU in the memory layout their class sets (`cpu_channels_last`, see
`brainseg.models.base`); `--layouts` is the measurement behind that choice: every model (MONAI's
too, its input and weights converted) timed in both layouts in alternation, with the ratio
channels-last/NCHW (< 1: channels-last faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.fileio import write_json_atomic
from brainseg.models import count_flops, count_parameters, create_model, get_model_class, list_models

# MONAI network → our counterpart; timed in alternation with it.
MONAI_MODELS = {"monai_basicunet": "unet", "monai_attentionunet": "attention_unet"}


def build_monai(name: str, base: int, in_channels: int = 3) -> nn.Module:
    """MONAI's network `name` with base width `base` (level i has base·2^i features)."""
    from monai.networks.nets import AttentionUnet, BasicUNet

    c = base
    if name == "monai_basicunet":
        return BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            features=(c, 2 * c, 4 * c, 8 * c, 16 * c, c),
            act=("relu", {"inplace": True}),
            norm=("batch", {}),
            upsample="deconv",
        )
    if name == "monai_attentionunet":
        return AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            channels=(c, 2 * c, 4 * c, 8 * c, 16 * c),
            strides=(2, 2, 2, 2),
        )
    raise ValueError(f"unknown MONAI model {name!r}; known: {', '.join(MONAI_MODELS)}")


def matched_base(name: str) -> int:
    """The base width of MONAI's `name` whose parameter count is closest to our counterpart's.

    Counts grow with the width, so the search stops at the first width past the target; models
    are counted on the meta device (no memory).
    """
    with torch.device("meta"):
        target_params = count_parameters(create_model(MONAI_MODELS[name]))
    best, best_gap = 4, None
    for base in range(4, 257):
        with torch.device("meta"):
            n = count_parameters(build_monai(name, base))
        gap = abs(n - target_params)
        if best_gap is None or gap < best_gap:
            best, best_gap = base, gap
        if n > target_params:
            break
    return best


class Runner:
    """Forward and train-step closures for one model on one fixed batch."""

    def __init__(self, model: nn.Module, batch: int, size: int, in_channels: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.model = model
        self.x = torch.randn(batch, in_channels, size, size, generator=g)
        self.y = (torch.rand(batch, 1, size, size, generator=g) > 0.8).float()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(self.x)

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        if isinstance(out, dict):  # PSPNet with aux=True (not the default)
            out = out["out"]
        F.binary_cross_entropy_with_logits(out, self.y).backward()
        self.opt.step()


class _ChannelsLast(nn.Module):
    """Run a (MONAI) model with channels-last input and weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _build(name: str, base: int | None, channels_last: bool) -> nn.Module:
    """Ours (layout forced either way) or MONAI's (wrapped for channels-last), seeded alike."""
    torch.manual_seed(0)
    if name in MONAI_MODELS:
        model = build_monai(name, base)  # type: ignore[arg-type]
        return _ChannelsLast(model) if channels_last else model
    return create_model(name).set_cpu_layout(channels_last)  # overrides the class's choice


def layouts(args: argparse.Namespace, sizes: list[int], batch: int, repeats: int) -> list[dict]:
    """Every model in NCHW and in channels-last, timed in alternation; ratios channels-last/NCHW."""
    header = (f"{'size':>5}  {'model':<20} {'default':<13} {'fwd NCHW':>9} {'fwd CL':>8} {'ratio':>6}  "
              f"{'train NCHW':>10} {'train CL':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for size in sizes:
        for name in args.models:
            base = matched_base(name) if name in MONAI_MODELS else None
            ours_cl = name not in MONAI_MODELS and get_model_class(name).cpu_channels_last
            default = "channels-last" if ours_cl else "NCHW"
            runners = {cl: Runner(_build(name, base, cl), batch, size) for cl in (False, True)}
            fwd = measure(runners, "forward", args.warmup, repeats, args.clock)
            train = measure(runners, "train_step", args.warmup, repeats, args.clock)
            ms = {k: {c: 1000 * statistics.median(v[c]) / batch for c in (False, True)} for k, v in
                  (("fwd", fwd), ("train", train))}
            row = {"size": size, "model": name, "default_layout": default,
                   "forward_ms_nchw": ms["fwd"][False], "forward_ms_channels_last": ms["fwd"][True],
                   "ratio_forward": paired_ratio(fwd[True], fwd[False]),
                   "train_ms_nchw": ms["train"][False], "train_ms_channels_last": ms["train"][True],
                   "ratio_train_step": paired_ratio(train[True], train[False])}
            rows.append(row)
            print(f"{size:>5}  {name:<20} {default:<13} {ms['fwd'][False]:>9.1f} {ms['fwd'][True]:>8.1f} "
                  f"{row['ratio_forward']:>6.2f}  {ms['train'][False]:>10.1f} {ms['train'][True]:>9.1f} "
                  f"{row['ratio_train_step']:>6.2f}", flush=True)
            del runners
    return rows


def against_monai(args: argparse.Namespace, sizes: list[int], batch: int, repeats: int) -> list[dict]:
    """Every model (ours next to its MONAI counterpart, timed in alternation) at every size."""
    header = (
        f"{'size':>5}  {'model':<20} {'config':<11} {'params':>11}  {'GFLOP':>6}  {'forward':>8}  "
        f"{'train step':>10}  {'fwd GFLOP/s':>11}  {'ratio fwd':>9}  {'ratio train':>11}"
    )
    print(header)
    print("-" * len(header))
    results: list[dict] = []
    for size in sizes:
        for group in _groups(args.models):
            torch.manual_seed(0)
            models: dict[str, nn.Module] = {}
            config: dict[str, str] = {}
            flops: dict[str, int] = {}
            for name in group:
                if name in MONAI_MODELS:
                    base = matched_base(name)
                    models[name] = build_monai(name, base)
                    config[name] = f"base {base}"
                    if args.monai_channels_last:
                        models[name] = _ChannelsLast(models[name])
                        config[name] += " CL"
                    flops[name] = forward_flops(name, size, base)
                else:
                    models[name] = create_model(name)
                    config[name] = f"width {models[name].config['width']}"
                    config[name] += " CL" if models[name].cpu_channels_last else ""  # its CPU layout
                    flops[name] = forward_flops(name, size)
            runners = {k: Runner(m, batch, size) for k, m in models.items()}
            fwd = measure(runners, "forward", args.warmup, repeats, args.clock)
            train = measure(runners, "train_step", args.warmup, repeats, args.clock)
            for name in group:
                row = {
                    "size": size,
                    "model": name,
                    "config": config[name],
                    "params": count_parameters(models[name]),
                    "forward_gflop_per_slice": flops[name] / 1e9,
                    "batch": batch,
                    "forward_ms_per_slice": 1000 * statistics.median(fwd[name]) / batch,
                    "train_step_ms_per_slice": 1000 * statistics.median(train[name]) / batch,
                }
                # Achieved forward throughput: shows whether a slower model is less efficient or
                # simply has more arithmetic to do.
                row["forward_gflop_per_s"] = row["forward_gflop_per_slice"] / (row["forward_ms_per_slice"] / 1000)
                ratios = ""
                for monai_name, ours in MONAI_MODELS.items():
                    if ours == name and monai_name in models:
                        row["vs"] = monai_name
                        row["ratio_forward"] = paired_ratio(fwd[name], fwd[monai_name])
                        row["ratio_train_step"] = paired_ratio(train[name], train[monai_name])
                        ratios = f"  {row['ratio_forward']:>9.2f}  {row['ratio_train_step']:>11.2f}"
                results.append(row)
                print(
                    f"{size:>5}  {name:<20} {row['config']:<11} {row['params']:>11,}  "
                    f"{row['forward_gflop_per_slice']:>6.2f}  {row['forward_ms_per_slice']:>8.1f}  "
                    f"{row['train_step_ms_per_slice']:>10.1f}  {row['forward_gflop_per_s']:>11.1f}{ratios}",
                    flush=True,
                )
            del runners, models
    return results


def _seconds(fn: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(
    runners: dict[str, Runner], mode: str, warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Seconds per batch of every runner for `repeats` rounds, one call each per round.

    `clock` "wall" is elapsed time; "cpu" is this process's CPU time, which leaves out the time
    spent waiting for a core that another process holds (with ``--threads 1`` it is the compute
    cost of one iteration, the steadiest figure on a busy machine).

    The order inside a round is reversed every other round (A B, B A, …) so that neither model
    always runs right after the other's cache footprint or in the same phase of outside load.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            getattr(runners[name], mode)()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_seconds(getattr(runners[name], mode), CLOCKS[clock]))
    return times


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median of the per-round ratios ours/theirs (each pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def forward_flops(name: str, size: int, base: int | None = None) -> int:
    """Forward FLOPs of one size×size slice (our counter: a multiply-add is 2), on the meta device."""
    with torch.device("meta"):
        model = build_monai(name, base) if name in MONAI_MODELS else create_model(name)
        return count_flops(model, size)


def _groups(models: list[str]) -> list[list[str]]:
    """Ours with its MONAI counterpart in one group (timed together), other models alone."""
    groups = []
    for name in (m for m in models if m not in MONAI_MODELS):
        groups.append([name] + [m for m, ours in MONAI_MODELS.items() if ours == name and m in models])
    groups += [[m] for m, ours in MONAI_MODELS.items() if m in models and ours not in models]
    return groups


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    known = list_models() + list(MONAI_MODELS)
    parser.add_argument("--quick", action="store_true", help="128×128 only, batch 2, 2 repeats (< 1 min idle)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="slice sizes (default 128 256)")
    parser.add_argument("--models", nargs="+", default=known, choices=known, help="default: all")
    parser.add_argument("--batch", type=int, default=None, help="slices per batch (default 16; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time (use with --threads 1 on a busy machine)",
    )
    parser.add_argument("--monai-channels-last", action="store_true",
                        help="run MONAI's networks channels-last too (default: as MONAI builds them, NCHW)")
    parser.add_argument("--layouts", action="store_true",
                        help="time every model in NCHW and channels-last layout instead (see the docstring)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([128] if args.quick else [128, 256])
    batch = args.batch or (2 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    start, cpu_start, load_before = time.perf_counter(), time.process_time(), _load()
    print(
        f"{_cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; batch {batch}, median of {repeats} after {args.warmup} warm-up; {args.clock}-clock "
        f"ms per slice\n"
        f"load average (1/5/15 min) at start: {load_before}. Ours and MONAI's are timed in "
        f"alternation; ratio = median of back-to-back pairs, ours/MONAI (< 1: ours faster)."
    )
    results = (layouts if args.layouts else against_monai)(args, sizes, batch, repeats)

    compared = [r for r in results if "vs" in r]
    if compared:
        print()
        for r in compared:
            other = next(x for x in results if x["model"] == r["vs"] and x["size"] == r["size"])
            worst = max(r["ratio_forward"], r["ratio_train_step"])
            verdict = "ours at least as fast" if worst <= 1.0 else "OURS SLOWER"
            print(
                f"{r['size']}×{r['size']}: {r['model']} vs {r['vs']} ({r['params']:,} vs {other['params']:,} "
                f"params, ×{r['forward_gflop_per_slice'] / other['forward_gflop_per_slice']:.2f} the forward "
                f"FLOPs): time forward ×{r['ratio_forward']:.2f}, train step ×{r['ratio_train_step']:.2f}"
                f" → {verdict}"
            )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"\n{elapsed:.0f} s elapsed, {cpu:.0f} s of CPU time; load average at end: {_load()} "
        f"(on a shared CPU see the module docstring)"
    )
    if args.json:
        meta = {
            "cpu": _cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "batch": batch,
            "repeats": repeats,
            "warmup": args.warmup,
            "load_before": load_before,
            "load_after": _load(),
            "clock": args.clock,
            "seconds": elapsed,
            "cpu_seconds": cpu,
        }
        write_json_atomic(args.json, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
