"""One table of bad inputs and faults, each run through the command line as a user would.

Every row of `CASES` is (id, setup → argv, expected exit code, words the stderr must hold, and an
optional check of what was or was not written). The promise each row tests: no traceback, a
message naming the file or setting and what is wrong, the documented exit code (0 done, 1 an
operating-system refusal or some predict cases failed, 2 bad input or settings), nothing lost
and nothing silently mixed. Fixtures are shared: the session's tiny phantoms and the 2-epoch
tiny UNet run (tests/conftest.py); the few rows that train run 1 epoch of at most 6 batches.
"""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from brainseg import cli
from brainseg.fileio import read_json, write_json_atomic
from helpers_runs import tiny_cfg

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg" / "kaggle_3m"
#: A real patient whose three channels are identical in every slice (FLAIR copied into both
#: missing sequences): predict refused it as "1 channel" before.
SAME_CHANNELS_PATIENT = "TCGA_HT_7877_19980917"
UNWRITABLE = Path("/sys/brainseg-reliability-test")  # EPERM even for root (sysfs)


@dataclass
class Ctx:
    """What a row's setup and check get: a fresh tmp folder and the shared fixtures."""

    tmp: Path
    phantoms: Path  # the session's tiny phantom kaggle_3m folder (64×64 slices)
    run: Path  # the session's tiny 2-epoch UNet run (32×32): read it, never write it
    monkeypatch: pytest.MonkeyPatch
    marker: Path = field(init=False)  # what a malicious checkpoint's payload would create
    held: list = field(default_factory=list)  # context managers to close after the row

    def __post_init__(self) -> None:
        self.marker = self.tmp / "PAYLOAD_RAN"

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoint_best.pt"

    def tiny_train(self, out: Path, *extra: str) -> list[str]:
        return ["train", "--data", str(self.phantoms), "--model", "unet", "--size", "32", "--width", "4",
                "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(out),
                "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25", *extra]


@dataclass(frozen=True)
class Case:
    """One row: `setup` prepares the fault and returns the command line; `words` must all appear in
    what the command printed; an exit code other than 0 must come with exactly one error line
    (``partial``: a predict batch whose failed cases are listed instead)."""

    id: str
    setup: Callable[[Ctx], list[str]]
    code: int
    words: tuple[str, ...]
    check: Callable[[Ctx, str], None] | None = None
    partial: bool = False


def _not_mentioned(word: str) -> Callable[[Ctx, str], None]:
    def check(ctx: Ctx, err: str) -> None:
        assert word not in err, err

    return check


# ---------------------------------------------------------------------------------------------
# building blocks


def _first_slice(ctx: Ctx) -> np.ndarray:
    patient = sorted(p for p in ctx.phantoms.iterdir() if p.is_dir())[0]
    return tifffile.imread(sorted(patient.glob("*_1.tif"))[0])


def _phantom_root_with_broken_slice(ctx: Ctx, root: Path) -> Path:
    """Copy one phantom patient into `root` and truncate its third slice; returns that slice."""
    patient = sorted(p for p in ctx.phantoms.iterdir() if p.is_dir())[0]
    shutil.copytree(patient, root / patient.name)
    bad = root / patient.name / f"{patient.name}_3.tif"
    bad.write_bytes(bad.read_bytes()[:300])
    return bad


def _real_root(ctx: Ctx) -> Path:
    if not (REAL / SAME_CHANNELS_PATIENT).is_dir():
        pytest.skip(f"real LGG development data not found at {REAL}")
    root = ctx.tmp / "mixed" / "kaggle_3m"
    root.mkdir(parents=True)
    (root / SAME_CHANNELS_PATIENT).symlink_to(REAL / SAME_CHANNELS_PATIENT, target_is_directory=True)
    _phantom_root_with_broken_slice(ctx, root)
    return root


def _check_real_and_broken(ctx: Ctx, err: str) -> None:
    out = ctx.tmp / "pred"
    slices = sorted(p for p in (REAL / SAME_CHANNELS_PATIENT).glob("*.tif") if not p.stem.endswith("_mask"))
    img = tifffile.imread(slices[len(slices) // 2])
    assert img.shape[-1] == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert len(list((out / SAME_CHANNELS_PATIENT).glob("*_mask.tif"))) == len(slices)  # every slice written
    info = read_json(out / "predict.json")
    (failure,) = info["failed"]
    assert failure["file"].endswith("_3.tif") and "truncated" in failure["error"]
    assert info["status"] == "incomplete" and info["cases_done"] == 1 and info["ignored"] == []


def _predict_real(ctx: Ctx, *extra: str) -> list[str]:
    return ["predict", "-c", str(ctx.run), str(_real_root(ctx)), "--out", str(ctx.tmp / "pred"), "--device", "cpu",
            "--quiet", *extra]


def _grey_png(ctx: Ctx, same_rgb: bool) -> Path:
    flair = _first_slice(ctx)[..., 1]
    path = ctx.tmp / ("same.png" if same_rgb else "grey.png")
    Image.fromarray(np.repeat(flair[..., None], 3, axis=2) if same_rgb else flair).save(path)
    return path


def _predict(ctx: Ctx, inp: Path, out: Path | None = None, *extra: str) -> list[str]:
    return ["predict", "-c", str(ctx.run), str(inp), "--out", str(out or ctx.tmp / "pred"), "--device", "cpu",
            "--quiet", *extra]


def _previous_prediction(ctx: Ctx) -> Path:
    """--out holding an earlier prediction of two phantom patients and a file of the user's."""
    root = ctx.tmp / "two" / "kaggle_3m"
    for p in sorted(p for p in ctx.phantoms.iterdir() if p.is_dir())[:2]:
        shutil.copytree(p, root / p.name)
    assert cli.main(_predict(ctx, root)) == 0
    (ctx.tmp / "pred" / "my_notes.txt").write_text("keep me")
    shutil.rmtree(root / sorted(p.name for p in root.iterdir())[1])  # the next input has one patient
    return root


def _check_overwrite(ctx: Ctx, err: str) -> None:
    out = ctx.tmp / "pred"
    kept = sorted(p.name for p in (ctx.tmp / "two" / "kaggle_3m").iterdir())
    assert (out / "my_notes.txt").read_text() == "keep me"  # not predict's: kept
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "overlays")
    assert folders == kept, folders  # the first run's second patient is gone, with its masks
    assert {r for r in (line.split(",")[1] for line in (out / "volumes.csv").read_text().splitlines()[1:])} == set(kept)


class _Evil:
    """Unpickling this runs a shell command: what a crafted checkpoint can do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_checkpoint(ctx: Ctx, path: Path | None = None) -> Path:
    ck = torch.load(ctx.ckpt, weights_only=True)
    ck["config"] = {**ck["config"], "note": _Evil(ctx.marker)}
    path = path or ctx.tmp / "evil.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)
    return path


def _evil_run(ctx: Ctx) -> Path:
    run = ctx.tmp / "evil_run"
    shutil.copytree(ctx.run, run)
    _evil_checkpoint(ctx, run / "checkpoint_best.pt")
    return run


def _payload_did_not_run(ctx: Ctx, err: str) -> None:
    assert not ctx.marker.exists(), "the checkpoint's pickled payload ran"
    assert "refused" in err and ("posix.system" in err or "os.system" in err), err


def _legacy_checkpoint(ctx: Ctx) -> Path:
    """A checkpoint as brainseg wrote it before the weights-only rule: NumPy's RNG state as an array."""
    ck = torch.load(ctx.ckpt, weights_only=True)
    ck["rng"]["numpy"] = np.random.get_state()
    torch.save(ck, ctx.tmp / "legacy.pt")
    return ctx.tmp / "legacy.pt"


def _mismatched_checkpoint(ctx: Ctx) -> Path:
    ck = torch.load(ctx.ckpt, weights_only=True)
    ck["model"] = {**ck["model"], "width": 8}
    torch.save(ck, ctx.tmp / "wide.pt")
    return ctx.tmp / "wide.pt"


def _short_message(ctx: Ctx, err: str) -> None:
    assert len(err.splitlines()) <= 3 and len(err) < 800, err


def _copy_run(ctx: Ctx) -> Path:
    run = ctx.tmp / "run"
    shutil.copytree(ctx.run, run)
    return run


def _hold_lock(ctx: Ctx, folder: Path) -> Path:
    from brainseg.locks import folder_lock

    lock = folder_lock(folder)
    lock.__enter__()  # another open file description: flock refuses it like another process
    ctx.held.append(lock)
    return folder


def _stale_lock(ctx: Ctx) -> list[str]:
    """A process that took the run's lock and was killed (SIGKILL) while holding it."""
    run = ctx.tmp / "stale"
    code = ("import os, signal; from brainseg.locks import folder_lock\n"
            f"with folder_lock({str(run)!r}):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9 and (run / ".brainseg.lock").is_file()
    return ctx.tiny_train(run, "--set", "train.max_batches_per_epoch=2")


def _killed_before_first_epoch(ctx: Ctx) -> list[str]:
    run = ctx.tmp / "early"
    cfg = tiny_cfg(ctx.phantoms, epochs=1)
    cfg.train.max_batches_per_epoch = 2
    write_json_atomic(run / "config.json", cfg.to_dict())  # what a run killed while indexing leaves
    return ["train", "--resume", "--out", str(run)]


def _fake_comparison(ctx: Ctx, **changes: dict) -> Path:
    """A comparison folder whose protocol.json has the settings of `_compare`'s flags but `changes`."""
    from brainseg.config import RunConfig

    cfg = RunConfig.from_dict({"data": {"root": str(ctx.phantoms), "size": 32, "val_fraction": 0.25,
                                        "test_fraction": 0.25},
                               "model": {"width": 4}, "train": {"epochs": 1, "device": "cpu"}})
    cfg.update(changes)
    out = ctx.tmp / "cmp"
    write_json_atomic(out / "protocol.json", {"config": cfg.to_dict(), "splits": []})
    return out


def _foreign_run(ctx: Ctx) -> Path:
    """A comparison whose runs/unet was trained elsewhere at another width."""
    out = ctx.tmp / "cmp"
    run = out / "runs" / "unet"
    shutil.copytree(ctx.run, run)
    return out


def _compare(ctx: Ctx, out: Path) -> list[str]:
    return ["compare", "--data", str(ctx.phantoms), "--models", "unet", "--size", "32", "--width", "4",
            "--epochs", "1", "--device", "cpu", "--out", str(out),
            "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25"]


def _no_run_folder(ctx: Ctx, err: str) -> None:
    assert not (ctx.tmp / "r").exists(), "the settings were checked only after the run folder was made"


def _yaml(ctx: Ctx, data: bytes) -> Path:
    path = ctx.tmp / "settings.yaml"
    path.write_bytes(data)
    return path


def _bad_train(*extra: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ctx.tiny_train(ctx.tmp / "r", *extra)


def _deny(ctx: Ctx, target: Path) -> Path:
    """Make `target` unreadable: chmod for a normal user; root reads anything, so refuse its opens."""
    if os.geteuid() != 0:
        target.chmod(0)
        ctx.held.append(_Restore(target))
        return target
    denied = str(target)
    real_open, real_iterdir, real_os_open = builtins.open, Path.iterdir, os.open

    def refuse(path: object) -> None:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", denied)

    def fake_open(file, *a, **k):
        refuse(file)
        return real_open(file, *a, **k)

    def fake_iterdir(self):
        refuse(self)
        return real_iterdir(self)

    def fake_os_open(path, *a, **k):
        refuse(path)
        return real_os_open(path, *a, **k)

    ctx.monkeypatch.setattr(builtins, "open", fake_open)
    ctx.monkeypatch.setattr(Path, "iterdir", fake_iterdir)
    ctx.monkeypatch.setattr(os, "open", fake_os_open)
    return target


@dataclass
class _Restore:
    path: Path

    def __exit__(self, *exc: object) -> None:
        self.path.chmod(0o755)


def _tiny_copy(ctx: Ctx) -> Path:
    root = ctx.tmp / "data" / "kaggle_3m"
    for p in sorted(p for p in ctx.phantoms.iterdir() if p.is_dir())[:3]:
        shutil.copytree(p, root / p.name)
    return root


def _renamed_copy(ctx: Ctx) -> Path:
    root = _tiny_copy(ctx)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    shutil.copytree(first, root / "copy of patient")
    return root


def _symlink_loop(ctx: Ctx) -> Path:
    root = _tiny_copy(ctx)
    (root / "loop").symlink_to(root / "loop")
    return root


def _listed_as_ignored(name: str) -> Callable[[Ctx, str], None]:
    def check(ctx: Ctx, err: str) -> None:
        assert read_json(ctx.tmp / "pred" / "predict.json")["ignored"] == [name]

    return check


def _broken_pipe(ctx: Ctx) -> list[str]:
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            raise OSError("no descriptor")  # the handler's dup2 is skipped, as under capture

    ctx.monkeypatch.setattr(sys, "stdout", ClosedPipe())
    return ["index", str(ctx.phantoms), "--json"]


def _leftover(ctx: Ctx) -> list[str]:
    """A process SIGKILLed in the middle of an atomic write of splits.json leaves its temp file."""
    folder = ctx.tmp / "splits"
    code = ("import os, signal; from brainseg.fileio import atomic_write\n"
            f"atomic_write({str(folder / 'splits.json')!r}, lambda f: (f.write(b'half'), f.flush(), "
            "os.kill(os.getpid(), signal.SIGKILL)))\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    (tmp,) = folder.glob(".splits.json.*.tmp")
    os.utime(tmp, (time.time() - 60, time.time() - 60))  # as old as it is when a user runs again
    return ["split", str(ctx.phantoms), "--out", str(folder / "splits.json")]


def _leftover_gone(ctx: Ctx, err: str) -> None:
    folder = ctx.tmp / "splits"
    assert sorted(p.name for p in folder.iterdir()) == ["splits.json"]


def _resume_extended(ctx: Ctx, err: str) -> None:
    summary = read_json(ctx.tmp / "run" / "train_summary.json")
    assert summary["epochs_run"] == 3 and read_json(ctx.tmp / "run" / "config.json")["train"]["epochs"] == 3
    assert not list((ctx.tmp / "run").glob(".*.tmp"))  # the planted leftover went with the first write


def _resume_copy_with(*extra: str, leftover: bool = False) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = _copy_run(ctx)
        if leftover:
            tmp = run / ".checkpoint_last.pt.k1ll3d.tmp"
            tmp.write_bytes(b"half a checkpoint")
            os.utime(tmp, (time.time() - 60, time.time() - 60))
        return ["train", "--resume", "--out", str(run), *extra]

    return setup


def _unchanged_run(ctx: Ctx, err: str) -> None:
    assert read_json(ctx.tmp / "run" / "config.json") == read_json(ctx.run / "config.json")


def _needs_unwritable() -> None:
    try:
        UNWRITABLE.mkdir()
    except OSError:
        return  # refused, as the rows need
    UNWRITABLE.rmdir()
    pytest.skip(f"{UNWRITABLE} can be created here; these rows need a folder the OS refuses")


def _unwritable(make: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        _needs_unwritable()
        return make(ctx)

    return setup


# ---------------------------------------------------------------------------------------------
# the table

P = "brainseg predict"
CASES: list[Case] = [
    # 1. valid data that broke predict; one failing case never stops a batch
    Case("predict-real-same-channels-and-broken-phantom", _predict_real, 1,
         (f"{P}: case", "_3.tif", "truncated", "1 of 2 case(s) failed"), _check_real_and_broken, partial=True),
    Case("predict-failed-case-skip-bad-exits-0", lambda c: _predict_real(c, "--skip-bad"), 0,
         ("_3.tif", "1 of 2 case(s) failed"), _check_real_and_broken),
    Case("predict-rgb-with-identical-channels-is-3-channels", lambda c: _predict(c, _grey_png(c, True)), 0, ()),
    Case("predict-grey-png-meets-the-channel-rule", lambda c: _predict(c, _grey_png(c, False)), 2,
         (f"{P}: error:", "grey.png has 1 channel", "--channels replicate")),
    Case("predict-into-a-non-empty-out", lambda c: _predict(c, _previous_prediction(c)), 2,
         ("is not empty", "my_notes.txt", "--overwrite")),
    Case("predict-overwrite-clears-only-its-own", lambda c: _predict(c, _previous_prediction(c), None, "--overwrite"),
         0, (), _check_overwrite),
    Case("predict-threshold-5", lambda c: _predict(c, _grey_png(c, True), None, "--threshold", "5"), 2,
         ("--threshold", "not a probability in [0, 1]")),
    Case("predict-batch-size-0", lambda c: _predict(c, _grey_png(c, True), None, "--batch-size", "0"), 2,
         ("--batch-size", "must be ≥ 1")),
    # 2. untrusted checkpoints never run code
    Case("predict-malicious-checkpoint", lambda c: _predict(c, _grey_png(c, True), None, "-c", str(_evil_checkpoint(c))),
         2, ("evil.pt refused", "brainseg never writes"), _payload_did_not_run),
    Case("evaluate-malicious-checkpoint", lambda c: ["evaluate", str(_evil_run(c)), "--device", "cpu"], 2,
         ("checkpoint_best.pt refused",), _payload_did_not_run),
    Case("export-malicious-checkpoint", lambda c: ["export", str(c.tmp / "m.onnx"), "-c", str(_evil_checkpoint(c))], 2,
         ("evil.pt refused",), _payload_did_not_run),
    Case("legacy-checkpoint-with-numpy-rng-still-loads",
         lambda c: ["predict", "-c", str(_legacy_checkpoint(c)), str(_grey_png(c, True)), "--out", str(c.tmp / "p"),
                    "--device", "cpu", "--quiet"], 0, ()),
    Case("weights-do-not-fit-the-model", lambda c: _predict(c, _grey_png(c, True), None, "-c", str(_mismatched_checkpoint(c))),
         2, ("wide.pt", "do not fit", "of another shape", "more)"), _short_message),
    Case("truncated-checkpoint",
         lambda c: (c.tmp.joinpath("cut.pt").write_bytes(c.ckpt.read_bytes()[:5000]),
                    _predict(c, _grey_png(c, True), None, "-c", str(c.tmp / "cut.pt")))[1],
         2, ("cut.pt cannot be read",)),
    # 3. runs that mixed silently
    Case("train-into-a-locked-run", lambda c: c.tiny_train(_hold_lock(c, c.tmp / "busy")), 2,
         ("busy is being written by another brainseg process", f"pid {os.getpid()}")),
    Case("stale-lock-of-a-killed-process-does-not-block", _stale_lock, 0, ("1 epochs",)),
    Case("compare-into-a-locked-folder", lambda c: _compare(c, _hold_lock(c, c.tmp / "cmp")), 2,
         ("comparison folder", "being written by another brainseg process")),
    Case("resume-with-another-lr", _resume_copy_with("--lr", "0.01"), 2,
         ("other settings", "train.lr: 0.003 → 0.01"), _unchanged_run),
    Case("resume-with-another-model", _resume_copy_with("--model", "segnet"), 2,
         ("model.name: \"unet\" → \"segnet\"",)),
    Case("resume-with-another-size", _resume_copy_with("--size", "64"), 2, ("data.size: 32 → 64",)),
    Case("resume-with-other-data", lambda c: ["train", "--resume", "--out", str(_copy_run(c)), "--data",
                                              str(_tiny_copy(c))], 2, ("splits.json", "is not in the dataset")),
    Case("resume-with-more-epochs-extends-and-says-so", _resume_copy_with("--epochs", "3", leftover=True), 0,
         ("train.epochs 2 → 3", "extended"), _resume_extended),
    Case("resume-with-fewer-epochs-than-done", _resume_copy_with("--epochs", "1"), 2,
         ("already trained 2 epochs",)),
    Case("resume-a-run-killed-before-its-first-epoch", _killed_before_first_epoch, 0,
         ("before its first epoch", "1 epochs")),
    Case("resume-nothing", lambda c: ["train", "--resume", "--out", str(c.tmp / "none")], 2, ("nothing to resume",)),
    Case("compare-reuse-with-another-size", lambda c: _compare(c, _fake_comparison(c, data={"size": 64})), 2,
         ("other settings", "data.size: 64 → 32", "another --out")),
    Case("compare-reuse-with-another-width", lambda c: _compare(c, _fake_comparison(c, model={"width": 8})), 2,
         ("model.width: 8 → 4",)),
    Case("compare-reuse-with-another-eval-threshold",
         lambda c: _compare(c, _fake_comparison(c, eval={"threshold": 0.4})), 2,
         ("(eval.threshold: 0.4 → 0.5)",)),  # the only difference, and named
    Case("compare-finds-a-run-made-with-other-settings", lambda c: _compare(c, _foreign_run(c)), 2,
         ("runs/unet was made with other settings", "train.epochs: 2 → 1", "delete it")),
    # 4. settings checked when the configuration is built, before any data is read
    Case("epochs-0", _bad_train("--epochs", "0"), 2, ("train.epochs must be", "≥ 1", "got 0"), _no_run_folder),
    Case("epochs-negative", _bad_train("--epochs", "-1"), 2, ("train.epochs", "got -1"), _no_run_folder),
    Case("max-batches-negative", _bad_train("--set", "train.max_batches_per_epoch=-3"), 2,
         ("train.max_batches_per_epoch", "got -3"), _no_run_folder),
    Case("eval-threshold-2", _bad_train("--set", "eval.threshold=2"), 2, ("eval.threshold", "[0, 1]", "got 2"),
         _no_run_folder),
    Case("tumour-weight-negative", _bad_train("--set", "data.tumour_weight=-1"), 2, ("data.tumour_weight", "≥ 0")),
    Case("warmup-negative", _bad_train("--set", "train.warmup_epochs=-1"), 2, ("train.warmup_epochs", "≥ 0")),
    Case("time-limit-negative", _bad_train("--set", "train.time_limit_minutes=-1"), 2, ("train.time_limit_minutes",)),
    Case("size-negative", _bad_train("--size", "-64"), 2, ("data.size", "got -64"), _no_run_folder),
    Case("size-below-the-models-minimum", _bad_train("--size", "40"), 2, ("40×40", "multiples of 16"), _no_run_folder),
    Case("batch-size-0", _bad_train("--batch-size", "0"), 2, ("train.batch_size", "≥ 1", "got 0")),
    Case("batch-size-negative", _bad_train("--batch-size", "-4"), 2, ("train.batch_size", "got -4")),
    Case("workers-negative", _bad_train("--workers", "-1"), 2, ("train.num_workers", "≥ 0")),
    Case("lr-negative", _bad_train("--set", "train.lr=-1"), 2, ("train.lr", "> 0")),
    Case("lr-3e-4-is-a-number", _bad_train("--set", "train.lr=3e-4", "--epochs", "0"), 2, ("train.epochs",),
         _not_mentioned("train.lr")),
    Case("kwargs-not-a-mapping", _bad_train("--set", "model.kwargs=notadict"), 2, ("model.kwargs", "a mapping")),
    Case("empty-policy-unknown", _bad_train("--set", "eval.empty_policy=zzz"), 2,
         ("eval.empty_policy", "one of one, skip", "'zzz'"), _no_run_folder),
    Case("amp-unknown", _bad_train("--set", "train.amp=fast"), 2, ("train.amp", "one of auto, off, bf16, fp16")),
    Case("seq-dropout-1.5", _bad_train("--set", "data.seq_dropout=1.5"), 2, ("data.seq_dropout", "[0, 1]")),
    Case("resume-without-config-json-uses-the-checkpoints",
         lambda c: (os.remove(_copy_run(c) / "config.json"), ["train", "--resume", "--out", str(c.tmp / "run"),
                                                               "--lr", "0.01"])[1], 2, ("train.lr: 0.003 → 0.01",)),
    Case("val-fraction-1.5", _bad_train("--set", "data.val_fraction=1.5"), 2, ("data.val_fraction", "[0, 1)")),
    Case("train-in-channels-7", _bad_train("--in-channels", "7"), 2, ("--in-channels", "invalid choice")),
    Case("models-in-channels-7", lambda c: ["models", "--in-channels", "7"], 2, ("--in-channels", "invalid choice")),
    Case("evaluate-threshold-5", lambda c: ["evaluate", str(c.run), "--threshold", "5"], 2,
         ("--threshold", "not a probability")),
    Case("yaml-not-utf8", lambda c: ["train", "--config", str(_yaml(c, b"train:\n  epochs: \xff\xfe\n")), "--out",
                                      str(c.tmp / "r")], 2, ("settings.yaml is not UTF-8",), _no_run_folder),
    Case("yaml-3e-4-is-a-number",
         lambda c: ["train", "--config", str(_yaml(c, b"train:\n  lr: 3e-4\n  epochs: 0\n")), "--out", str(c.tmp / "r")],
         2, ("train.epochs",), _not_mentioned("train.lr")),
    # 5. the operating system says no
    Case("train-out-unwritable", _unwritable(lambda c: c.tiny_train(UNWRITABLE)), 1,
         (f"brainseg train: error: {UNWRITABLE}", "Operation not permitted")),
    Case("train-out-under-a-file", lambda c: (c.tmp.joinpath("f").write_text(""), c.tiny_train(c.tmp / "f" / "r"))[1],
         1, ("f/r", "Not a directory")),
    Case("predict-out-unwritable", _unwritable(lambda c: _predict(c, _grey_png(c, True), UNWRITABLE)), 1,
         (f"{P}: error: {UNWRITABLE}", "Operation not permitted")),
    Case("evaluate-out-unwritable", _unwritable(lambda c: ["evaluate", str(c.run), "--out", str(UNWRITABLE)]), 1,
         (f"brainseg evaluate: error: {UNWRITABLE}",)),
    Case("export-destination-checked-first",
         _unwritable(lambda c: ["export", str(UNWRITABLE / "m.onnx"), "-c", str(c.tmp / "no-such.pt")]), 1,
         (f"brainseg export: error: {UNWRITABLE}",)),  # before the checkpoint is even looked at
    Case("phantoms-out-unwritable", _unwritable(lambda c: ["phantoms", str(UNWRITABLE), "--patients", "2"]), 1,
         (f"brainseg phantoms: error: {UNWRITABLE}",)),
    Case("split-out-unwritable", _unwritable(lambda c: ["split", str(c.phantoms), "--out", str(UNWRITABLE / "s.json")]),
         1, (f"brainseg split: error: {UNWRITABLE}",)),
    Case("index-json-into-a-closed-pipe", _broken_pipe, 1, ("brainseg index: error:", "broken pipe")),
    Case("leftover-temp-files-are-cleaned", _leftover, 0, (), _leftover_gone),
    Case("unreadable-slice-file",
         lambda c: ["index", str(_deny(c, sorted(_tiny_copy(c).glob("*/*_2.tif"))[0]).parent.parent)], 2,
         ("_2.tif is unreadable", "Permission denied")),
    Case("unreadable-patient-folder",
         lambda c: ["index", str(_deny(c, sorted(p for p in _tiny_copy(c).iterdir() if p.is_dir())[1]).parent)], 2,
         ("patient folder", "cannot be read", "Permission denied")),
    Case("unreadable-dataset-root", lambda c: ["index", str(_deny(c, _tiny_copy(c)))], 2,
         ("dataset folder", "cannot be read", "Permission denied")),
    # 6. data that disappeared without a word
    Case("renamed-patient-copy", lambda c: ["index", str(_renamed_copy(c))], 2,
         ("does not belong to patient folder copy of patient",)),
    Case("renamed-patient-copy-skip-bad", lambda c: ["index", str(_renamed_copy(c)), "--skip-bad"], 0,
         ("skipped patient copy of patient",)),
    Case("self-referencing-symlink", lambda c: ["index", str(_symlink_loop(c))], 0,
         ("ignored in", "1 entry: loop", "cannot be followed")),
    Case("predict-says-what-a-dataset-root-holds-besides-patients", lambda c: _predict(c, _symlink_loop(c)), 0,
         ("ignored in", "1 entry that is not a patient folder (loop)"), _listed_as_ignored("loop")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, tmp_path: Path, tiny_phantoms: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(tmp_path, tiny_phantoms, tiny_run, monkeypatch)
    try:
        argv = case.setup(ctx)
        capsys.readouterr()  # what the setup printed is not the row's
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        printed = capsys.readouterr()
        err = printed.err
    finally:
        for held in reversed(ctx.held):
            held.__exit__(None, None, None)
        monkeypatch.undo()
    assert "Traceback" not in err, err
    assert code == case.code, err[-3000:]
    for word in case.words:
        assert word in printed.out + err, (word, err[-3000:])
    error_lines = [line for line in err.splitlines() if " error: " in line]
    assert len(error_lines) == (1 if code and not case.partial else 0), err
    if case.check:
        case.check(ctx, err)


def test_readme_quotes_the_number_of_cases() -> None:
    """The README's Reliability section quotes this count; keep them together."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"{len(CASES)} cases" in readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]


def test_a_second_train_process_on_the_same_folder_is_refused(tiny_phantoms: Path, tmp_path: Path) -> None:
    """Two real processes: the second gets the one-line error while the first holds the run."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from brainseg.locks import folder_lock\n"
         f"with folder_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, "-m", "brainseg.cli", "train", "--data", str(tiny_phantoms), "--out",
                               str(run), "--size", "32", "--width", "4", "--epochs", "1"],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"brainseg train: error: run folder {run} is being written by another brainseg "
                                   f"process (pid {holder.pid}); wait for it to finish or choose another --out")


def test_protocol_names_the_differing_keys_and_hashes_stably() -> None:
    from brainseg.config import RunConfig
    from brainseg.protocol import diff_settings, result_settings, settings_hash

    a = RunConfig()
    b = RunConfig.from_dict({"data": {"size": 96, "root": "/elsewhere"}, "train": {"device": "cuda", "lr": 3e-4}})
    assert diff_settings(a.to_dict(), b.to_dict()) == ["data.size: 128 → 96", "train.lr: 0.001 → 0.0003"]
    assert settings_hash(result_settings(a)) == settings_hash(result_settings(RunConfig()))
    assert settings_hash(result_settings(a)) != settings_hash(result_settings(b))
    assert settings_hash(result_settings(a), ["s1"]) != settings_hash(result_settings(a), ["s2"])
    # an older file without a later field (at its default) and 1 vs 1.0 are the same settings
    old = a.to_dict()
    del old["train"]["time_limit_minutes"]
    old["train"]["epochs"] = 20.0
    assert diff_settings(old, a.to_dict()) == [] and result_settings(old) == result_settings(a)
