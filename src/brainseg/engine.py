"""Inference engine: run a `Predictor`'s forward passes with PyTorch or with ONNX Runtime.

(A layer above `inference` and `export`, which it joins: `predict_path` and the viewer take it
as a hook, `apply_engine`, so inference itself never imports the exporter.)

``engine="onnx"`` swaps each loaded model for an ONNX Runtime session of the same checkpoint;
preprocessing, batching, TTA, ensembling and resizing stay the Predictor's, so only the forward
pass changes. The ONNX file is exported by `brainseg.export.export_onnx`, which writes nothing
unless ONNX Runtime's logits match PyTorch's within its tolerance, and cached next to the
checkpoint (``checkpoint_best.pt`` → ``checkpoint_best.onnx``, with ``checkpoint_best.onnx.json``
holding the checkpoint's SHA-256): a later run reuses it while the checkpoint is unchanged. A
checkpoint inside the installed package (a bundle) or in a read-only folder is cached in the user
cache instead, ``$BRAINSEG_CACHE`` or ``$XDG_CACHE_HOME/brainseg`` (``~/.cache/brainseg``), under
``onnx/<SHA-256>.onnx``; where that is not writable either, in a temporary folder for this process.

``engine="auto"`` uses ONNX Runtime when it is installed and the device is the CPU, else PyTorch;
a failed export falls back to PyTorch and says why. (On an idle 2-core Xeon, ONNX Runtime took a
35-slice volume from upload to first overlay in 1.18 s against PyTorch's 1.48 s,
`benchmarks/serve_speed.py`; on a busy machine it was no faster, so measure before relying on the
gain.) ``engine="torch"`` is PyTorch alone.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError

ENGINES = ("auto", "torch", "onnx")


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def user_cache() -> Path:
    """brainseg's user cache folder: $BRAINSEG_CACHE, else $XDG_CACHE_HOME/brainseg, else ~/.cache/brainseg."""
    from brainseg.data.index_cache import cache_dir

    return cache_dir()  # the same folder as the dataset-index and phantom caches


def _in_package(path: Path) -> bool:
    package = Path(__file__).resolve().parent
    return path.resolve().is_relative_to(package)


def _cached_at(src: Path, sha: str, target: Path, ckpt: dict[str, Any]) -> tuple[Path, bool] | None:
    """Reuse or export the ONNX file at target (sidecar beside it); None where it cannot be written."""
    from brainseg.export import export_onnx
    from brainseg.fileio import write_json_atomic

    sidecar = target.with_suffix(".onnx.json")
    try:
        if target.is_file() and json.loads(sidecar.read_text())["checkpoint_sha256"] == sha:
            return target, True
    except (OSError, ValueError, KeyError):
        pass  # no or stale sidecar: export again
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        report = export_onnx(ckpt, target)
        write_json_atomic(sidecar, {"checkpoint_sha256": sha, "checkpoint": str(src), "export": report})
        return target, False
    except OSError:  # read-only, no permission, a file where the folder should be, disk full
        return None


def cached_onnx(ckpt: dict[str, Any]) -> tuple[Path, bool]:
    """The checked ONNX file of a loaded checkpoint, exported unless a valid cached one exists.

    Returns (path, reused).
    """
    from brainseg.export import export_onnx

    src = Path(str(ckpt.get("path") or ""))
    if src.is_file():
        sha = _sha256(src)
        beside = None if _in_package(src) else _cached_at(src, sha, src.with_suffix(".onnx"), ckpt)
        found = beside or _cached_at(src, sha, user_cache() / "onnx" / f"{sha}.onnx", ckpt)
        if found is not None:
            return found
    folder = tempfile.mkdtemp(prefix="brainseg-onnx-")
    atexit.register(shutil.rmtree, folder, True)  # this process's private copy
    tmp = Path(folder) / "model.onnx"
    export_onnx(ckpt, tmp)
    return tmp, False


class OnnxModel:
    """Stands in for a model in `Predictor`: logits of a preprocessed batch through ONNX Runtime."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: Any) -> Any:
        import torch

        from brainseg.export import INPUT_NAME, OUTPUT_NAME

        arr = x.detach().float().cpu().numpy()
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(arr, dtype=np.float32)})[0]
        return torch.from_numpy(out)


def apply_engine(predictor: Any, engine: str) -> dict[str, Any]:
    """Switch `predictor`'s forward passes to `engine`; returns what was used, for the result files.

    Raises:
        BrainsegError: an unknown engine, or "onnx" asked for where it cannot run (not installed,
            a GPU device, or an export that fails its check).
    """
    import torch

    if engine not in ENGINES:
        raise BrainsegError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch":
        return {"engine": "torch"}
    why_not = None
    if not onnx_available():
        why_not = "onnxruntime is not installed (pip install 'brainseg[export]')"
    elif predictor.device.type != "cpu":
        why_not = f"the device is {predictor.device}; the ONNX engine runs on the CPU"
    if why_not is not None:
        if engine == "onnx":
            raise BrainsegError(f"--engine onnx: {why_not}")
        return {"engine": "torch", "onnx_skipped": why_not}
    try:
        found = [cached_onnx(c) for c in predictor.checkpoints]
    except BrainsegError as exc:
        if engine == "onnx":
            raise
        return {"engine": "torch", "onnx_skipped": f"export failed: {exc}"}
    predictor.models = [OnnxModel(path, torch.get_num_threads()) for path, _ in found]
    return {"engine": "onnx", "onnx_files": [str(p) for p, _ in found], "onnx_reused": [r for _, r in found]}
