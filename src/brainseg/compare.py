"""Train and evaluate several architectures under one protocol, then build the report.

Every model gets the same patient-level split (or the same folds), the same data pipeline, the
same optimiser, schedule, loss, epochs and seed; each is evaluated on the same test patients at
native resolution. Finished runs are reused, interrupted ones resumed, so re-running the same
command picks up where a killed comparison stopped — but only when every result-changing setting
(`brainseg.protocol.result_settings`) and the split match; otherwise it names the differences and
stops. The folder is locked while a comparison writes it.

Folder layout (what `brainseg report` reads; see brainseg.reporting):
    <out>/protocol.json, splits.json, runs/<model>[/fold<k>]/…, examples/, leaderboard.*, figures/,
    report.html, report.md
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainseg import __version__
from brainseg.config import RunConfig
from brainseg.errors import BrainsegError
from brainseg.fileio import read_csv, read_json, write_json_atomic

DEFAULT_MODELS = ("unet", "attention_unet", "segnet", "deeplabv3plus", "pspnet")

# The out-of-the-box comparison on the built-in phantoms: small models at 96×96 so that all five
# train and evaluate on a 2-core laptop CPU in a few minutes (see README for measured times).
# 96×96 rather than 64×64 because PSPNet's output stride of 8 leaves too coarse a grid at 64 for
# the phantoms' small lesions; tumour slices are drawn twice as often to speed learning.
PHANTOM_PRESET: dict[str, dict[str, Any]] = {
    "data": {"size": 96, "tumour_weight": 2.0},
    "model": {"width": 8},
    "train": {"epochs": 20, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.5},
}


def _say(msg: str) -> None:
    from brainseg.training import distributed as dist_utils

    if dist_utils.is_main():  # under torchrun, one copy of each message
        print(msg, file=sys.stderr, flush=True)


def run_dirs(out: Path, models: list[str], folds: int) -> dict[str, list[Path]]:
    if folds > 1:
        return {m: [out / "runs" / m / f"fold{k}" for k in range(folds)] for m in models}
    return {m: [out / "runs" / m] for m in models}


def compare(
    cfg: RunConfig,
    out: str | Path,
    models: list[str],
    *,
    command: str = "",
    announce: Callable[[str], None] = _say,
    n_examples: int = 2,
    report: bool = True,
    robustness: list[int] | None = None,
    only_fold: int | None = None,
) -> dict[str, Any]:
    """Run (or finish) the comparison of `models` with shared settings `cfg` in folder `out`.

    `only_fold` (k-fold or several splits only) trains and evaluates that fold of each model and
    nothing else, so that a study too long for one sitting is run a fold at a time; examples,
    robustness and the report wait until every fold of a model is finished.

    As soon as all of a model's runs are finished, its example slices are written (and, with
    `robustness`, severities of every perturbation, `[]` for all, it is run under them into
    out/robustness/ unless that holds its results already) while its checkpoints are on this
    machine: a study finished over several machines keeps each model's part.
    """
    from brainseg.models import list_models
    from brainseg.training import distributed as dist_utils

    known = list_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise BrainsegError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(models)) != len(models):
        raise BrainsegError(f"--models lists a model twice: {','.join(models)}")
    out = Path(out)
    if dist_utils.is_main():
        from brainseg.locks import folder_lock

        with folder_lock(out, "comparison folder"):
            return _compare_locked(cfg, out, models, command=command, announce=announce,
                                   n_examples=n_examples, report=report, robustness=robustness, only_fold=only_fold)
    return _compare_locked(cfg, out, models, command=command, announce=announce, n_examples=n_examples,
                           report=report, robustness=robustness, only_fold=only_fold)


def _compare_locked(
    cfg: RunConfig, out: Path, models: list[str], *, command: str, announce: Callable[[str], None],
    n_examples: int, report: bool, robustness: list[int] | None, only_fold: int | None = None,
) -> dict[str, Any]:
    from brainseg.data import splits as S
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.protocol import require_same_settings, result_settings, settings_hash
    from brainseg.training import distributed as dist_utils
    from brainseg.training.checkpoint import run_checkpoint
    from brainseg.training.run import CONFIG_NAME, run_is_finished, train_run
    from brainseg.training.rundata import load_run_data

    cfg.validate()
    if cfg.train.init_weights:
        raise BrainsegError(
            f"train.init_weights={cfg.train.init_weights}: compare trains every model and fold from one configuration, "
            "so every one would start from that checkpoint (another architecture's, or a model that saw the other "
            "folds' test patients); fine-tune with `brainseg train --set train.init_weights=… --fold K` per fold")

    # One split for all models, frozen in <out>/splits.json before any training starts.
    if not cfg.data.split_file:
        data = load_run_data(cfg, out, announce=announce)
        cfg.data.split_file = str(out / "splits.json")
    else:
        data = load_run_data(cfg, None, announce=announce)
    cfg.data.root = str(data.root)
    all_splits = S.load_splits(cfg.data.split_file, patients=data.index.patients)
    # k-fold, leave-each-institution-out, or a user's file with several splits: one run per split.
    folds = len(all_splits) if len(all_splits) > 1 else 0
    if only_fold is not None and not folds:  # a fold out of range was refused by load_run_data
        raise BrainsegError(f"--fold {only_fold}: this comparison has no folds; --fold needs --folds K, "
                            "--holdout-institution all or a split file with several splits")
    cfg.data.fold = 0  # which fold is a run's setting (runs/<model>/fold<k>), not the comparison's
    summary = data.index.summary()
    protocol = {
        "models": models,
        "config": cfg.to_dict(),
        "data": {k: summary[k] for k in ("root", "patients", "slices", "tumour_slices", "institutions") if k in summary},
        "split": all_splits[0].to_dict() if not folds else None,
        "folds": folds or None,
        "splits": [s.to_dict() for s in all_splits],
        "settings_hash": settings_hash(result_settings(cfg), [s.id for s in all_splits]),
        "command": command,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "brainseg_version": __version__,
    }
    protocol_path = out / "protocol.json"
    if protocol_path.is_file():
        old = read_json(protocol_path)
        remedy = f"use another --out (or delete {protocol_path}) to start a new comparison"
        require_same_settings(old.get("config", {}), protocol["config"], f"the comparison in {out}", remedy)
        if [s.get("id") for s in old.get("splits") or []] != [s.id for s in all_splits]:
            raise BrainsegError(f"the comparison in {out} was made on another split; {remedy}")
        protocol["created"] = old.get("created", protocol["created"])
        protocol["models"] = list(dict.fromkeys(old.get("models", []) + models))
    if dist_utils.is_main():
        write_json_atomic(protocol_path, protocol)

    dirs = run_dirs(out, models, folds)
    status: dict[str, str] = {}  # example files per model (evaluation.examples.write_examples)
    unrepeatable: set[str] = set()  # models whose committed runs this machine could not repeat
    for i, model in enumerate(models, 1):
        for k, run_dir in enumerate(dirs[model]):
            if only_fold is not None and k != only_fold:
                continue
            label = f"[{i}/{len(models)}] {model}" + (f" fold {k + 1}/{folds}" if folds else "")
            mcfg = RunConfig.from_dict(cfg.to_dict())
            mcfg.model.name = model
            mcfg.data.fold = k
            split_id = all_splits[k if folds else 0].id
            if committed_results(run_dir, mcfg, split_id):
                if (robustness is not None and not robustness_done(out, model)
                        and not run_checkpoint(run_dir).is_file() and dist_utils.world_size() == 1):
                    if model in unrepeatable:  # this machine already left another fold's curve
                        announce(f"{label}: checkpoints not here, and an earlier fold was not repeated on this "
                                 "machine: not training it again")
                    elif not remake_checkpoints(run_dir, mcfg, label, announce):
                        unrepeatable.add(model)
                else:
                    announce(f"{label}: result files present and matching the protocol, skipping training and "
                             f"evaluation ({run_dir})")
                continue
            if (run_dir / CONFIG_NAME).is_file():  # a run from elsewhere, or from an older protocol
                require_same_settings(read_json(run_dir / CONFIG_NAME), mcfg.to_dict(), f"run {run_dir}",
                                      f"delete it (or use another --out) to train {model} under this protocol")
            if run_is_finished(run_dir):
                announce(f"{label}: already trained, reusing {run_dir}")
            else:
                resume = (run_dir / "checkpoint_last.pt").is_file()
                announce(f"{label}: {'resuming' if resume else 'training'} → {run_dir}")
                train_run(mcfg, run_dir, resume=resume)
            if dist_utils.is_main() and not (run_dir / "eval_test" / "summary.json").is_file():
                s = evaluate_run(run_dir, data_root=str(data.root), progress=True)
                d = s["metrics"]["dice"]["per_patient"]["mean"]
                announce(f"{label}: test Dice per patient {d:.4f} ({s['n_patients']} patients)")
            dist_utils.barrier()
        if only_fold is not None:
            done = sum((d / "eval_test" / "summary.json").is_file() for d in dirs[model])
            if done < len(dirs[model]):
                announce(f"[{i}/{len(models)}] {model}: {done} of {len(dirs[model])} folds finished; its examples"
                         + (", robustness" if robustness is not None else "") + " and the report wait for the rest "
                         "(run the other folds, or the comparison without --fold)")
                report = False
                continue
        if dist_utils.is_main():  # while this model's checkpoints are here
            from brainseg.evaluation.examples import write_examples

            # over every model of the study (protocol.json), so a pool that changed refreshes them all
            status = write_examples(out, data.index, run_dirs(out, protocol["models"], folds), n_per_kind=n_examples,
                                    announce=announce)
            if robustness is not None:
                model_robustness(out, model, dirs[model], robustness, device=cfg.train.device, announce=announce)
        dist_utils.barrier()

    result: dict[str, Any] = {"out": str(out), "models": models}
    if dist_utils.is_main():
        # the examples as the call after the last model left them
        kept = [m for m, st in status.items() if st == "kept"]
        missing = [m for m, st in status.items() if st == "missing"]
        if kept:
            announce(f"keeping the example slices of {', '.join(kept)} in {out / 'examples'}")
        if missing:
            announce(f"{', '.join(missing)}: no checkpoints here and no example file for these slices: "
                     "left out of the example figure (a machine with its checkpoints adds it on a re-run)")
        if report:
            from brainseg.reporting import build_report

            result["report"] = {k: str(v) for k, v in build_report(out).items()}
    dist_utils.barrier()
    return result


def robustness_done(out: Path, model: str) -> bool:
    """out/robustness/robustness.json holds `model`'s results."""
    path = out / "robustness" / "robustness.json"
    return path.is_file() and model in (read_json(path).get("models") or {})


class _NotRepeated(Exception):
    """A remade run left the committed curve (carries the first differing pair of rows)."""


class _CaughtUp(Exception):
    """A remade run has repeated every committed epoch."""


def remake_checkpoints(run_dir: Path, cfg: RunConfig, label: str, announce: Callable[[str], None]) -> bool:
    """Train a fold whose result files are committed again, for its checkpoints (a study finished
    on several machines keeps no weights), in run_dir/.remake; training is deterministic under the
    protocol, so the epochs must repeat the committed history.csv (losses and validation Dice to 5
    digits) before its checkpoints join the run. Each epoch is checked as it ends, so a machine that
    cannot repeat the run (another CPU's float rounding) learns it after one epoch, not after the
    whole training; the remake ends once it has repeated every committed epoch (a run the time
    limit stopped early included). The committed result files are left as they are. Returns
    whether the checkpoints were taken."""
    import itertools
    import os
    import shutil

    from brainseg.training.run import train_run

    def curve(path: Path) -> list[tuple[str, ...]]:
        if not path.is_file():
            return []
        return [(r["epoch"], *(f"{float(r[k]):.5g}" for k in ("train_loss", "val_loss", "val_dice")))
                for r in read_csv(path)]

    committed = curve(run_dir / "history.csv")
    tmp = run_dir / ".remake"

    def check(_row: dict[str, Any] | None = None) -> None:
        """The remade epochs so far (as written to its history.csv) against the committed ones."""
        again = curve(tmp / "history.csv")
        pairs = itertools.zip_longest(committed[:len(again)], again, fillvalue=())
        first = next(((a, b) for a, b in pairs if a != b), None)
        if first is not None:
            raise _NotRepeated(first)
        if committed and len(again) == len(committed):
            raise _CaughtUp

    def refuse(first: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
        def show(row: tuple[str, ...]) -> str:
            return "no such epoch" if not row else "train loss {1}, val loss {2}, val Dice {3}".format(*row)

        if first[1]:
            why = (f"did not repeat the committed run at epoch {first[1][0]} (committed: {show(first[0])}; now: "
                   f"{show(first[1])}; another CPU, thread count or library version?), so it stopped there")
        else:  # every remade epoch matched, but training ended before the committed run did
            why = (f"stopped after epoch {len(curve(tmp / 'history.csv'))}, where the committed run went on to epoch "
                   f"{len(committed)} (train.time_limit_minutes ends a run at another epoch on a slower machine)")
        announce(f"{label}: training again {why}: its checkpoints are left in {tmp}, not used (delete that folder to "
                 f"try again). To perturb runs trained on this machine instead, run the study into a copy of its "
                 f"folder without runs/{cfg.model.name} and bring back its robustness/ folder (the report names "
                 "such runs and gives both clean Dice figures)")
        return False

    resume = (tmp / "checkpoint_last.pt").is_file()
    try:
        try:
            if resume:
                check()  # a remake left by an earlier call: only resumed while it still follows the curve
            announce(f"{label}: result files present, checkpoints not here: training again for them → {tmp}")
            train_run(cfg, tmp, resume=resume, on_epoch=check)
            check()
        except _CaughtUp:
            pass
        else:
            n = len(curve(tmp / "history.csv"))
            raise _NotRepeated(((committed[n:] or [()])[0], ()))  # it ended before the committed run did
    except _NotRepeated as exc:
        return refuse(exc.args[0])
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        os.replace(tmp / name, run_dir / name)
    shutil.rmtree(tmp)
    announce(f"{label}: the run was repeated epoch for epoch; its checkpoints are in {run_dir}")
    return True


def model_robustness(out: Path, model: str, runs: list[Path], severities: list[int], *, device: str,
                     announce: Callable[[str], None]) -> None:
    """Run `model` (its fold runs pooled) under every perturbation at `severities` ([] for all) into
    out/robustness/, keeping the other models' rows; skipped when the results are there already."""
    from brainseg.evaluation.robustness import Target, run_robustness
    from brainseg.reporting.plots import plot_model_curves
    from brainseg.training.checkpoint import run_checkpoint

    rob = out / "robustness"
    if robustness_done(out, model):
        announce(f"{model}: robustness results present in {rob}, kept")
        return
    if not all(run_checkpoint(r).is_file() for r in runs):
        announce(f"{model}: no checkpoints here, so no robustness run (a machine with them adds it on a re-run)")
        return
    announce(f"{model}: robustness under every perturbation at severities {severities or 'all'} → {rob}")
    summary = run_robustness([Target(model, runs)], rob, severities=severities or None, device=device,
                             announce=announce, merge=True)
    plot_model_curves(summary["rows"], model, rob / f"robustness_{model}.png")
    announce(f"{model}: robustness done in {summary['seconds']} s; mean Dice drop {summary['mean_dice_drop'][model]:.4f}")


#: The files of a finished fold that the report reads; committed (docs/study), unlike checkpoints.
RESULT_FILES = ("train_summary.json", "history.csv", "config.json", "eval_test/summary.json",
                "eval_test/per_patient.csv", "eval_test/per_slice.csv", "eval_test/detection.csv")


def committed_results(run_dir: Path, cfg: RunConfig, split_id: str) -> bool:
    """True when every result file of `run_dir` is present and both summaries record this
    protocol's hash (settings and split), so the fold needs neither training nor evaluation —
    its checkpoints may be absent (another machine trained it).

    Raises:
        BrainsegError: the files are there but were made under other settings or on another split
            (the differing settings are named).
    """
    from brainseg.protocol import require_same_settings, result_settings, settings_hash

    if not all((run_dir / f).is_file() for f in RESULT_FILES):
        return False
    if "ensemble" in read_json(run_dir / "eval_test" / "summary.json"):
        raise BrainsegError(f"{run_dir / 'eval_test'} holds an ensemble's results (`brainseg evaluate` of several "
                            f"runs), not this run's: move them elsewhere to evaluate {cfg.model.name} here")
    want = settings_hash(result_settings(cfg), split_id)
    recorded = {f: read_json(run_dir / f).get("settings_hash") for f in ("train_summary.json", "eval_test/summary.json")}
    if all(h == want for h in recorded.values()):
        return True
    if any(h is None for h in recorded.values()):
        return False  # results from before hashes were recorded: trained again
    # The hashes differ: either a setting differs, or brainseg gained a setting since (a hash
    # covers today's defaults too). Compare the settings themselves, missing ones at their defaults.
    from dataclasses import asdict

    from brainseg.config import EvalConfig

    remedy = f"delete it (or use another --out) to train {cfg.model.name} under this protocol"
    require_same_settings(read_json(run_dir / "config.json"), cfg.to_dict(), f"run {run_dir}", remedy)
    split_ids = {read_json(run_dir / f).get("split_id") for f in recorded}
    if split_ids != {split_id}:
        raise BrainsegError(
            f"run {run_dir} was made on split {', '.join(sorted(map(str, split_ids)))}, not {split_id} "
            f"(recorded protocol hash {', '.join(sorted(map(str, set(recorded.values()))))}, expected {want}); {remedy}"
        )
    used = {**asdict(EvalConfig()), **(read_json(run_dir / "eval_test" / "summary.json").get("eval_config") or {})}
    differences = [f"eval.{k}: {used[k]!r} → {v!r}" for k, v in asdict(cfg.eval).items() if used.get(k) != v]
    if differences:
        raise BrainsegError(
            f"{run_dir / 'eval_test'} was evaluated with other settings ({'; '.join(differences)}), "
            f"e.g. by `brainseg evaluate` with flags; delete that folder to evaluate {cfg.model.name} again under "
            "this protocol"
        )
    return True  # the same settings and split, recorded before a setting was added (at its default)
