"""CPU inference speed of `brainseg predict`: ms per slice with and without TTA, PyTorch and ONNX Runtime.

Two figures per model (freshly initialised weights: speed does not depend on them), full width
unless `--width` (16: the CPU recipe's and the shipped bundle's), 3 input channels:

- *predictor*: `Predictor.predict` on native 256×256 uint8 slices: preprocessing (resize to the
  model size, normalise), forward passes in batches, sigmoid, resize back to 256×256. With TTA it
  runs three views (identity, horizontal and vertical flip), so expect about 3× the time.
- *ONNX* (when onnxruntime is installed): the same Predictor, no TTA, with ONNX Runtime's forward
  pass (`--engine onnx`; the export and its check run first, untimed).
- *pipeline* (UNet only): `predict_path` on one phantom patient folder at 256×256: reading the
  TIFs, the predictor, post-processing, writing the masks, the overlays and volumes.csv.

Timings are medians over `--repeats` runs after one untimed warm-up. On a machine shared with other
work they are noisy: compare TTA/no-TTA ratios rather than absolute numbers.

    python benchmarks/predict_speed.py --quick          # UNet only, 4 slices (< 1 min)
    python benchmarks/predict_speed.py --models unet --width 16 --slices 35   # the shipped model's size
    python benchmarks/predict_speed.py                  # the five models (a few minutes)
    python benchmarks/predict_speed.py --json predict_speed.json
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.data.preprocess import preprocessing_dict
from brainseg.fileio import write_json_atomic
from brainseg.inference.predictor import Predictor
from brainseg.models import count_parameters, create_model, list_models


def in_memory_checkpoint(name: str, size: int, width: int | None = None) -> dict[str, Any]:
    """What a checkpoint carries for inference, for a freshly initialised model (full width by default)."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, out_channels=1, width=width)
    return {
        "path": f"<{name}, random weights>",
        "model": dict(model.config),
        "state_dict": model.state_dict(),
        "preprocessing": preprocessing_dict(size, 3, "unit"),
        "config": {},
        "params": count_parameters(model),
    }


def median_ms_per_slice(fn, n_slices: int, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / n_slices


def main(argv: list[str] | None = None) -> int:
    known = list_models()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="UNet only, 4 slices, 1 repeat (< 1 min)")
    p.add_argument("--models", nargs="+", choices=known, help="models to time (default: all five)")
    p.add_argument("--size", type=int, default=128, help="model input size (default 128, the training default)")
    p.add_argument("--slices", type=int, default=8, help="native 256×256 slices per timed run (default 8)")
    p.add_argument("--width", type=int, default=None,
                   help="base width of every model (default: each architecture's full width; 16: the CPU recipe)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per figure (median; default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime engine's figure")
    p.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end predict_path figure")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or ["unet"]
        args.slices, args.repeats = min(args.slices, 4), 1
    models = args.models or known
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.slices, 256, 256, 3), dtype=np.uint8)
    print(f"CPU inference, {args.slices} native 256×256 slices per run, model size {args.size}, "
          f"width {args.width or 'full'}, batch "
          f"{args.batch_size}, {torch.get_num_threads()} torch threads, median of {args.repeats}")
    from brainseg.engine import apply_engine, onnx_available

    use_onnx = onnx_available() and not args.no_onnx
    header = (f"{'model':<16}{'params':>12}{'ms/slice':>12}{'TTA ms/slice':>15}{'TTA/plain':>11}"
              + (f"{'ONNX ms/slice':>15}{'ONNX/torch':>12}" if use_onnx else ""))
    print(header)
    print("-" * len(header))
    results: dict[str, Any] = {"size": args.size, "width": args.width, "slices": args.slices, "batch_size": args.batch_size,
                               "threads": torch.get_num_threads(), "repeats": args.repeats, "models": {}}
    for name in models:
        ckpt = in_memory_checkpoint(name, args.size, args.width)
        row = {"params": ckpt["params"]}
        for tta in (False, True):
            pred = Predictor([ckpt], device="cpu", tta=tta, batch_size=args.batch_size)
            row["tta_ms_per_slice" if tta else "ms_per_slice"] = median_ms_per_slice(
                lambda pred=pred: pred.predict(images), args.slices, args.repeats)
        row["tta_ratio"] = row["tta_ms_per_slice"] / row["ms_per_slice"]
        line = (f"{name:<16}{row['params']:>12,}{row['ms_per_slice']:>12.1f}{row['tta_ms_per_slice']:>15.1f}"
                f"{row['tta_ratio']:>11.2f}")
        if use_onnx:  # the same Predictor with ONNX Runtime's forward (export, untimed, is done first)
            pred = Predictor([ckpt], device="cpu", batch_size=args.batch_size)
            apply_engine(pred, "onnx")
            row["onnx_ms_per_slice"] = median_ms_per_slice(lambda pred=pred: pred.predict(images), args.slices,
                                                           args.repeats)
            row["onnx_ratio"] = row["onnx_ms_per_slice"] / row["ms_per_slice"]
            line += f"{row['onnx_ms_per_slice']:>15.1f}{row['onnx_ratio']:>12.2f}"
        results["models"][name] = row
        print(line)
        sys.stdout.flush()

    if not args.no_pipeline:
        from brainseg.data.phantom import write_phantoms
        from brainseg.inference import predict_path

        ckpt = in_memory_checkpoint("unet", args.size, args.width)
        with tempfile.TemporaryDirectory(prefix="brainseg_predict_speed_") as tmp:
            root = write_phantoms(Path(tmp) / "data", patients=1, seed=0, slices=(args.slices, args.slices), size=256)
            patient = next(p for p in root.iterdir() if p.is_dir())
            pipe = {}
            runs = itertools.count()  # a fresh output folder per run
            for tta in (False, True):
                pipe["tta_ms_per_slice" if tta else "ms_per_slice"] = median_ms_per_slice(
                    lambda tta=tta: predict_path(patient, Path(tmp) / f"out{next(runs)}", [ckpt], device="cpu",
                                                 tta=tta, batch_size=args.batch_size, overlays="all",
                                                 progress=False),
                    args.slices, args.repeats)
        results["pipeline_unet"] = pipe
        print(f"\npipeline (read TIFs, UNet, post-process, write masks + overlays + volumes.csv), one patient "
              f"of {args.slices} slices: {pipe['ms_per_slice']:.1f} ms/slice, with TTA {pipe['tta_ms_per_slice']:.1f}")
    if args.json:
        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
