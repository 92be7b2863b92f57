"""Trainer, checkpoints and resume, on tiny phantoms with tiny models."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from brainseg.errors import BrainsegError, CheckpointError
from brainseg.fileio import read_csv, read_json
from brainseg.training.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from brainseg.training.history import COLUMNS as HISTORY_COLUMNS
from brainseg.training.run import train_run
from brainseg.training.trainer import EpochSampler, Trainer, TrainingDiverged, lr_multiplier
from helpers_runs import tiny_cfg


def test_training_loss_falls_and_files_are_written(tiny_phantoms: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train_run(tiny_cfg(tiny_phantoms, epochs=3), run, progress=False)
    hist = read_csv(run / "history.csv")
    assert list(hist[0]) == list(HISTORY_COLUMNS)
    assert len(hist) == 3
    losses = [float(r["train_loss"]) for r in hist]
    assert losses[-1] < losses[0]
    for name in ("config.json", "splits.json", "checkpoint_last.pt", "checkpoint_best.pt", "train_summary.json"):
        assert (run / name).is_file(), name
    assert summary["finished"] and summary["epochs_run"] == 3
    ckpt = load_checkpoint(run / "checkpoint_best.pt")
    assert ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["model"]["name"] == "unet"
    assert ckpt["preprocessing"]["size"] == 32
    assert ckpt["split"]["id"] == read_json(run / "train_summary.json")["split_id"]
    assert set(ckpt["split"]["test"]).isdisjoint(ckpt["split"]["train"])
    # the checkpoint alone rebuilds the model
    model = model_from_checkpoint(ckpt)
    out = model(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    # a finished run refuses to be overwritten by accident
    with pytest.raises(BrainsegError, match="--resume"):
        train_run(tiny_cfg(tiny_phantoms), run, progress=False)


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["weights", "ema"])
def test_resume_reaches_the_uninterrupted_result(tiny_phantoms: Path, tmp_path: Path, monkeypatch, ema: float) -> None:
    def cfg3():
        cfg = tiny_cfg(tiny_phantoms, epochs=3)
        cfg.train.ema = ema
        return cfg

    train_run(cfg3(), tmp_path / "a", progress=False)

    real = Trainer._train_epoch
    calls = {"n": 0}

    def crash_in_epoch_3(self, epoch):
        calls["n"] += 1
        if epoch == 3:
            raise KeyboardInterrupt  # like a kill in the middle of epoch 3
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg3(), tmp_path / "b", progress=False)
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    assert load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["epoch"] == 2
    train_run(cfg3(), tmp_path / "b", resume=True, progress=False)

    a = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("state_dict", "trained_state_dict") if ema else ("state_dict",):
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), (key, k)
    assert a.get("ema_steps") == b.get("ema_steps")
    ha, hb = read_csv(tmp_path / "a" / "history.csv"), read_csv(tmp_path / "b" / "history.csv")
    assert [(r["train_loss"], r["val_dice"]) for r in ha] == [(r["train_loss"], r["val_dice"]) for r in hb]


def test_ema_checkpoint_holds_the_moving_average_of_the_trained_weights(
    tiny_phantoms: Path, tmp_path: Path, monkeypatch
) -> None:
    """With train.ema = d, the checkpoint's state_dict is e_1 = w_1, e_k = d·e_(k−1) + (1 − d)·w_k over
    the weights (and BatchNorm statistics) after every step, recomputed here by hand; the weights
    as trained are kept beside it, and a model rebuilt from the checkpoint is the average."""
    d = 0.8
    cfg = tiny_cfg(tiny_phantoms, epochs=2)
    cfg.train.ema = d
    seen: list[dict[str, torch.Tensor]] = []
    real = Trainer.train_step

    def record(self, batch, epoch=0):
        loss = real(self, batch, epoch)
        seen.append({k: v.detach().clone() for k, v in self.bare_model.state_dict().items()})
        return loss

    import brainseg.training.run as run_module

    validated: list[dict[str, torch.Tensor]] = []
    make = run_module.make_val_fn

    def spying_make_val_fn(*args, **kwargs):
        val = make(*args, **kwargs)

        def spy(model):
            validated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return val(model)

        return spy

    monkeypatch.setattr(Trainer, "train_step", record)
    monkeypatch.setattr(run_module, "make_val_fn", spying_make_val_fn)
    train_run(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["ema_steps"] == len(seen) == ckpt["train_state"]["global_step"] > 2
    assert len(validated) == 2  # validation (and so the best checkpoint's choice) sees the average
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(validated[-1][k], v), k
    want = {k: v.double() for k, v in seen[0].items()}
    for w in seen[1:]:
        want = {k: d * want[k] + (1 - d) * w[k].double() for k in want}
    floats = [k for k, v in seen[-1].items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # BatchNorm statistics are averaged too
    for k in floats:
        assert torch.allclose(ckpt["state_dict"][k].double(), want[k], rtol=1e-5, atol=1e-6), k
    for k in seen[-1]:
        assert torch.equal(ckpt["trained_state_dict"][k], seen[-1][k]), k
    counts = [k for k in seen[-1] if k.endswith("num_batches_tracked")]
    assert counts and all(int(ckpt["state_dict"][k]) == int(seen[-1][k]) == len(seen) for k in counts)  # counts, not averaged
    moved = [k for k in floats if not torch.allclose(want[k], seen[-1][k].double(), atol=1e-4)]
    assert moved  # the average is not the last weights
    model = model_from_checkpoint(ckpt)
    assert torch.equal(model.state_dict()[moved[0]], ckpt["state_dict"][moved[0]])
    plain = tiny_cfg(tiny_phantoms, epochs=2)
    train_run(plain, tmp_path / "plain", progress=False)
    assert "trained_state_dict" not in load_checkpoint(tmp_path / "plain" / "checkpoint_last.pt")


def test_train_crop_trains_on_windows_and_keeps_whole_slices_for_validation_and_inference(
    tiny_phantoms: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.data.train_crop = 16
    shapes: list[tuple[int, ...]] = []
    real = Trainer.train_step

    def record(self, batch, epoch=0):
        shapes.append(tuple(batch["image"].shape[1:]) + tuple(batch["mask"].shape[1:]))
        return real(self, batch, epoch)

    monkeypatch.setattr(Trainer, "train_step", record)
    train_run(cfg, tmp_path / "run", progress=False)
    assert shapes and set(shapes) == {(3, 16, 16, 1, 16, 16)}
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["preprocessing"]["size"] == 32 and ckpt["config"]["data"]["train_crop"] == 16
    assert model_from_checkpoint(ckpt)(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert 0.0 <= float(read_csv(tmp_path / "run" / "history.csv")[0]["val_dice"]) <= 1.0
    for crop, match in ((32, "must be smaller than data.size=32"), (24, "data.train_crop=24")):
        cfg.data.train_crop = crop
        with pytest.raises(BrainsegError, match=match):
            train_run(cfg, tmp_path / f"bad{crop}", progress=False)
        assert not (tmp_path / f"bad{crop}" / "checkpoint_last.pt").exists()


def test_init_weights_starts_training_from_the_checkpoints_weights(
    tiny_phantoms: Path, tiny_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    source = load_checkpoint(tiny_run)  # the run's own choice of checkpoint, as init_weights reads it
    first: list[dict[str, torch.Tensor]] = []
    real = Trainer.train_step

    def record(self, batch, epoch=0):
        if not first:
            first.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return real(self, batch, epoch)

    monkeypatch.setattr(Trainer, "train_step", record)
    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.train.init_weights = str(tiny_run)
    train_run(cfg, tmp_path / "ft", progress=False)
    assert set(first[0]) == set(source["state_dict"])
    for k, v in source["state_dict"].items():
        assert torch.equal(first[0][k], v), k  # the first step starts from the source's weights
    said = capsys.readouterr().err
    assert f"starting from the weights of {source['path']}" in said and "test patients" not in said
    record = read_json(tmp_path / "ft" / "train_summary.json")["init_weights"]
    assert record == {"path": str(Path(source["path"]).resolve()), "epoch": source["epoch"],
                      "split_id": source["split"]["id"], "test_patients_seen": []}
    assert load_checkpoint(tmp_path / "ft" / "checkpoint_last.pt")["init_weights"] == record
    # a fresh start differs from it
    first.clear()
    train_run(tiny_cfg(tiny_phantoms, epochs=1), tmp_path / "fresh", progress=False)
    assert not all(torch.equal(first[0][k], v) for k, v in source["state_dict"].items())

    # another split: the source's training and validation patients that are this run's test patients are named
    other = tiny_cfg(tiny_phantoms, epochs=1)
    other.train.init_weights = str(tiny_run)
    other.data.seed = 7
    capsys.readouterr()
    train_run(other, tmp_path / "other", progress=False)
    mine, theirs = load_checkpoint(tmp_path / "other" / "checkpoint_last.pt")["split"], source["split"]
    leaked = sorted(set(mine["test"]) & (set(theirs["train"]) | set(theirs["val"])))
    assert leaked  # seed 7 moves some of the source's patients into this test set
    said = capsys.readouterr().err
    assert f"was trained on {len(leaked)} of this run's test patients" in said
    assert all(p in said for p in leaked[:5])
    assert read_json(tmp_path / "other" / "train_summary.json")["init_weights"]["test_patients_seen"] == leaked

    wider = tiny_cfg(tiny_phantoms, epochs=1)
    wider.model.width = 8
    wider.train.init_weights = str(tiny_run)
    with pytest.raises(BrainsegError, match=r"train.init_weights: .*checkpoint_best.pt holds unet\(.*width=4"):
        train_run(wider, tmp_path / "wider", progress=False)
    wider.train.init_weights = str(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="train.init_weights: .*nothing.pt does not exist"):
        train_run(wider, tmp_path / "missing", progress=False)
    assert not (tmp_path / "missing").exists()  # refused before any data is read or anything written
    # the same architecture, but weights that do not fit it: named, not PyTorch's message
    partial = {k: v for k, v in source.items() if k != "path"}
    partial["state_dict"] = {k: v for i, (k, v) in enumerate(source["state_dict"].items()) if i}
    save_checkpoint(tmp_path / "partial.pt", partial)
    cfg.train.init_weights = str(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"do not fit the model: .*; 1 missing: " + next(iter(source["state_dict"]))):
        train_run(cfg, tmp_path / "partial", progress=False)


def test_a_fine_tuned_run_resumes_without_its_source(tiny_phantoms: Path, tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_run, source)
    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.train.init_weights = str(source)
    train_run(cfg, tmp_path / "ft", progress=False)
    record = read_json(tmp_path / "ft" / "train_summary.json")["init_weights"]
    shutil.rmtree(source)
    cfg.train.epochs = 2  # extend the finished run: its own checkpoint, not the deleted source, starts it
    train_run(cfg, tmp_path / "ft", resume=True, progress=False)
    summary = read_json(tmp_path / "ft" / "train_summary.json")
    assert summary["epochs_run"] == 2 and summary["init_weights"] == record
    with pytest.raises(CheckpointError, match="train.init_weights: .*does not exist"):
        train_run(cfg, tmp_path / "fresh", progress=False)


def test_compare_refuses_init_weights(tiny_phantoms: Path, tiny_run: Path, tmp_path: Path) -> None:
    from brainseg.compare import compare

    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.train.init_weights = str(tiny_run)
    with pytest.raises(BrainsegError, match="compare trains every model and fold from one configuration"):
        compare(cfg, tmp_path / "cmp", models=["unet"])
    assert not (tmp_path / "cmp" / "runs").exists()


def test_sigkill_mid_run_leaves_a_loadable_checkpoint_and_resumes(tiny_phantoms: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        sys.executable, "-m", "brainseg", "train", "--data", str(tiny_phantoms), "--model", "unet",
        "--size", "32", "--width", "4", "--epochs", "30", "--batch-size", "4", "--device", "cpu",
        "--out", str(run), "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25",
        "--set", "train.threads=1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "history.csv").is_file():
            time.sleep(0.2)
        time.sleep(0.7)  # most likely inside a later epoch or a checkpoint write now
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    done = ckpt["epoch"]
    assert 1 <= done < 30
    res = subprocess.run(
        args[:4] + ["--out", str(run), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = read_json(run / "train_summary.json")
    assert summary["epochs_run"] == 30
    assert len(read_csv(run / "history.csv")) == 30


def test_nan_loss_stops_with_a_clear_message(tiny_phantoms: Path, tmp_path: Path) -> None:
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.zeros(2, 1, 8, 8)}
    trainer = Trainer(
        model, lambda out, y: out.mean() * float("nan"), opt, sched, [batch], lambda m: {"val_dice": 0.0},
        device=torch.device("cpu"), epochs=1, run_dir=tmp_path, meta={}, progress=False,
    )
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1"):
        trainer.fit()


def test_epoch_sampler_shards_the_same_global_order() -> None:
    single = EpochSampler(10, seed=5)
    r0, r1 = EpochSampler(10, seed=5, rank=0, world_size=2), EpochSampler(10, seed=5, rank=1, world_size=2)
    for epoch in (1, 2):
        for s in (single, r0, r1):
            s.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == list(range(10))
        # rank r takes positions r, r+2, …: interleaving both ranks gives back the global order
        inter = [x for pair in zip(list(r0), list(r1)) for x in pair]
        assert inter == order
    s = EpochSampler(10, seed=5)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(2)
    assert list(s) != e1
    w = EpochSampler(1000, seed=1, weights=np.r_[np.full(500, 9.0), np.ones(500)])
    draws = np.array(list(w))
    assert (draws < 500).mean() > 0.8  # weight 9:1 → 90% expected


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_weighted_draw_gives_tumour_slices_at_the_expected_rate(rate: float) -> None:
    has = np.zeros(1000, bool)
    has[np.random.default_rng(0).choice(1000, 300, replace=False)] = True
    p = has.mean()
    # a tumour slice `w` times as likely as an empty one gives rate w·p / (w·p + 1 − p): solve for w
    w = rate * (1 - p) / (p * (1 - rate))
    sampler = EpochSampler(1000, seed=1, weights=np.where(has, w, 1.0))
    draws = []
    for epoch in range(40):  # 40 epochs of 1,000 draws
        sampler.set_epoch(epoch)
        draws += list(sampler)
    draws = np.array(draws)
    n = len(draws)
    assert abs(has[draws].mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / n)  # 4 standard errors


def test_warmup_cosine_schedule_by_hand() -> None:
    f = lr_multiplier("cosine", total_steps=110, warmup_steps=10, floor=0.0)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def _torch_lrs(make: Callable[[Any], Any], steps: int, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_lr_schedules_after_no_warm_up_equal_torchs_own_schedulers() -> None:
    total, lr = 50, 0.1
    ours = {kind: [lr * lr_multiplier(kind, total, 0)(k) for k in range(total)] for kind in ("cosine", "poly", "constant")}
    cosine = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.01 * lr), total)
    poly = _torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=total, power=0.9), total)
    assert ours["cosine"] == pytest.approx(cosine, rel=1e-9, abs=1e-12)
    assert ours["poly"] == pytest.approx(poly, rel=1e-9, abs=1e-12)
    assert ours["constant"] == [lr] * total


def test_lr_schedules_share_the_warm_up_and_end_where_documented() -> None:
    for kind in ("cosine", "poly", "constant"):
        f = lr_multiplier(kind, total_steps=110, warmup_steps=10)
        assert [f(k) for k in range(10)] == pytest.approx([(k + 1) / 10 for k in range(10)])
        assert f(10) == pytest.approx(1.0)
    assert lr_multiplier("cosine", 110, 10)(110) == pytest.approx(0.01)
    assert lr_multiplier("poly", 110, 10)(110) == 0.0
    assert lr_multiplier("poly", 110, 10)(60) == pytest.approx(0.5 ** 0.9)  # half-way by hand
    assert lr_multiplier("constant", 110, 10)(500) == 1.0
    with pytest.raises(ValueError, match="step"):
        lr_multiplier("step", 10, 0)


def test_lr_schedule_is_a_checked_setting_and_reaches_the_optimizer(tiny_phantoms: Path, tmp_path: Path) -> None:
    from brainseg.config import RunConfig

    with pytest.raises(BrainsegError, match="train.lr_schedule.*one of cosine, poly, constant"):
        RunConfig().set("train.lr_schedule", "cyclic")
    cfg = tiny_cfg(tiny_phantoms, epochs=2)
    cfg.train.lr_schedule = "constant"
    cfg.train.warmup_epochs = 0
    train_run(cfg, tmp_path / "run", progress=False)
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([cfg.train.lr] * 2)


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"model": {}, "state_dict": {}, "preprocessing": {}, "config": {}})
    ck = torch.load(other, weights_only=False)
    ck["format_version"] = 999
    torch.save(ck, other)
    with pytest.raises(CheckpointError, match="format version 999"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_time_limit_stops_after_the_epoch_that_reaches_it(tiny_phantoms: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_phantoms, epochs=4)
    cfg.train.time_limit_minutes = 1e-6  # reached by the first epoch
    summary = train_run(cfg, tmp_path / "run", progress=False)
    assert len(read_csv(tmp_path / "run" / "history.csv")) == 1
    assert summary["finished"] and summary["epochs_run"] == 1
    assert (tmp_path / "run" / "checkpoint_best.pt").is_file()


def test_deep_supervision_loss_weighs_the_kth_auxiliary_output_by_aux_weight_over_2_to_the_k() -> None:
    """The trainer's loss for {"out", "aux": [a0, a1]}: L(out) + 0.4·L(a0) + 0.2·L(a1), by hand."""
    import torch.nn.functional as F
    from torch import nn

    out, a0, a1 = torch.full((1, 1, 2, 2), 2.0), torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -1.0)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])

    class Fixed(nn.Module):
        def __init__(self, y):
            super().__init__()
            self.y = y

        def forward(self, x):
            return self.y

    def bce(z):  # mean over 4 pixels, two of them tumour: −(2·log σ(z) + 2·log(1 − σ(z))) / 4
        s = 1 / (1 + math.exp(-z))
        return -(2 * math.log(s) + 2 * math.log(1 - s)) / 4

    for y, want in (
        ({"out": out, "aux": [a0, a1]}, bce(2.0) + 0.4 * bce(0.0) + 0.2 * bce(-1.0)),
        ({"out": out, "aux": a0}, bce(2.0) + 0.4 * bce(0.0)),  # PSPNet's single head
        (out, bce(2.0)),
    ):
        trainer = Trainer.__new__(Trainer)  # only what _forward_loss reads
        trainer.model, trainer.loss_fn, trainer.aux_weight = Fixed(y), F.binary_cross_entropy_with_logits, 0.4
        trainer.device, trainer.amp_dtype = torch.device("cpu"), None
        assert trainer._forward_loss(torch.zeros(1, 3, 2, 2), target).item() == pytest.approx(want, rel=1e-6)
