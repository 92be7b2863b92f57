"""Which settings change a result, their hash, and the differences between two runs' settings.

A finished or interrupted run may only be reused (by `compare`) or continued (`train --resume`)
under the settings it was made with. "The settings" means every setting that can change a number
in its results — data, model, training and evaluation — and none that only changes how fast or
where it runs (`NOT_RESULT_CHANGING`). Settings missing from an older run's file take today's
defaults, so a field added later (at its default) does not make old runs unusable.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from brainseg.config import RunConfig
from brainseg.errors import BrainsegError

#: Settings that do not change a run's numbers: where the data lives (the split and the data
#: summary are compared instead), which fold of a frozen split file (the split id is compared),
#: and the device, worker and memory-layout choices.
NOT_RESULT_CHANGING = frozenset({
    "data.root", "data.split_file", "data.skip_bad", "data.fold",
    "train.device", "train.num_workers", "train.compile", "train.channels_last",
})
SECTIONS = ("data", "model", "train", "eval")


def _plain(value: Any) -> Any:
    """1 and 1.0 are one setting (JSON files and flags spell numbers either way)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def result_settings(cfg: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """The result-changing settings of a run configuration, as {"section.key": value}, sorted.

    Args:
        cfg: a `RunConfig` or its dict (`config.json`, a checkpoint's ``config``); missing
            sections and keys take the defaults.
    """
    given = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    defaults = RunConfig().to_dict()
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        values = {**defaults[section], **(given.get(section) or {})}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted not in NOT_RESULT_CHANGING:
                flat[dotted] = _plain(value)
    return dict(sorted(flat.items()))


def settings_hash(settings: dict[str, Any], split: Any = None) -> str:
    """A short stable hash of `result_settings(...)` output and, optionally, the split (id or ids)."""
    text = json.dumps({"settings": settings, "split": split}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old → new' for every result-changing setting that differs (inputs: config dicts or
    `result_settings` output), in key order; [] when they match."""
    a = old if _is_flat(old) else result_settings(old)
    b = new if _is_flat(new) else result_settings(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append(f"{key}: {'(absent)' if va is missing else json.dumps(va)} → "
                       f"{'(absent)' if vb is missing else json.dumps(vb)}")
    return out


def _is_flat(settings: dict[str, Any]) -> bool:
    """`result_settings` output ("section.key" keys) rather than a config dict ({} is a config)."""
    return any("." in k for k in settings)


def changed_keys(differences: list[str]) -> list[str]:
    """The keys of `diff_settings` lines."""
    return [line.split(":", 1)[0] for line in differences]


def require_same_settings(old: dict[str, Any], new: dict[str, Any], what: str, remedy: str) -> None:
    """Raise a BrainsegError naming every differing setting, unless `old` and `new` match.

    Args:
        old, new: config dicts (or `result_settings` output) of the existing run and of now.
        what: the existing thing, e.g. "run runs/unet".
        remedy: what the user can do, e.g. "use another --out".
    """
    differences = diff_settings(old, new)
    if differences:
        raise BrainsegError(
            f"{what} was made with other settings ({'; '.join(differences)}); {remedy}"
        )
