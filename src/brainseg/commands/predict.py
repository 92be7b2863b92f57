"""`brainseg predict`: segment new scans with one checkpoint or an ensemble."""

from __future__ import annotations

import argparse
import sys

from brainseg.commands._common import non_negative_int, positive_int, probability

# line breaks are kept: the help uses RawDescriptionHelpFormatter for the tables in EPILOG
DESCRIPTION = """\
Segment new scans with a trained model. INPUT is a slice (.tif/.png), a patient folder
(<name>_<n>.tif slices), a dataset root in the kaggle_3m layout, a NIfTI volume (.nii/.nii.gz),
a folder of NIfTI volumes, or a DICOM study (a folder of one patient's series, or one file).
Several --checkpoint options form an ensemble (mean probability)."""

EPILOG = """\
outputs (in --out DIR; never among the input's own files):
  masks          X_mask.tif / X_mask.png for a slice; DIR/<patient>/<patient>_<n>_mask.tif for a
                 patient or dataset (values 0/255, the input's size); X_mask.nii.gz for a NIfTI
                 volume (values 0/1, the input's affine and header)
  overlays/      FLAIR channel with the predicted tumour in magenta (see --overlays)
  volumes.csv    level=slice rows: tumour area (pixels, mm² when the voxel size is known),
                 highest and mean tumour probability, detection; level=volume rows: tumour volume
                 (pixels, mm³ and mL for NIfTI), detected slices, detection
  predict.json   checkpoints, settings, status (running / complete / incomplete / failed) and the
                 cases that failed (case, file, reason)
  X_seg.dcm      for a DICOM study: a DICOM SEG over its FLAIR series (with the NIfTI mask)

a case that cannot be read or used never stops the others: it is reported on stderr and in
predict.json, every other case is written, and the exit code is 1 at the end (0 with --skip-bad).
An input of a single case stops with its error (exit 2). A non-empty --out is refused unless
--overwrite, which first removes what an earlier prediction wrote there (its masks, overlays/,
volumes.csv, predict.json) and nothing else.

preprocessing comes from the checkpoint alone: slices of another size are resized in, and masks
resized back to the input's size.

channel rule (--channels): models take 3 channels (pre-contrast, FLAIR, post-contrast) or 1 (FLAIR).
  3-channel input, 1-channel model: the FLAIR channel (the 2nd) is used.
  1-channel input, 3-channel model: an error (strict, the default), or with --channels replicate
                 the one channel is copied into all three (inputs the model never saw in training:
                 expect lower accuracy).
  Only a grey file (one channel: a grey PNG or TIFF, a 3-D NIfTI) is a 1-channel input; a 3-channel
  file stays 3 channels even when its channels are identical (kaggle_3m copies the FLAIR into a
  missing sequence).

NIfTI: reoriented from the affine to the model's axial view (rows anterior to posterior, columns
patient right to left, slices inferior to superior; axes permuted and flipped, never resampled),
segmented slice by slice (a 2.5-D model, data.context > 0, reads each slice with its
neighbours in the volume), and the mask written back in the file's own orientation and shape (slice
numbers in volumes.csv count in the model's order); a 4-D volume X×Y×Z×3 holds the three
channels. Intensities that are not uint8 are scaled per channel to 0-255 (volume minimum → 0,
99.5th percentile of the voxels above it → 255). Voxel sizes (mm² and mL in volumes.csv) come
from the header.

DICOM: slices sorted by position along the slice normal, RescaleSlope/Intercept applied, then
scaled to 0-255 like NIfTI (8-bit series without rescaling are kept as they are). Series become
channels by SeriesDescription (FLAIR; pre-/post-contrast T1), or as --dicom-series says; FLAIR
alone (or a single series) gives a 1-channel case. The mask is NIfTI with the series' geometry,
and a DICOM SEG (X_seg.dcm) over the FLAIR series.

--tta and post-processing default to the first checkpoint's own settings (its run's eval section;
no TTA and threshold 0.5 unless the run said otherwise): threshold, then --largest-component per
case (3-D), then --min-lesion-size (2-D); a slice is a detection when its tumour area reaches
--min-area pixels, a case when any slice is.

examples:
  brainseg predict -c runs/unet kaggle_3m/TCGA_CS_4942_19970222 --out pred   (a run folder: best or last checkpoint, as its eval.checkpoint says)
  brainseg predict --checkpoint runs/unet --checkpoint runs/segnet scan.nii.gz --out pred --tta
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("input", metavar="INPUT", help="slice, patient folder, dataset root, NIfTI file or folder, DICOM study")
    p.add_argument("--checkpoint", "-c", action="append", metavar="CKPT",
                   help="checkpoint file or run folder (best or last checkpoint, as its eval.checkpoint says); repeat for an ensemble "
                        "(default: the bundled model, see `brainseg models --bundles`)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created; must be empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier prediction in --out (removes only what predict wrote there)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: mean over identity and flips (default: the checkpoint's)")
    p.add_argument("--threshold", type=probability, help="probability threshold in [0, 1] (default: the checkpoint's, 0.5)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest 3-D connected component per case (default: the checkpoint's)")
    p.add_argument("--component-fraction", type=float, metavar="F",
                   help="with the largest component: also keep 3-D components of at least F × its size, "
                        "0 < F ≤ 1 (default: the checkpoint's, 1: the largest only)")
    p.add_argument("--min-lesion-size", type=non_negative_int, metavar="PX",
                   help="drop predicted 2-D components smaller than PX pixels (default: the checkpoint's)")
    p.add_argument("--min-area", type=non_negative_int, metavar="PX",
                   help="detection: tumour area (pixels) for a positive slice (default: the checkpoint's, 10)")
    p.add_argument("--channels", choices=("strict", "replicate"), default="strict",
                   help="channel rule for 1-channel input to a 3-channel model (see below; default strict)")
    p.add_argument("--dicom-series", action="append", default=[], metavar="ROLE=DESCRIPTION",
                   help="DICOM: which series is which channel, e.g. --dicom-series flair='AX FLAIR' "
                        "(roles pre, flair, post; default: matched by SeriesDescription)")
    p.add_argument("--overlays", choices=("tumour", "all", "none"), default="tumour",
                   help="overlay PNGs for slices with predicted tumour (default), every slice, or none")
    p.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="forward passes with ONNX Runtime (exported once, checked against PyTorch and cached "
                        "next to the checkpoint) or PyTorch; auto (default): ONNX Runtime when installed, on the CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=positive_int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision (auto: bf16/fp16 on CUDA only)")
    p.add_argument("--skip-bad", action="store_true",
                   help="exit 0 even when some cases failed (they are still listed in predict.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_series_map(items: list[str]) -> dict[str, str] | None:
    """["flair=AX FLAIR", …] → {"flair": "AX FLAIR", …}; None for no items."""
    from brainseg.errors import BrainsegError

    out: dict[str, str] = {}
    for item in items:
        role, sep, desc = item.partition("=")
        if not sep or not desc:
            raise BrainsegError(f"--dicom-series {item!r}: expected ROLE=DESCRIPTION, e.g. flair='AX FLAIR'")
        out[role.strip().lower()] = desc
    return out or None


def run(args: argparse.Namespace) -> int:
    from brainseg.engine import apply_engine
    from brainseg.inference.pipeline import predict_path

    checkpoints = args.checkpoint
    if not checkpoints:
        from brainseg.bundles import require_default

        checkpoints = [str(require_default())]
        print(f"brainseg predict: no -c given, using the bundled model {checkpoints[0]}", file=sys.stderr)
    info = predict_path(
        args.input,
        args.out,
        checkpoints,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        amp=args.amp,
        channels=args.channels,
        threshold=args.threshold,
        largest_component=args.largest_component,
        component_fraction=args.component_fraction,
        min_lesion_size=args.min_lesion_size,
        min_area=args.min_area,
        overlays=args.overlays,
        overwrite=args.overwrite,
        progress=not args.quiet,
        announce=lambda m: print(f"brainseg predict: {m}", file=sys.stderr),
        dicom_series=parse_series_map(args.dicom_series),
        prepare=lambda predictor: apply_engine(predictor, args.engine),
    )
    models = ", ".join(str(c["model"]) for c in info["checkpoints"])
    print(f"{info['cases_done']} case(s), {info['slices_done']} slice(s) segmented with {models} on "
          f"{info['device']} with {info['engine']} ({info['inference_ms_per_slice']:.1f} ms/slice); results in "
          f"{info['out']}")
    if info["failed"]:
        print(f"brainseg predict: {len(info['failed'])} of {info['n_cases']} case(s) failed; the others are "
              f"written; see {info['out']}/predict.json", file=sys.stderr)
        return 0 if args.skip_bad else 1
    return 0
