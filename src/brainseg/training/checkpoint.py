"""Checkpoints that carry everything needed to rebuild a model and resume its training.

A checkpoint is a dict saved with `torch.save` (written atomically, see `brainseg.fileio`):

- ``format_version``: bumped on any incompatible change; loading another version is refused.
- ``model``: the architecture's constructor arguments (``create_model(**ckpt["model"])``).
- ``state_dict``: the model weights (with ``train.ema``, their moving average: what is validated
  and used; ``trained_state_dict`` then holds the weights as trained and ``ema_steps`` the
  number of averaged steps, for resuming).
- ``preprocessing``: size, channels and normalisation the model was trained with.
- ``config``: the full run configuration (`RunConfig.to_dict()`), ``split``: the split it used,
  ``data_root``, ``params`` (parameter count) and ``brainseg_version``.
- ``environment``: what the run ran on (versions, threads, CPU, device; `brainseg.environment`),
  compared on `--resume`. Bundled inference checkpoints leave it out.
- ``init_weights`` (runs started with `train.init_weights` only): where the starting weights came
  from: ``path`` (absolute), ``epoch``, ``split_id`` and ``test_patients_seen`` (this run's test
  patients that checkpoint was trained or validated on); train_summary.json repeats it.
- ``epoch``: completed epochs (a copy of ``train_state["epoch"]`` for readers that do not resume).
- for resuming: ``optimizer``, ``scheduler`` and ``scaler`` (state dicts; ``scaler`` None without
  fp16), ``rng`` (Python, NumPy and torch generator states) and ``train_state``, the loop's
  `TrainState` as a dict: ``epoch``, ``global_step``, ``best_dice``, ``best_epoch``,
  ``bad_epochs``, ``stopped_early``, ``train_seconds`` and ``history`` (one dict per epoch).

Everything in it is a tensor or a plain value (dict, list, tuple, str, number, bool, None), so a
checkpoint is read with ``torch.load(weights_only=True)``: a file from someone else cannot run
code when it is loaded (a pickle may otherwise call any function, e.g. ``os.system``). Checkpoints
written before this rule kept NumPy's RNG state as an array; they are still read, with exactly the
NumPy array types allowed. Anything else that needs code to rebuild is refused, named.

`load_checkpoint` adds ``path``, the file it read. Given a run folder, it reads the checkpoint the
run's `eval.checkpoint` names (`run_checkpoint`): best unless the run's config says last.
"""

from __future__ import annotations

import importlib
import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg import __version__
from brainseg.config import CHECKPOINT_KINDS
from brainseg.errors import CheckpointError
from brainseg.fileio import read_json, write_bytes_atomic

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "state_dict", "preprocessing", "config")
#: Globals of checkpoints written before the weights-only rule (NumPy's RNG state as an array):
#: allowed for those files only, and only these (both NumPy 1 and NumPy 2 spellings).
LEGACY_GLOBALS = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
    "numpy.dtype", "numpy.dtypes.UInt32DType",
})


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict (format version and brainseg version are added)."""
    payload = {"format_version": FORMAT_VERSION, "brainseg_version": __version__, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue())


def run_checkpoint(run_dir: str | Path, which: str | None = None) -> Path:
    """`<run_dir>/checkpoint_<which>.pt`; `which` None: the one the run's `eval.checkpoint` names.

    The run's choice is read from `<run_dir>/config.json` (written when training starts); a run
    without that file or without the setting uses "best", brainseg's default. Existence is not
    checked here.

    Raises:
        CheckpointError: `which` (or the run's setting) is not "best" or "last", or config.json
            cannot be read.
    """
    d = Path(run_dir)
    if which is None:
        which = "best"
        cfg_path = d / "config.json"
        if cfg_path.is_file():
            try:
                which = (read_json(cfg_path).get("eval") or {}).get("checkpoint", "best")
            except (OSError, ValueError, AttributeError) as exc:
                raise CheckpointError(f"{cfg_path} cannot be read ({exc}); name the checkpoint file instead") from None
    if which not in CHECKPOINT_KINDS:
        raise CheckpointError(f"checkpoint kind {which!r} of {d} is not one of {', '.join(CHECKPOINT_KINDS)}")
    return d / f"checkpoint_{which}.pt"


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """"best" or "last" for a loaded run checkpoint (from the file it was read from); else its file name."""
    stem = Path(str(ckpt.get("path", ""))).stem
    kind = stem.removeprefix("checkpoint_")
    return kind if kind in CHECKPOINT_KINDS else stem


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint file, or a run folder's (`run_checkpoint`; the other one where
    that is missing, e.g. a run stopped before its first epoch ended). Any problem is a
    CheckpointError naming the file."""
    p = Path(path)
    if p.is_dir():
        chosen = run_checkpoint(p)
        other = p / ("checkpoint_last.pt" if chosen.name == "checkpoint_best.pt" else "checkpoint_best.pt")
        found = next((c for c in (chosen, other) if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path} is a folder without checkpoint_best.pt or checkpoint_last.pt")
        if found != chosen:
            import sys

            print(f"note: {chosen} (the run's eval.checkpoint) is missing; using {found.name}", file=sys.stderr)
        p = found
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    ckpt = _load_weights_only(p, map_location)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{p} is not a brainseg checkpoint (no format_version)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {ckpt['format_version']}; this brainseg ({__version__}) "
            f"reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {', '.join(missing)}")
    ckpt["path"] = str(p)
    return ckpt


def _load_weights_only(p: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)`, allowing `LEGACY_GLOBALS` for older files and nothing else."""
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # needs a global that weights-only loading refuses: see which
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception:
        names = []
    unsafe = [n for n in names if n not in LEGACY_GLOBALS]
    if unsafe or not names:
        what = ", ".join(unsafe[:5]) if unsafe else "objects that need code to rebuild"
        raise CheckpointError(
            f"checkpoint {p} refused: it holds {what}, which brainseg never writes; loading it could run code "
            "from the file, so it is not loaded (brainseg checkpoints hold only tensors and plain settings)"
        )
    allowed = [_resolve_global(n) for n in sorted(LEGACY_GLOBALS)]  # the dtype class is met only while loading
    try:
        with torch.serialization.safe_globals([g for g in allowed if g is not None]):
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None


def _resolve_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None  # the other NumPy major version's spelling


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the architecture from the checkpoint alone and load its weights (eval mode)."""
    from brainseg.models import create_model

    kwargs = dict(ckpt["model"])
    # A user's local backbone file is only needed to initialise training, never to rebuild.
    kwargs.pop("encoder_weights", None)
    try:
        model = create_model(**kwargs)
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: cannot rebuild {kwargs}: {exc}") from None
    mismatch = weights_mismatch(model.state_dict(), ckpt["state_dict"])
    if mismatch:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: its weights do not fit {kwargs}: {mismatch}")
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def weights_mismatch(expected: dict[str, Any], given: Any, show: int = 3) -> str:
    """A few lines on how `given` weights differ from a model's `expected` ones; "" when they fit.

    Counts of missing, unexpected and wrongly shaped tensors, each with its first `show` names
    (a full PyTorch message lists every key: hundreds of lines for a deep model).
    """
    if not isinstance(given, dict):
        return f"the weights are a {type(given).__name__}, not a mapping of tensors"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and tuple(getattr(given[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if items:
            more = f", … ({len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    if not parts:
        return ""
    return f"{len(given)} tensors given, {len(expected)} expected; " + "; ".join(parts)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with weights_only=True)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"bit_generator": name, "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np.asarray(np_state["key"].numpy() if torch.is_tensor(np_state["key"]) else np_state["key"])
        np_state = (np_state["bit_generator"], key.astype(np.uint32), np_state["pos"], np_state["has_gauss"],
                    np_state["cached_gaussian"])
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
