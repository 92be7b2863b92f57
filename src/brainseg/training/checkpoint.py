"""Checkpoints that carry everything needed to rebuild a model and resume its training.

A checkpoint is a dict saved with `torch.save` (written atomically, see `brainseg.fileio`):

- ``format_version``: bumped on any incompatible change; loading another version is refused.
- ``model``: the architecture's constructor arguments (``create_model(**ckpt["model"])``).
- ``state_dict``: the model weights.
- ``preprocessing``: size, channels and normalisation the model was trained with.
- ``config``: the full run configuration (`RunConfig.to_dict()`), ``split``: the split it used,
  ``data_root``, ``params`` (parameter count) and ``brainseg_version``.
- ``epoch``: completed epochs (a copy of ``train_state["epoch"]`` for readers that do not resume).
- for resuming: ``optimizer``, ``scheduler`` and ``scaler`` (state dicts; ``scaler`` None without
  fp16), ``rng`` (Python, NumPy and torch generator states) and ``train_state``, the loop's
  `TrainState` as a dict: ``epoch``, ``global_step``, ``best_dice``, ``best_epoch``,
  ``bad_epochs``, ``stopped_early``, ``train_seconds`` and ``history`` (one dict per epoch).

`load_checkpoint` adds ``path``, the file it read.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg import __version__
from brainseg.errors import CheckpointError
from brainseg.fileio import write_bytes_atomic

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "state_dict", "preprocessing", "config")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict (format version and brainseg version are added)."""
    payload = {"format_version": FORMAT_VERSION, "brainseg_version": __version__, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; any problem is a CheckpointError naming the file."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise CheckpointError(f"{path} is a folder without checkpoint_best.pt or checkpoint_last.pt")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        # weights_only=False: our checkpoints hold plain config dicts and RNG states written by us.
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc})") from None
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


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the architecture from the checkpoint alone and load its weights (eval mode)."""
    from brainseg.models import create_model

    kwargs = dict(ckpt["model"])
    # A user's local backbone file is only needed to initialise training, never to rebuild.
    kwargs.pop("encoder_weights", None)
    try:
        model = create_model(**kwargs)
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: weights do not fit {kwargs}: {exc}") from None
    return model.to(device).eval()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
