"""Fine-tuning: the model weights a run starts from (`train.init_weights`), checked and recorded.

`init_source` loads the checkpoint and checks its architecture (called before any data is read);
`load_init_weights` puts its weights into the new model, says what differs or leaks, and returns
the record a run keeps in its checkpoints and train_summary.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brainseg.errors import BrainsegError, CheckpointError
from brainseg.training.checkpoint import load_checkpoint, weights_mismatch


def init_source(source: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint `source` (`train.init_weights`) names, loaded and checked to hold the architecture
    `model_config` describes (its weightless rebuild's config, so an option a newer brainseg added
    compares at its default). Any problem is a CheckpointError that names the setting and the file."""
    from brainseg.models import create_model

    try:
        init = load_checkpoint(source)
    except CheckpointError as e:
        raise CheckpointError(f"train.init_weights: {e}") from None
    where = init["path"]
    try:
        with torch.device("meta"):
            theirs = dict(create_model(**init["model"]).config)
    except (TypeError, ValueError, KeyError, BrainsegError) as e:
        raise CheckpointError(f"train.init_weights: {where} holds a model brainseg cannot build ({e})") from None
    if _canonical(theirs) != _canonical(model_config):
        raise CheckpointError(
            f"train.init_weights: {where} holds {_describe(theirs)}, but this run trains "
            f"{_describe(model_config)}; fine-tuning needs the same architecture and arguments")
    return init


def load_init_weights(init: dict[str, Any], model: torch.nn.Module, split: dict[str, Any],
                      preprocessing: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Put the weights of `init` (the checkpoint `init_source` loaded and checked) into `model`, a run
    of `split` (its dict) and `preprocessing` (`run.run_preprocessing`).

    Weights that do not fit the model are a CheckpointError that names them. A checkpoint of a run with
    `train.ema` gives its moving average (what that run validated and saved as its model). Said
    aloud: where the weights come from, any preprocessing that differs from this run's, and any of
    this run's test patients that the checkpoint was trained or validated on (their scores would
    not be those of unseen patients).

    Returns the record train_summary.json keeps: the file (absolute), its epoch, its split id and
    the test patients it saw.
    """
    where = init["path"]
    mismatch = weights_mismatch(model.state_dict(), init["state_dict"])
    if mismatch:
        raise CheckpointError(f"train.init_weights: the weights in {where} do not fit the model: {mismatch}")
    theirs = init.get("preprocessing") or {}
    differ = sorted(k for k in set(preprocessing) | set(theirs) if preprocessing.get(k) != theirs.get(k))
    if differ:
        say(f"note: {where} was trained with other preprocessing ("
            + ", ".join(f"{k}: {theirs.get(k)!r} → {preprocessing.get(k)!r}" for k in differ) + ")")
    init_split = init.get("split") or {}
    seen = set(init_split.get("train") or []) | set(init_split.get("val") or [])
    leaked = sorted(seen & set(split.get("test") or []))
    if leaked:
        shown = ", ".join(leaked[:5]) + (" …" if len(leaked) > 5 else "")
        say(f"warning: {where} was trained on {len(leaked)} of this run's test patients ({shown}); "
            "their scores will not be those of patients the model never saw")
    model.load_state_dict(init["state_dict"])
    say(f"starting from the weights of {where} (after its epoch {init.get('epoch', '?')})")
    return {"path": str(Path(where).resolve()), "epoch": init.get("epoch"), "split_id": init_split.get("id"),
            "test_patients_seen": leaked}


def _canonical(model_args: dict[str, Any]) -> str:
    return json.dumps(model_args, sort_keys=True, default=str)


def _describe(model_args: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(model_args.items()) if k != "name")
    return f"{model_args.get('name', '?')}({args})"
