"""Export a checkpoint to ONNX and check that ONNX Runtime gives PyTorch's output.

The ONNX model takes the *preprocessed* input, float32 ``image`` of shape (batch, C, S, S) with the
checkpoint's size S, channels C and normalisation (all stored in the model's metadata as JSON
under ``brainseg.preprocessing``; for a 2.5-D model, ``context`` k > 0 there, C is in_channels ×
(2k + 1): each slice preprocessed with its k neighbours on each side, stacked along the channels
in slice order, `brainseg.data.preprocess.stack_context`; with ``sequence_flags`` true there, two constant
planes follow, `brainseg.data.preprocess.add_sequence_flags`), and returns ``logits`` (batch, 1, S, S): apply a sigmoid for
the tumour probability, then the threshold in ``brainseg.threshold``. The batch size is dynamic.

Nothing is written unless ONNX Runtime's logits match PyTorch's on the same inputs, on two batch
sizes, within ``atol + rtol·max|PyTorch logits|`` (`check_against_torch`). onnx and onnxruntime (and onnxscript for the dynamo
exporter) are the optional extra ``export``: ``pip install 'brainseg[export]'``.

Exporters: "torchscript" (``torch.onnx.export(dynamo=False)``, deprecated by PyTorch since 2.9 but
available from PyTorch 2.2 on and about 10× faster) and "dynamo" (the torch.export-based exporter,
PyTorch ≥ 2.5). "auto" tries torchscript and falls back to dynamo, so the export keeps working once
PyTorch removes the older exporter, or when its graph fails the check (SegNet's max-unpooling
does not export with torchscript); the check against PyTorch applies to either.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainseg import __version__
from brainseg.errors import BrainsegError

EXPORTERS = ("auto", "torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def require_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or raise a BrainsegError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise BrainsegError(
            f"ONNX export needs the optional packages onnx and onnxruntime ({exc.name or exc} is missing): "
            "pip install 'brainseg[export]'"
        ) from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines, deprecation notices and graph dumps (errors still raise).

    The torchscript exporter switches its C++ log on whatever `verbose` says (PyTorch 2.13 tests
    the function `_jit_is_onnx_log_enabled` instead of calling it) and, when it fails, dumps the
    whole graph from C++ to stdout, so stdout and stderr point at /dev/null at the descriptor level.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        logger.setLevel(level)


def example_inputs(prep: dict[str, Any], batch: int, seed: int = 0) -> np.ndarray:
    """Preprocessed model inputs (batch, C, S, S) float32 from seeded random uint8 slices (read as
    one volume, with neighbours stacked, for a 2.5-D model)."""
    from brainseg.data.preprocess import volume_inputs

    rng = np.random.default_rng(seed)
    size, c = int(prep["size"]), int(prep["in_channels"])
    raw = rng.integers(0, 256, size=(batch, size, size, c), dtype=np.uint8)
    raw[:, : size // 8] = 0  # a background band, as in real slices (matters for z-score normalisation)
    if prep.get("sequence_flags") and batch > 1:
        raw[1, :, :, 0] = raw[1, :, :, 1]  # one slice with a FLAIR copy, so the flag planes vary
    return volume_inputs(raw, prep)


def _export_with(model: Any, x: Any, exporter: str, opset: int | None) -> bytes:
    import torch

    with _quiet():
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model, (x,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                    verbose=False, optimize=True,
                )
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            torch.onnx.export(
                model, (x,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset or 17,
            )
            return buf.getvalue()
        except ImportError as exc:
            raise BrainsegError(
                f"the {exporter} ONNX exporter needs {exc.name or exc}: pip install 'brainseg[export]'"
            ) from None
        except Exception as exc:  # the exporters raise many types; keep the cause, not the graph dump
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise BrainsegError(f"the {exporter} exporter failed: {type(exc).__name__}: {first}") from None


def _with_metadata(onnx: Any, raw: bytes, ckpt: dict[str, Any]) -> tuple[bytes, int]:
    proto = onnx.load_from_string(raw)
    threshold = (ckpt.get("config") or {}).get("eval", {}).get("threshold", 0.5)
    meta = {
        "brainseg.version": __version__,
        "brainseg.model": json.dumps(ckpt["model"]),
        "brainseg.preprocessing": json.dumps(ckpt["preprocessing"]),
        "brainseg.threshold": str(threshold),
        "brainseg.output": "logits; sigmoid gives the tumour probability",
        "brainseg.checkpoint": str(ckpt.get("path", "")),
        "brainseg.epoch": str(ckpt.get("epoch", "")),
        "brainseg.split_id": str((ckpt.get("split") or {}).get("id", "")),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "brainseg", __version__
    onnx.checker.check_model(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return proto.SerializeToString(), opset


def check_against_torch(
    onnx_bytes: bytes, model: Any, inputs: list[np.ndarray], *, atol: float, rtol: float
) -> float:
    """Largest |ONNX Runtime − PyTorch| over the given input batches; raise when out of tolerance.

    The tolerance of a batch is ``atol + rtol·max|PyTorch logits|``: relative to the output's scale
    rather than to each element, since logits near zero in a large-scale output (an untrained
    ResNet encoder gives logits in the thousands) differ by float rounding of the large terms.
    """
    import torch

    _, ort = require_onnx()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).float().numpy()
        if got.shape != want.shape:
            raise BrainsegError(f"ONNX Runtime returned shape {got.shape}, PyTorch {want.shape} for input {x.shape}")
        if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
            raise BrainsegError(f"non-finite logits on a batch of {len(x)} (ONNX Runtime or PyTorch)")
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        worst = max(worst, diff)
        if diff > atol + rtol * scale:
            raise BrainsegError(
                f"ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} on a batch of {len(x)} "
                f"(tolerance {atol:g} + {rtol:g}·{scale:.3g}, the largest |logit|)"
            )
    return worst


def export_onnx(
    checkpoint: str | Path | dict[str, Any],
    out: str | Path,
    *,
    exporter: str = "auto",
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Export a checkpoint to `out` (.onnx) after checking ONNX Runtime against PyTorch.

    Args:
        checkpoint: checkpoint file, run folder, or a loaded checkpoint dict.
        out: the .onnx file to write (atomically, only once the check passes).
        exporter: "auto" (torchscript, falling back to dynamo), "torchscript" or "dynamo" (see the
            module docstring).
        opset: ONNX opset; None → the exporter's default.
        atol, rtol: tolerance of the check: max |difference| ≤ atol + rtol·max |PyTorch logit|.
        batch: batch size of the traced example; the check also runs batch + 1 (dynamic batch).
        seed: seed of the random check inputs.

    Returns:
        A report: path, exporter, opset, input/output names and shapes, max_abs_diff, batches checked.

    Raises:
        BrainsegError: onnx/onnxruntime missing, bad checkpoint (CheckpointError), export failure,
            or outputs that differ beyond the tolerance.
    """
    onnx, ort = require_onnx()
    import torch

    from brainseg.fileio import ensure_writable_folder, write_bytes_atomic
    from brainseg.training.checkpoint import load_checkpoint, model_from_checkpoint

    if exporter not in EXPORTERS:
        raise BrainsegError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if batch < 2:
        raise BrainsegError(f"batch must be at least 2 (a batch of 1 fixes the batch size), got {batch}")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".onnx":
        raise BrainsegError(f"ONNX output {out} must end in .onnx")
    if out.is_dir():
        raise BrainsegError(f"ONNX output {out} is a folder; give the file to write")
    ensure_writable_folder(out.parent)  # before the export's work, not after it
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, "cpu")
    prep = ckpt["preprocessing"]
    checks = [example_inputs(prep, batch, seed), example_inputs(prep, batch + 1, seed + 1)]
    failures: list[str] = []
    # auto: a graph torchscript gets wrong (or cannot export) gets a second chance with dynamo
    for used in ("torchscript", "dynamo") if exporter == "auto" else (exporter,):
        try:
            raw = _export_with(model, torch.from_numpy(checks[0]), used, opset)
            onnx_bytes, used_opset = _with_metadata(onnx, raw, ckpt)
            diff = check_against_torch(onnx_bytes, model, checks, atol=atol, rtol=rtol)
            break
        except BrainsegError as exc:
            failures.append(f"{used}: {exc}")
    else:
        raise BrainsegError(f"ONNX export of {ckpt.get('path', 'the checkpoint')} failed ({'; '.join(failures)}); "
                            "nothing was written")
    write_bytes_atomic(out, onnx_bytes)
    from brainseg.data.preprocess import model_channels

    size, c = int(prep["size"]), model_channels(prep)
    return {
        "path": str(out),
        "bytes": len(onnx_bytes),
        "model": ckpt["model"].get("name"),
        "checkpoint": ckpt.get("path"),
        "exporter": used,
        "opset": used_opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", c, size, size], "preprocessing": prep},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 1, size, size]},
        "max_abs_diff": diff,
        "exporter_failures": failures,
        "tolerance": {"atol": atol, "rtol": rtol},
        "batches_checked": [len(b) for b in checks],
        "onnxruntime_version": ort.__version__,
    }
