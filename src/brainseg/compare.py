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

import numpy as np

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
) -> dict[str, Any]:
    """Run (or finish) the comparison of `models` with shared settings `cfg` in folder `out`."""
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
                                   n_examples=n_examples, report=report)
    return _compare_locked(cfg, out, models, command=command, announce=announce, n_examples=n_examples,
                           report=report)


def _compare_locked(
    cfg: RunConfig, out: Path, models: list[str], *, command: str, announce: Callable[[str], None],
    n_examples: int, report: bool,
) -> dict[str, Any]:
    from brainseg.data import splits as S
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.protocol import require_same_settings, result_settings, settings_hash
    from brainseg.training import distributed as dist_utils
    from brainseg.training.run import CONFIG_NAME, run_is_finished, train_run
    from brainseg.training.rundata import load_run_data

    cfg.validate()

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
    for i, model in enumerate(models, 1):
        for k, run_dir in enumerate(dirs[model]):
            label = f"[{i}/{len(models)}] {model}" + (f" fold {k + 1}/{folds}" if folds else "")
            mcfg = RunConfig.from_dict(cfg.to_dict())
            mcfg.model.name = model
            mcfg.data.fold = k
            split_id = all_splits[k if folds else 0].id
            if committed_results(run_dir, mcfg, split_id):
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

    result: dict[str, Any] = {"out": str(out), "models": models}
    if dist_utils.is_main():
        missing = [d for runs in dirs.values() for d in runs if not (d / "checkpoint_best.pt").is_file()]
        if not missing:
            write_examples(out, data.index, dirs, n_per_kind=n_examples)
        elif examples_complete(out, models):
            announce(f"{len(missing)} run(s) have no checkpoint here (e.g. {missing[0]}): keeping the example "
                     f"slices already in {out / 'examples'}")
        else:
            announce(f"{len(missing)} run(s) have no checkpoint here (e.g. {missing[0]}): the example figure "
                     "is left out (it needs every model)")
        if report:
            from brainseg.reporting import build_report

            result["report"] = {k: str(v) for k, v in build_report(out).items()}
    dist_utils.barrier()
    return result


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


def examples_complete(out: Path, models: list[str]) -> bool:
    """examples/ holds the slices and every model's predictions (what the report's figure needs)."""
    ex = out / "examples"
    return (ex / "slices.npz").is_file() and all((ex / f"{m}.npz").is_file() for m in models)


def write_examples(out: Path, index: Any, dirs: dict[str, list[Path]], *, n_per_kind: int = 2) -> None:
    """Pick test slices with tumour (best, typical, worst by mean Dice over models) and save every
    model's probabilities and masks for them (made as evaluation made them), so the report can
    draw image | truth | predictions without a model."""
    from brainseg.evaluation.evaluate import load_patient

    models = list(dirs)
    scores: dict[tuple[str, int], list[float]] = {}
    owner: dict[tuple[str, int], dict[str, Path]] = {}
    for m in models:
        for run_dir in dirs[m]:
            for row in read_csv(run_dir / "eval_test" / "per_slice.csv"):
                if float(row["true_area"] or 0) <= 0:
                    continue
                key = (row["patient"], int(row["slice"]))
                scores.setdefault(key, []).append(float(row["dice"]))
                owner.setdefault(key, {})[m] = run_dir
    keys = [k for k, v in scores.items() if len(v) == len(models)]
    if not keys:
        return
    keys.sort(key=lambda k: (np.mean(scores[k]), k))
    n = min(n_per_kind, max(1, len(keys) // 3))
    mid = len(keys) // 2
    chosen = [(k, "best") for k in keys[::-1][:n]] + [(k, "typical") for k in keys[mid - n // 2 : mid - n // 2 + n]]
    chosen += [(k, "worst") for k in keys[:n]]
    seen: set[tuple[str, int]] = set()
    chosen = [(k, kind) for k, kind in chosen if not (k in seen or seen.add(k))]
    by = index.by_patient()
    images, masks = [], []
    for (patient, slice_no), _ in chosen:
        recs = [r for r in by[patient] if r.slice == slice_no]
        img, msk = load_patient(recs)
        images.append(img[0])
        masks.append(msk[0])
    if len({im.shape for im in images}) > 1:
        return  # mixed native sizes: no common grid
    ex = out / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    _save_npz(
        ex / "slices.npz",
        images=np.stack(images),
        masks=np.stack(masks).astype(np.uint8),
        patients=np.array([k[0] for k, _ in chosen]),
        slices=np.array([k[1] for k, _ in chosen]),
        kinds=np.array([kind for _, kind in chosen]),
    )
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # patient → decoded slices, shared by models
    for m in models:
        probs: list[np.ndarray | None] = [None] * len(chosen)
        preds: list[np.ndarray | None] = [None] * len(chosen)
        groups: dict[Path, list[int]] = {}
        for j, (key, _) in enumerate(chosen):
            groups.setdefault(owner[key][m], []).append(j)
        for run_dir, idx in groups.items():  # one model load per run (fold)
            for j, p, b in _predict_as_evaluated(run_dir, index, [chosen[j][0] for j in idx], volumes):
                probs[idx[j]], preds[idx[j]] = p, b
        _save_npz(ex / f"{m}.npz", probs=np.stack(probs).astype(np.float16), preds=np.stack(preds).astype(np.uint8))


def _predict_as_evaluated(
    run_dir: Path, index: Any, keys: list[tuple[str, int]], volumes: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(position in `keys`, probabilities, mask) of each (patient, slice), made exactly as
    `evaluate_run` made them: the run's TTA, and its binarisation of the whole patient volume
    (so a largest-component rule sees every slice), so a figure's Dice is per_slice.csv's."""
    from brainseg.evaluation.evaluate import load_patient
    from brainseg.evaluation.session import EvalRun
    from brainseg.inference.postprocess import binarize

    run = EvalRun.load(run_dir, "best", index.root, announce=lambda _m: None)
    predictor = run.predictor()
    by = index.by_patient()
    out = []
    for patient in dict.fromkeys(p for p, _ in keys):
        if patient not in volumes:
            volumes[patient] = load_patient(by[patient])
        probs = predictor.predict(volumes[patient][0], source=patient)
        pred = binarize(probs, run.cfg.eval)
        numbers = [r.slice for r in by[patient]]
        out += [(j, probs[numbers.index(s)], pred[numbers.index(s)]) for j, (p, s) in enumerate(keys) if p == patient]
    return out


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    import io

    from brainseg.fileio import write_bytes_atomic

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())
