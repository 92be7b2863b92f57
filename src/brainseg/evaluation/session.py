"""`EvalRun`: one trained run made ready for evaluation (checkpoint, settings, data, patients).

`brainseg evaluate` and `brainseg robustness` both start here, so the steps checkpoint → settings
→ data root → index → the split's patients, and their error messages, exist once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainseg.config import RunConfig
from brainseg.errors import BrainsegError

SPLITS = ("train", "val", "test")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split_patients(ckpt: dict[str, Any], split: str) -> list[str]:
    """The patients of one part ("train", "val" or "test") of the split stored in `ckpt`."""
    if split not in SPLITS:
        raise BrainsegError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    patients = list(ckpt["split"][split])
    if not patients:
        raise BrainsegError(f"the run's split has no {split} patients")
    return patients


@dataclass
class EvalRun:
    """A run's checkpoint with its settings, dataset index and the patients to evaluate.

    Attributes:
        run_dir: the run folder.
        ckpt: the loaded checkpoint (`brainseg.training.checkpoint`).
        cfg: the run's settings, with any eval overrides applied.
        root: the dataset folder used.
        index: its `DatasetIndex`.
        split: "train", "val", "test" or "all" (every patient of the dataset).
        patients: the patients of `split`, all present in `index`.
    """

    run_dir: Path
    ckpt: dict[str, Any]
    cfg: RunConfig
    root: Path
    index: Any
    split: str
    patients: list[str]

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        checkpoint: str | None = None,
        data_root: str | Path | None = None,
        *,
        split: str = "test",
        eval_overrides: dict[str, Any] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> EvalRun:
        """Load `<run_dir>/checkpoint_<checkpoint>.pt` and index the data it is evaluated on.

        Args:
            run_dir: a run folder made by `brainseg train`.
            checkpoint: "best", "last" or None (the run's `eval.checkpoint`, `run_checkpoint`).
            data_root: dataset folder (None: the one the run was trained on).
            split: which patients; "all" takes every patient of the dataset and warns about
                those the model trained or validated on.
            eval_overrides: eval settings to change (None values leave the run's own).
            announce: where notices go (default: stderr).

        Raises:
            BrainsegError: no such checkpoint, a bad split name, or patients missing from the data.
        """
        from brainseg.data.index_cache import index_dataset_cached
        from brainseg.data.roots import resolve_data_root
        from brainseg.inference.predictor import checkpoint_config
        from brainseg.training.checkpoint import checkpoint_kind, load_checkpoint, run_checkpoint

        run_dir = Path(run_dir)
        say = announce or _stderr
        path = run_checkpoint(run_dir, checkpoint)
        if not path.is_file() and run_dir.is_dir():
            why = "asked for" if checkpoint else "named by the run's eval.checkpoint"
            raise BrainsegError(f"checkpoint {path} does not exist ({why}; --checkpoint best or last picks one)")
        ckpt = load_checkpoint(path)
        cfg = checkpoint_config(ckpt)
        cfg.eval.checkpoint = checkpoint_kind(ckpt)  # what was evaluated, in the settings recorded with the results
        for k, v in (eval_overrides or {}).items():
            if v is not None:
                cfg.set(f"eval.{k}", v)
        root = Path(resolve_data_root(data_root if data_root is not None else cfg.data.root, announce=say))
        index = index_dataset_cached(root, skip_bad=cfg.data.skip_bad, announce=say)
        if split == "all":
            # An external test set: every patient of the data. Patients the model saw are flagged, not hidden.
            patients = list(index.patients)
            seen = sorted(set(patients) & (set(ckpt["split"]["train"]) | set(ckpt["split"]["val"])))
            if seen:
                say(f"warning: {len(seen)} of these {len(patients)} patients were used to train or validate this "
                    f"model ({', '.join(seen[:3])}{' …' if len(seen) > 3 else ''}): their figures are not a test")
        else:
            patients = split_patients(ckpt, split)
        missing = [p for p in patients if p not in index.by_patient()]
        if missing:
            raise BrainsegError(
                f"the {split} patients of {run_dir} are not all in {root}: missing {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''}"
            )
        return cls(run_dir, ckpt, cfg, root, index, split, patients)

    def predictor(self, *, device: str = "auto", batch_size: int = 16) -> Any:
        """A `Predictor` of this checkpoint with the run's own TTA setting."""
        from brainseg.inference.predictor import Predictor

        return Predictor([self.ckpt], device=device, tta=self.cfg.eval.tta, batch_size=batch_size)
