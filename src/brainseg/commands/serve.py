"""`brainseg serve`: start the local web viewer (upload a scan, see the tumour, download the masks)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Start a local web app: open the page it prints, drop in a patient (zip of kaggle_3m TIFs or PNGs,
or of a DICOM series), a NIfTI volume or one slice, and see the predicted tumour, its size and how
sure the model is. It listens on 127.0.0.1 (this machine only) unless --host says otherwise;
nothing is fetched from or sent to anywhere else."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", action="append", metavar="CKPT",
                   help="checkpoint file or run folder (best or last checkpoint, as its eval.checkpoint says); repeat "
                        "for an ensemble (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="folder for uploads and results (default: a new temporary folder, deleted on exit)")
    p.add_argument("--max-upload-mb", type=int, default=200, help="largest upload accepted, MiB (default 200)")
    p.add_argument("--workers", type=int, default=1, help="uploads segmented at once (default 1)")
    p.add_argument("--max-pending", type=int, default=8, help="uploads allowed to wait (default 8)")
    p.add_argument("--keep", type=int, default=16, help="finished jobs kept before the oldest is deleted (default 16)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="add flipped views (default on: they give a single model's uncertainty)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the checkpoint's)")
    p.add_argument("--channels", choices=("strict", "replicate"), default="strict",
                   help="channel rule for 1-channel input to a 3-channel model (as in predict)")
    p.add_argument("--dicom-series", action="append", default=[], metavar="ROLE=DESCRIPTION",
                   help="DICOM: which series is which channel (as in predict; default: by SeriesDescription)")
    p.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="forward passes with ONNX Runtime or PyTorch, as in predict (default auto: ONNX when installed)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")


def resolve_checkpoints(given: list[str] | None) -> list[str]:
    """The checkpoints to serve: those given, else the bundled model.

    Raises:
        BrainsegError: when none is given and brainseg bundles none.
    """
    from brainseg.bundles import default_bundle
    from brainseg.errors import BrainsegError

    if given:
        return list(given)
    bundled = default_bundle()
    if bundled is None:
        raise BrainsegError(
            "no model to serve: this brainseg bundles none; pass one with -c, e.g. "
            "`brainseg serve -c runs/unet` (a run folder from `brainseg train`) or -c path/to/checkpoint_best.pt"
        )
    return [str(bundled)]


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import uvicorn

    from brainseg.commands.predict import parse_series_map
    from brainseg.errors import BrainsegError
    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.segment import Segmenter

    if args.workers < 1 or args.max_pending < 0 or args.keep < 1 or args.max_upload_mb < 1:
        raise BrainsegError("--workers, --keep and --max-upload-mb must be ≥ 1 and --max-pending ≥ 0")
    checkpoints = resolve_checkpoints(args.checkpoint)
    segmenter = Segmenter(checkpoints, tta=args.tta, device=args.device, channels=args.channels,
                          overrides={"threshold": args.threshold}, engine=args.engine)
    with tempfile.TemporaryDirectory(prefix="brainseg-serve-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        store = JobStore(work, segmenter, workers=args.workers, max_pending=args.max_pending, keep=args.keep)
        app = create_app(store, max_upload_mb=args.max_upload_mb, host=args.host,
                         dicom_series=parse_series_map(args.dicom_series))
        where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else "OPEN TO THE NETWORK"
        models = ", ".join(str(d["model"]) for d in segmenter.describe()["models"])
        print(f"brainseg serve: {models} on {segmenter.engine}, {segmenter.n_views} view(s); work folder "
              f"{store.work}", file=sys.stderr)
        if segmenter.engine_note:
            print(f"brainseg serve: ONNX Runtime not used: {segmenter.engine_note}", file=sys.stderr)
        print(f"brainseg serve: listening on http://{args.host}:{args.port}/ ({where}); Ctrl-C stops it",
              file=sys.stderr)
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        finally:
            store.shutdown()
    return 0
