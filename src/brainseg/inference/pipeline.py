"""`predict_path`: segment new scans with one checkpoint or an ensemble and write the results.

Output folder layout (nothing is ever written among the input's own slices):

- a slice ``X.tif`` / ``X.png`` → ``OUT/X_mask.tif`` / ``OUT/X_mask.png``;
- a patient folder ``P`` (alone or in a dataset root) → ``OUT/P/P_<n>_mask.tif``, the
  kaggle_3m naming, so OUT can be laid beside the images as a labelled copy;
- a NIfTI ``X.nii.gz`` → ``OUT/X_mask.nii.gz`` with the input's affine and header, in its own orientation;
- a DICOM study ``S`` (folder or file) → ``OUT/S_mask.nii.gz`` with the series' geometry as affine,
  and ``OUT/S_seg.dcm``, a DICOM SEG over the FLAIR series (`brainseg.inference.dicom_seg`);
- ``OUT/overlays/…_overlay.png``: the FLAIR channel with the predicted tumour in magenta;
- ``OUT/volumes.csv``: one row per slice (``level=slice``: tumour area in pixels and mm², highest
  and mean tumour probability, detection) and one per case (``level=volume``: tumour volume in
  pixels, mm³ and mL where the voxel size is known, detection);
- ``OUT/predict.json``: checkpoints, settings, status (``running``, ``complete``, ``failed``).

Cases are done one at a time and volumes.csv is rewritten (atomically) after each. A case that
cannot be read or used never stops the others: it is listed (case, file, reason) under ``failed``
in predict.json and announced, and every other case is written (an input of a single case raises
its error instead). A non-empty output folder is refused unless ``overwrite``, which first clears
what an earlier prediction wrote there (`brainseg.inference.writers.clear_previous_outputs`).
Probabilities become masks through `brainseg.inference.postprocess.binarize`, the function
evaluation uses too (threshold, largest 3-D component per case, minimum lesion size); a slice counts as a detection when its predicted area reaches ``min_area`` pixels, a case when
any of its slices does (`brainseg.metrics.detection`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainseg import __version__
from brainseg.config import EvalConfig
from brainseg.errors import BrainsegError, CheckpointError
from brainseg.fileio import ensure_writable_folder, write_csv_atomic, write_json_atomic
from brainseg.inference.inputs import VOLUME_KINDS, Case, InputSet, discover_inputs
from brainseg.inference.readers import INTENSITY_RULE, CaseData, read_case
from brainseg.inference.writers import check_output_folder, clear_previous_outputs

VOLUME_COLUMNS = (
    "level", "case", "slice", "input", "mask", "height", "width", "area_px", "area_mm2", "prob_max",
    "prob_mean", "detected", "n_slices", "n_detected_slices", "volume_px", "volume_mm3", "volume_ml",
)
OVERLAY_CHOICES = ("tumour", "all", "none")


def case_rows(
    case: Case,
    labels: Sequence[int],
    mask_names: Sequence[str],
    volume_mask: str,
    pred: np.ndarray,
    probs: np.ndarray,
    spacing: tuple[float, float, float] | None,
    min_area: int,
) -> list[dict[str, Any]]:
    """The volumes.csv rows of one case: one per slice, then its totals (pure)."""
    n, h, w = pred.shape
    areas = pred.reshape(n, -1).sum(axis=1)
    pixel_mm2 = spacing[0] * spacing[1] if spacing else None
    detected = areas >= max(min_area, 1)
    rows: list[dict[str, Any]] = []
    for k in range(n):
        inside = probs[k][pred[k]]
        rows.append({
            "level": "slice",
            "case": case.name,
            "slice": labels[k],
            "input": str(case.images[k] if case.images else case.source),
            "mask": mask_names[k],
            "height": h,
            "width": w,
            "area_px": int(areas[k]),
            "area_mm2": float(areas[k] * pixel_mm2) if pixel_mm2 is not None else None,
            "prob_max": float(probs[k].max()),
            "prob_mean": float(inside.mean()) if inside.size else None,
            "detected": int(detected[k]),
        })
    total = int(areas.sum())
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2] if spacing else None
    rows.append({
        "level": "volume",
        "case": case.name,
        "input": str(case.source),
        "mask": volume_mask,
        "height": h,
        "width": w,
        "prob_max": float(probs.max()) if n else None,
        "detected": int(detected.any()),
        "n_slices": n,
        "n_detected_slices": int(detected.sum()),
        "volume_px": total,
        "volume_mm3": float(total * voxel_mm3) if voxel_mm3 is not None else None,
        "volume_ml": float(total * voxel_mm3 / 1000.0) if voxel_mm3 is not None else None,
    })
    return rows


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"


@dataclass
class CasePlan:
    """Where one case's files go: masks (one per slice, or one NIfTI), overlays (one per slice)."""

    masks: list[Path]
    overlays: list[Path]
    volume_mask: Path


def plan_case(out: Path, case: Case, n_slices: int | None = None) -> CasePlan:
    """Output paths of a case (see the module docstring); NIfTI overlays need `n_slices`."""
    if case.kind in VOLUME_KINDS:  # DICOM masks are NIfTI too, with the series' geometry
        mask = out / f"{case.name}_mask{_nifti_suffix(case.source) if case.kind == 'nifti' else '.nii.gz'}"
        ov = [out / "overlays" / case.name / f"{case.name}_z{k:03d}_overlay.png" for k in range(n_slices or 0)]
        return CasePlan([mask], ov, mask)
    folder = out if case.kind == "slice" else out / case.source.name
    ov_folder = out / "overlays" if case.kind == "slice" else out / "overlays" / case.source.name
    masks = [folder / f"{p.stem}_mask{p.suffix}" for p in case.images]
    overlays = [ov_folder / f"{p.stem}_overlay.png" for p in case.images]
    return CasePlan(masks, overlays, masks[0] if case.kind == "slice" else folder)


def check_outputs(inputs: InputSet, out: Path) -> None:
    """Refuse an output folder that would write among the input's slices or over an input file.

    Folder inputs: no output may land in a folder that holds input slices (predicted masks would
    mix with the images and any ground truth). Single files: no output may replace an existing
    file beside the input (e.g. its ground-truth ``X_mask.tif``).
    """
    input_files = {p.resolve() for c in inputs.cases for p in (c.images or (c.source,))}
    input_dirs = {p.parent for p in input_files}
    single_file = inputs.root.is_file()
    planned: list[Path] = [out / "volumes.csv", out / "predict.json"]
    for case in inputs.cases:
        plan = plan_case(out, case, 1)
        planned += plan.masks + plan.overlays
    for path in planned:
        r = path.resolve()
        if r in input_files or (r.parent in input_dirs and (not single_file or r.exists())):
            raise BrainsegError(
                f"--out {out} would write {path} among the input's own files in {r.parent}; "
                "choose an output folder outside the input"
            )


def case_failure(case: Case, exc: BaseException) -> dict[str, str]:
    """predict.json's record of a case that failed: the case, the file at fault and why."""
    if isinstance(exc, OSError) and not isinstance(exc, BrainsegError):
        where = exc.filename or case.source
        message = f"{where}: {exc.strerror or exc}"
    else:
        message = str(exc)
    file = next((str(p) for p in case.images if str(p) in message), str(case.source))
    return {"case": case.name, "input": str(case.source), "file": file, "error": message}


def resolve_postprocessing(ckpt: dict[str, Any], overrides: dict[str, Any]) -> EvalConfig:
    """The eval settings of the run that wrote `ckpt`, with the given (non-None) overrides."""
    from brainseg.inference.postprocess import check_postprocessing
    from brainseg.inference.predictor import checkpoint_config

    ev = checkpoint_config(ckpt).eval
    return check_postprocessing(replace(ev, **{k: v for k, v in overrides.items() if v is not None}))


def _write_case(
    out: Path, case: Case, data: CaseData, plan: CasePlan, pred: np.ndarray, overlays: str
) -> int:
    """Write a case's masks and overlays; returns the number of files written."""
    from brainseg.inference.writers import write_mask_slice, write_nifti_mask, write_overlay

    written = 0
    if case.kind in VOLUME_KINDS:
        write_nifti_mask(plan.masks[0], pred, data.nifti, data.orientation)
        written += 1
        if case.kind == "dicom":
            from brainseg.inference.dicom_seg import write_case_seg

            written += write_case_seg(plan.masks[0].with_name(f"{case.name}_seg.dcm"), pred, data)
    else:
        for path, m in zip(plan.masks, pred):
            write_mask_slice(path, m)
            written += 1
    if overlays != "none":
        for k, path in enumerate(plan.overlays):
            if overlays == "all" or pred[k].any():
                write_overlay(path, data.images[k], pred[k])
                written += 1
    return written


def predict_path(
    input_path: str | Path,
    out_dir: str | Path,
    checkpoints: Sequence[str | Path | dict[str, Any]],
    *,
    tta: bool | None = None,
    device: str = "auto",
    batch_size: int = 16,
    amp: str = "auto",
    channels: str = "strict",
    threshold: float | None = None,
    largest_component: bool | None = None,
    component_fraction: float | None = None,
    min_lesion_size: int | None = None,
    min_area: int | None = None,
    overlays: str = "tumour",
    overwrite: bool = False,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    dicom_series: dict[str, str] | None = None,
    prepare: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Segment every case of `input_path` and write masks, overlays, volumes.csv and predict.json.

    Args:
        input_path: a slice (TIF/PNG), a patient folder, a kaggle_3m dataset root, a NIfTI file,
            a folder of NIfTI files or a DICOM study (see `brainseg.inference.inputs`).
        out_dir: output folder (created); it must not put files among the input's slices.
        checkpoints: one checkpoint (file or run folder) or several: an ensemble averages their
            probabilities.
        tta, device, batch_size, amp, channels: passed to `Predictor`; tta None takes the first
            checkpoint's own setting (its run's `eval.tta`).
        threshold, largest_component, component_fraction, min_lesion_size, min_area: post-processing
            and detection;
            None takes the first checkpoint's own setting.
        overlays: "tumour" (slices with predicted tumour), "all" or "none".
        overwrite: replace an earlier prediction in `out_dir` (a non-empty `out_dir` is refused
            otherwise).
        announce: called with one line per failed case (e.g. print to stderr).
        dicom_series: role (pre, flair, post) → SeriesDescription for DICOM input; None: matched
            by description (`brainseg.inference.dicom`).
        prepare: called with the Predictor before the first case (e.g. `brainseg.engine.apply_engine`,
            which switches its forward passes to ONNX Runtime); what it returns goes into predict.json.

    Returns:
        The contents of predict.json; ``failed`` lists the cases that could not be done.

    Raises:
        BrainsegError: bad settings, an unusable checkpoint or output folder, or the error of
            the only case of a one-case input.
    """
    from brainseg.inference.postprocess import binarize, postprocessing_dict
    from brainseg.inference.predictor import CHANNEL_RULES, Predictor

    if overlays not in OVERLAY_CHOICES:
        raise BrainsegError(f"overlays must be one of {', '.join(OVERLAY_CHOICES)}, got {overlays!r}")
    inputs = discover_inputs(input_path)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BrainsegError(f"--out {out} exists and is not a folder")
    check_outputs(inputs, out)
    check_output_folder(out, overwrite)
    ensure_writable_folder(out)
    predictor = Predictor(checkpoints, device=device, batch_size=batch_size, amp=amp, channels=channels)
    engine_info = prepare(predictor) if prepare is not None else {"engine": "torch"}
    pp = resolve_postprocessing(
        predictor.checkpoints[0],
        {"threshold": threshold, "largest_component": largest_component, "component_fraction": component_fraction,
         "min_lesion_size": min_lesion_size, "min_area": min_area, "tta": tta},
    )
    predictor.tta = pp.tta
    if overwrite:
        clear_previous_outputs(out)
    info: dict[str, Any] = {
        "brainseg_version": __version__,
        "status": "running",
        "input": str(inputs.root),
        "input_kind": inputs.kind,
        "out": str(out),
        "checkpoints": predictor.describe(),
        "ensemble": "mean of the members' sigmoid probabilities" if len(predictor.models) > 1 else None,
        "tta": "mean over identity, horizontal and vertical flips" if predictor.tta else None,
        "device": str(predictor.device),
        **engine_info,
        "amp": str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "off",
        "postprocessing": postprocessing_dict(pp),
        "channel_rule": {"name": channels, "doc": CHANNEL_RULES[channels],
                         "grey": "only a grey file (one channel) is a 1-channel input; a 3-channel file "
                                 "stays 3 channels even when its channels are identical"},
        "nifti_intensity": INTENSITY_RULE,
        "mask_values": {"slices": [0, 255], "nifti": [0, 1]},
        "n_cases": len(inputs.cases),
        "ignored": list(inputs.ignored),
        "cases_done": 0,
        "slices_done": 0,
        "files_written": 0,
        "failed": [],
        "notes": [],
    }
    write_json_atomic(out / "predict.json", info)
    if inputs.ignored and announce:
        shown = ", ".join(inputs.ignored[:5]) + (", …" if len(inputs.ignored) > 5 else "")
        n = len(inputs.ignored)
        what = "entry that is not a patient folder" if n == 1 else "entries that are not patient folders"
        announce(f"ignored in {inputs.root}: {n} {what} ({shown})")
    rows: list[dict[str, Any]] = []
    cases = inputs.cases
    if progress and len(cases) > 1:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="predicting", unit="case", leave=False, mininterval=1.0, file=sys.stderr)
    t0 = time.perf_counter()
    first_error: BaseException | None = None
    single_noted = False  # a 2.5-D model given a one-slice case: said once per call
    try:
        for case in cases:
            try:
                data = read_case(case, dicom_series)
                probs = predictor.predict(data.images, source=str(case.source))
            except CheckpointError:
                raise
            except (BrainsegError, OSError) as exc:  # this case's own problem: the others go on
                first_error = first_error or exc
                info["failed"].append(case_failure(case, exc))
                if announce:
                    announce(f"case {case.name} failed: {info['failed'][-1]['error']}")
                continue
            n = len(data.images)
            if n == 1 and predictor.context and not single_noted:
                from brainseg.inference.predictor import single_slice_note

                single_noted = True
                note = single_slice_note(predictor.context, case.name)
                info["notes"].append(note)
                if announce:
                    announce(note)
            pred = binarize(probs, pp)
            plan = plan_case(out, case, n)
            info["files_written"] += _write_case(out, case, data, plan, pred, overlays)
            labels = list(case.numbers) if case.kind not in VOLUME_KINDS else list(range(n))
            labels = [lab if lab is not None else k for k, lab in enumerate(labels)]
            names = (
                [str(p.relative_to(out)) for p in plan.masks]
                if case.kind not in VOLUME_KINDS
                else [str(plan.masks[0].relative_to(out))] * n
            )
            rows += case_rows(case, labels, names, str(plan.volume_mask.relative_to(out)), pred, probs,
                              data.spacing, pp.min_area)
            write_csv_atomic(out / "volumes.csv", rows, VOLUME_COLUMNS)
            info["notes"] += list(data.notes)
            info["cases_done"] += 1
            info["slices_done"] += n
    except BaseException as exc:
        info["status"] = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        info["error"] = f"{type(exc).__name__}: {exc}"
        write_json_atomic(out / "predict.json", info)
        raise
    if not rows:
        write_csv_atomic(out / "volumes.csv", rows, VOLUME_COLUMNS)
    if first_error is not None and len(inputs.cases) == 1:
        info["status"], info["error"] = "failed", info["failed"][0]["error"]
        write_json_atomic(out / "predict.json", info)
        raise first_error
    info["status"] = "complete" if not info["failed"] else "incomplete"
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["inference_ms_per_slice"] = round(predictor.ms_per_slice, 3)
    write_json_atomic(out / "predict.json", info)
    return info
