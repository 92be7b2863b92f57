"""A copy of a `train.ema` run whose checkpoints hold the weights as trained, to score them beside the average.

A run trained with `train.ema` saves the moving average as each checkpoint's `state_dict` (what `brainseg
evaluate`, `robustness`, `predict` and `bundle` load) and the weights as trained as `trained_state_dict`. The
latter are exactly the weights of the same run without the average (the average never touches the
optimisation), so scoring both compares the average with the very training it averages:

    python benchmarks/trained_weights.py RUN/fold2 RUN_TRAINED/fold2
    brainseg evaluate RUN/fold2 --checkpoint last --out EVAL_EMA/fold2
    brainseg evaluate RUN_TRAINED/fold2 --checkpoint last --out EVAL_TRAINED/fold2

The copy holds checkpoint_best.pt and checkpoint_last.pt (where the run has them) with `state_dict` set to
`trained_state_dict` and the average's keys dropped, and the run's config.json, history.csv and
train_summary.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brainseg.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def trained_copy(run: Path, out: Path) -> list[Path]:
    """Write the copy; returns the checkpoints written. Raises SystemExit naming a run without an average."""
    names = [n for n in ("checkpoint_best.pt", "checkpoint_last.pt") if (run / n).is_file()]
    if not names:
        raise SystemExit(f"{run}: no checkpoint_best.pt or checkpoint_last.pt")
    if out.resolve() == run.resolve():
        raise SystemExit(f"{out}: the copy must go to another folder than the run")
    written = []
    for name in names:
        ckpt = load_checkpoint(run / name)
        if "trained_state_dict" not in ckpt:
            raise SystemExit(f"{run / name} holds no trained_state_dict: the run was not trained with train.ema")
        ckpt.pop("path", None)  # added by load_checkpoint
        ckpt["state_dict"] = ckpt.pop("trained_state_dict")
        ckpt.pop("ema_steps", None)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / name, ckpt)
        written.append(out / name)
    for f in ("config.json", "history.csv", "train_summary.json"):
        if (run / f).is_file():
            shutil.copy(run / f, out / f)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder trained with train.ema")
    ap.add_argument("out", type=Path, help="where the copy goes (a new folder)")
    args = ap.parse_args(argv)
    for p in trained_copy(args.run, args.out):
        print(f"{p}: the weights as trained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
