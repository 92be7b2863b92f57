"""Model bundles shipped inside the package: weights plus a metadata.json that describes them.

A bundle is a folder `brainseg/bundles/<name>/` holding

- ``model.pt``: a brainseg checkpoint reduced to what inference needs (architecture and its
  arguments, preprocessing, the run's configuration with its eval section, the split id) with the
  weights stored in float16 when their predictions match float32 within `FP16_TOLERANCE`;
- ``metadata.json``: name, version, architecture, input contract (channels and their order, size,
  normalisation, what happens to grey or FLAIR-only input), eval settings, the training data
  (patients, dataset citation and licence), the cross-validated figures of its recipe, a check
  figure on named development patients (a test recomputes it), and the statement that it is a
  research tool, not a medical device — in the spirit of a MONAI bundle's metadata.

`brainseg predict` without `-c` uses `default_bundle()`; `brainseg models --bundles` lists them;
`make_bundle` (behind `brainseg bundle`) writes one from a trained run.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.fileio import read_json, write_json_atomic

BUNDLE_ROOT = Path(__file__).resolve().parent
METADATA = "metadata.json"
WEIGHTS = "model.pt"
DEFAULT_BUNDLE = "lgg_unet_cpu"
# fp16 weights are kept only when, on the check slices, no probability moves by more than this
# and the thresholded masks agree to this Dice (else the bundle keeps float32 weights).
FP16_TOLERANCE = {"max_abs_probability": 0.02, "mask_dice": 0.999}

DISCLAIMER = (
    "Research tool, not a medical device: not validated for clinical use; every segmentation must be "
    "reviewed by a qualified reader."
)
DATASET = {
    "name": "LGG MRI Segmentation (kaggle_3m)",
    "citation": "Buda M, Saha A, Mazurowski MA. Association of genomic subtypes of lower-grade gliomas with shape "
    "features automatically extracted by a deep learning algorithm. Computers in Biology and Medicine 109 "
    "(2019) 218-225. Images: The Cancer Imaging Archive (TCGA-LGG).",
    "licence": "CC BY-NC-SA 4.0 (non-commercial research use with attribution), as the dataset states",
}


def bundle_dirs(root: Path = BUNDLE_ROOT) -> list[Path]:
    """Every folder under `root` that holds a bundle (metadata.json and model.pt), by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / METADATA).is_file() and (p / WEIGHTS).is_file())


def list_bundles(root: Path = BUNDLE_ROOT) -> list[dict[str, Any]]:
    """The metadata of every bundle, each with its `path` (the weights file) added."""
    out = []
    for d in bundle_dirs(root):
        meta = read_json(d / METADATA)
        meta["path"] = str(d / WEIGHTS)
        out.append(meta)
    return out


def default_bundle(root: Path = BUNDLE_ROOT) -> Path | None:
    """The weights file of the default bundle, or None when the package ships none."""
    p = root / DEFAULT_BUNDLE / WEIGHTS
    return p if p.is_file() and (p.parent / METADATA).is_file() else None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = int(np.logical_and(a, b).sum()), int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def fp16_check(ckpt: dict[str, Any], images: np.ndarray | Sequence[np.ndarray], threshold: float = 0.5) -> dict[str, Any]:
    """Compare float32 predictions with those of the same weights rounded to float16.

    Args:
        ckpt: a loaded checkpoint (float32 weights).
        images: uint8 slices (N, H, W, C) to predict, or a list of such volumes (each in slice
            order: a 2.5-D model reads each slice's neighbours), predicted one by one.
        threshold: mask threshold.

    Returns:
        {"max_abs_probability", "mask_dice", "passed"} against `FP16_TOLERANCE`.
    """
    from brainseg.inference.predictor import Predictor

    half = dict(ckpt, state_dict=_half(ckpt["state_dict"]))
    volumes = [images] if isinstance(images, np.ndarray) else list(images)
    full, rounded = Predictor([ckpt], device="cpu"), Predictor([half], device="cpu")
    p32 = np.concatenate([full.predict(v) for v in volumes]) if volumes else np.zeros((0, 1, 1), np.float32)
    p16 = np.concatenate([rounded.predict(v) for v in volumes]) if volumes else np.zeros((0, 1, 1), np.float32)
    diff = float(np.abs(p32 - p16).max()) if p32.size else 0.0
    dice = _dice(p32 >= threshold, p16 >= threshold)
    passed = diff <= FP16_TOLERANCE["max_abs_probability"] and dice >= FP16_TOLERANCE["mask_dice"]
    return {"max_abs_probability": round(diff, 6), "mask_dice": round(dice, 6), "passed": bool(passed)}


def _half(state: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: (v.half() if torch.is_floating_point(v) else v) for k, v in state.items()}


def _portable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run configuration without the paths of the machine it was trained on."""
    data = dict(cfg.get("data", {}), root=None, split_file=None)
    return {**cfg, "data": data}


def inference_checkpoint(ckpt: dict[str, Any], *, fp16: bool) -> dict[str, Any]:
    """The parts of a training checkpoint that inference needs (no optimiser or RNG state)."""
    keep = ("model", "preprocessing", "config", "split", "params")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out["config"] = _portable(out["config"])
    out["state_dict"] = _half(ckpt["state_dict"]) if fp16 else dict(ckpt["state_dict"])
    return out


NORMALIZATION_RULES = {  # as brainseg.data.preprocess defines them (applied by brainseg itself)
    "unit": "x / 255 per uint8 pixel, values in [0, 1]",
    "zscore": "per slice and channel, (x − mean) / std over the brain pixels (where any channel is "
              "non-zero); the background stays 0",
    "rank": "per slice and channel, u = (pixels below + half the pixels equal) / all pixels of the slice, "
            "clipped to [0.5/n, 1 − 0.5/n], then the inverse standard normal CDF of u; a channel whose "
            "pixels are all equal becomes 0",
    "zscore_otsu": "per slice and channel, (x − mean) / max(std, 1) applied to every pixel, with mean and std over the "
                   "brain found by Otsu's threshold on log(max(brightest channel, 1)) (every pixel where no "
                   "threshold leaves ≥ 16 pixels above it)",
}


def input_contract(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """How inputs must look for a model with these preprocessing settings (see brainseg.data.preprocess)."""
    three = preprocessing["in_channels"] == 3
    return {
        "channels": preprocessing.get("channels"),
        "channel_order": "pre-contrast T1, FLAIR, post-contrast T1 (kaggle_3m order)" if three else "FLAIR",
        "native_size": "any; slices are resized to the model size and masks back to the input's size",
        "model_size": preprocessing["size"],
        "normalization": preprocessing["normalization"],
        "normalization_rule": NORMALIZATION_RULES.get(preprocessing["normalization"], ""),
        "grey_input": (
            "a 1-channel image is refused unless `--channels replicate` copies it into all three channels"
            if three
            else "a 3-channel slice gives its FLAIR channel"
        ),
        "flair_only_input": (
            "a 3-channel slice whose pre- and/or post-contrast channel holds a copy of FLAIR (as kaggle_3m "
            "does for missing sequences) is valid input; the recipe trains on such copies (sequence dropout)"
            if three
            else "FLAIR is the model's only input"
        ),
        "context": (
            f"2.5-D: each slice is read with its {preprocessing['context']} neighbouring slice(s) on each side, "
            "so whole volumes in slice order are needed" if preprocessing.get("context") else "none: each slice alone"
        ),
    } | ({"sequence_flags": (
        "two constant input planes after the image channels say whether pre-contrast / post-contrast is an "
        "exact copy of FLAIR (a missing sequence); they are computed from the slice itself"
    )} if preprocessing.get("sequence_flags") else {})


def make_bundle(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    check_patients: Sequence[str | Path],
    cross_validation: dict[str, Any] | None,
    training_patients: Sequence[str],
    description: str = "",
    eval_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `out_dir/model.pt` and `out_dir/metadata.json` from a trained checkpoint.

    Args:
        checkpoint: a run folder or checkpoint file.
        out_dir: the bundle folder (created).
        name, version: the bundle's name and version.
        check_patients: kaggle_3m patient folders: fp16 weights are compared with fp32 on their
            slices, and the per-patient Dice of `brainseg predict` on them is recorded so that a
            test can recompute it (a model that silently changed fails it).
        cross_validation: the recipe's cross-validated figures (or None when not yet measured).
        training_patients: the patients the weights were trained on.
        description: one paragraph for people.
        eval_overrides: evaluation settings the bundle predicts with instead of the run's own (e.g.
            post-processing chosen by cross-validation after training); recorded in its config.

    Returns:
        The metadata written.
    """
    from brainseg import __version__
    from brainseg.inference.inputs import discover_inputs
    from brainseg.inference.readers import read_case
    from brainseg.training.checkpoint import load_checkpoint, save_checkpoint

    dirs = [Path(p) for p in check_patients]
    for d in dirs or [Path("(none given)")]:  # the check figure needs slices and their masks
        if not (d.is_dir() and any(d.glob("*_mask.tif"))
                and any(not f.name.endswith("_mask.tif") for f in d.glob("*.tif"))):
            raise BrainsegError(f"check patient {d}: not a kaggle_3m patient folder (slice .tif files with "
                                "their _mask.tif)")
    ckpt = load_checkpoint(checkpoint)
    if eval_overrides:
        ckpt["config"] = {**ckpt["config"], "eval": {**ckpt["config"].get("eval", {}), **eval_overrides}}
    # one volume per check patient, read as `predict` reads a patient folder: in slice order (not
    # the name order _1, _10, _2: a 2.5-D model reads each slice's neighbours)
    volumes = [read_case(discover_inputs(d).cases[0]).images for d in dirs]
    fp16 = fp16_check(ckpt, volumes, float(ckpt["config"]["eval"]["threshold"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / WEIGHTS, inference_checkpoint(ckpt, fp16=fp16["passed"]))
    dice = check_dice(out / WEIGHTS, dirs)
    cfg = ckpt["config"]
    meta = {
        "name": name,
        "version": version,
        "description": description,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "brainseg_version": __version__,
        "architecture": {"name": ckpt["model"]["name"], "arguments": ckpt["model"], "params": ckpt.get("params")},
        "weights": {"file": WEIGHTS, "dtype": "float16" if fp16["passed"] else "float32",
                    "fp16_check": {**fp16, "tolerance": FP16_TOLERANCE, "slices": sum(len(v) for v in volumes)}},
        "input": input_contract(ckpt["preprocessing"]),
        "preprocessing": ckpt["preprocessing"],
        "eval": cfg["eval"],
        "training": {"config": _portable(cfg), "patients": sorted(training_patients), "n_patients": len(training_patients)},
        "dataset": DATASET,
        "cross_validation": cross_validation,
        "check": {
            "how": "brainseg predict on these development patients (seen in training: a regression check, not an "
                   "accuracy figure); per-patient Dice of the written masks against the patients' own masks",
            "per_patient_dice": {k: round(v, 6) for k, v in dice.items()},
        },
        "intended_use": DISCLAIMER,
    }
    write_json_atomic(out / METADATA, meta)
    return meta


def check_dice(weights: str | Path, patient_dirs: Sequence[str | Path]) -> dict[str, float]:
    """Per-patient Dice of what `brainseg predict` writes for these kaggle_3m patient folders.

    Runs the whole prediction path (reading, the weights' own TTA and post-processing, writing
    masks) into a temporary folder and scores the written masks against the folders' own
    `_mask.tif` files, counts summed over each patient's slices (a patient with neither truth nor
    prediction scores 1).
    """
    import tempfile

    from brainseg.data.lgg import read_mask
    from brainseg.inference.pipeline import predict_path

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="brainseg-bundle-check-") as tmp:
        for d in map(Path, patient_dirs):
            dest = Path(tmp) / d.name
            predict_path(str(d), str(dest), [str(weights)], device="cpu", overlays="none", progress=False)
            inter = total = 0
            for truth_file in sorted(d.glob("*_mask.tif")):
                truth = read_mask(truth_file) > 0
                pred = read_mask(dest / d.name / truth_file.name) > 0
                inter += int(np.logical_and(truth, pred).sum())
                total += int(truth.sum() + pred.sum())
            out[d.name] = 1.0 if total == 0 else 2.0 * inter / total
    return out


def describe(meta: dict[str, Any]) -> str:
    """One line for people: name, version, architecture and the headline figure."""
    cv = meta.get("cross_validation") or {}
    fig = f", CV per-patient Dice {cv['dice_per_patient_mean']:.3f}" if "dice_per_patient_mean" in cv else ""
    arch = meta.get("architecture", {})
    return f"{meta.get('name')} {meta.get('version')} ({arch.get('name')}, {arch.get('params') or '?'} parameters{fig})"


def require_default() -> Path:
    """The default bundle's weights, or an error that says how to pass a model."""
    p = default_bundle()
    if p is None:
        raise BrainsegError(
            "no model given and this brainseg ships no bundled model: pass -c RUNDIR or -c CHECKPOINT "
            "(train one with `brainseg train`)"
        )
    return p
