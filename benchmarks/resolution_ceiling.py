"""How much Dice the model input size alone costs: a perfect prediction at `size`, scored at native size.

A model trained at 128×128 predicts probabilities at 128×128; evaluation (`brainseg evaluate`)
resizes them back to each slice's native size (`resize_probability`, bilinear), thresholds them
and scores them against the native masks. This benchmark feeds that path the best any model
could give it — the ground truth itself at the model's size — and prints the per-patient Dice it
reaches, for three versions of "the truth at model size":

- ``nearest``: the training target (`resize_mask`, nearest neighbour), as 0/1 probabilities;
- ``area``: the mask resized like the images (`brainseg.data.dataset.soft_mask`, the
  ``data.mask_targets=soft`` training target), as the fraction of each model pixel that is tumour;
- ``area ≥ 0.5``: that fraction thresholded at one half (a binary target centred like the image).

Per-patient Dice is computed over each patient's slices with `brainseg evaluate`'s counts
(`confusion_counts`, `metrics_from_counts`; patients without tumour are left out: their Dice is 1
for an empty prediction). No model is involved.

    python benchmarks/resolution_ceiling.py --data ../shared/data/lgg/kaggle_3m --sizes 128,160,192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m", help="dataset folder (kaggle_3m layout)")
    ap.add_argument("--sizes", default="128,160,192,256", help="model input sizes, comma-separated")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"resolution_ceiling: no dataset at {args.data}: skipped (give --data)", file=sys.stderr)
        return 0

    from brainseg.data.dataset import soft_mask
    from brainseg.data.index_cache import index_dataset_cached
    from brainseg.data.preprocess import resize_mask, resize_probability
    from brainseg.evaluation.evaluate import load_patient
    from brainseg.metrics.confusion import confusion_counts, metrics_from_counts

    sizes = [int(s) for s in args.sizes.split(",")]
    index = index_dataset_cached(args.data)
    by = index.by_patient()
    kinds = ("nearest", "area", "area ≥ 0.5")
    dice: dict[tuple[int, str], list[float]] = {(s, k): [] for s in sizes for k in kinds}
    for patient in sorted(by):
        _, masks = load_patient(by[patient])
        truth = masks > 0
        if not truth.any():
            continue
        for size in sizes:
            near = np.stack([resize_mask(m, size) for m in masks]).astype(np.float32)
            frac = np.stack([soft_mask(m, size) for m in masks]).astype(np.float32) / 255.0
            for kind, prob in (("nearest", near), ("area", frac), ("area ≥ 0.5", (frac >= 0.5).astype(np.float32))):
                pred = resize_probability(prob, truth.shape[1:]) >= 0.5
                counts = confusion_counts(pred, truth).sum(axis=0)  # the patient's volume
                dice[size, kind].append(float(metrics_from_counts(counts)["dice"]))
    n = len(dice[sizes[0], "nearest"])
    print(f"perfect predictions at model size, scored at native size ({n} patients with tumour):")
    print("| size | truth at model size | per-patient Dice mean | min |")
    print("|---|---|---|---|")
    for size in sizes:
        for kind in kinds:
            v = np.asarray(dice[size, kind])
            print(f"| {size} | {kind} | {v.mean():.4f} | {v.min():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
