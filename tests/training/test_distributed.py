"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) against one process.

One `torchrun --standalone --nproc_per_node=2` launch runs this file as its worker script
(`_worker`, below): through `brainseg.cli.main` it trains run A (3 epochs), trains run B and
interrupts it in epoch 3, resumes B, trains run E (A with `train.ema`), then runs `brainseg compare`
on one model. The test then
checks, from the files and from what each rank recorded:

- every rank ends each epoch with the same training loss and validation figures;
- checkpoints, history and summaries are written by rank 0 only, and results printed once;
- resumed B ends bitwise equal to uninterrupted A (resume works the same way under torchrun);
- A matches a one-process run of the same global batch (see `ghost_batch` for why and how
  BatchNorm is accounted for, and `test_two_processes_match_one_process…` for the tolerance);
- `brainseg compare` finishes (rank 0 evaluates and reports while rank 1 waits in a barrier).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

WORLD = 2
EPOCHS = 3
TOLERANCE = 1e-4  # |w_ddp - w_one| / |w_one - w_initial|; see the last test
# loss "bce" (a mean over pixels) so that the mean of two half-batch losses is the full-batch loss
# exactly; the batch-level Dice loss is not additive over ranks (see brainseg.training.distributed).
TRAIN_FLAGS = [
    "--model", "unet", "--size", "32", "--width", "4", "--batch-size", "8", "--lr", "3e-3",
    "--loss", "bce", "--device", "cpu", "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25",
    "--set", "train.threads=1",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The torchrun worker (this file run as a script)
# --------------------------------------------------------------------------------------------
def _worker(out: Path, data: str) -> None:
    import brainseg.compare as C
    import brainseg.evaluation.evaluate as E
    import brainseg.training.run as R
    import brainseg.training.trainer as T
    from brainseg.cli import main

    rank = int(os.environ["RANK"])
    writes: list[list[str]] = []

    def logged(mod: Any, name: str) -> None:
        real = getattr(mod, name)

        def wrapper(path: Any, *a: Any, **k: Any) -> Any:
            writes.append([name, str(path)])
            return real(path, *a, **k)

        setattr(mod, name, wrapper)

    for mod, name in ((T, "save_checkpoint"), (T, "write_history"), (R, "write_json_atomic"), (C, "write_json_atomic"),
                      (E, "write_json_atomic")):  # evaluate writes summary.json (compare no longer rewrites it)
        logged(mod, name)

    histories: dict[str, list[dict[str, Any]]] = {}
    real_fit, real_epoch = T.Trainer.fit, T.Trainer._train_epoch
    validated: list[str] = []  # a digest of the weights and buffers each validation used, in order
    real_make_val_fn = R.make_val_fn

    def make_val_fn(*a: Any, **k: Any) -> Any:
        val = real_make_val_fn(*a, **k)

        def digest_then_validate(model: Any) -> Any:
            h = hashlib.sha256()
            for v in model.state_dict().values():
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            validated.append(h.hexdigest())
            return val(model)

        return digest_then_validate

    R.make_val_fn = make_val_fn

    def fit(self: Any) -> Any:
        st = real_fit(self)
        histories.setdefault(self.run_dir.name, []).extend(st.history)
        return st

    def crash_in_epoch_3(self: Any, epoch: int) -> Any:
        if epoch == 3:
            raise KeyboardInterrupt  # like Ctrl-C reaching both ranks in epoch 3
        return real_epoch(self, epoch)

    T.Trainer.fit = fit
    codes = {"a": main(["train", "--data", data, "--epochs", str(EPOCHS), *TRAIN_FLAGS, "--out", str(out / "a")])}
    T.Trainer._train_epoch = crash_in_epoch_3
    codes["b_interrupted"] = main(["train", "--data", data, "--epochs", str(EPOCHS), *TRAIN_FLAGS, "--out", str(out / "b")])
    T.Trainer._train_epoch = real_epoch
    codes["b_resumed"] = main(["train", "--out", str(out / "b"), "--resume"])
    codes["e"] = main(  # A again with a moving average of the weights (train.ema)
        ["train", "--data", data, "--epochs", str(EPOCHS), *TRAIN_FLAGS, "--set", "train.ema=0.5", "--out", str(out / "e")]
    )
    codes["compare"] = main(
        ["compare", "--data", data, "--models", "unet", "--epochs", "1", *TRAIN_FLAGS[2:], "--out", str(out / "cmp")]
    )
    (out / f"rank{rank}.json").write_text(json.dumps({"codes": codes, "writes": writes, "histories": histories,
                                                       "validated": validated}))


# --------------------------------------------------------------------------------------------
# The one-process reference
# --------------------------------------------------------------------------------------------
def ghost_batch(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """Make one process train `model` exactly as `world` DDP processes would (in place).

    DDP rank r gets items r, r+W, … of every global batch and normalises with BatchNorm
    statistics of its own share; gradients are averaged over ranks; the running statistics
    that rank 0 keeps (and that every rank validates with, see `broadcast_buffers`) are the
    ones updated from rank 0's share only. In training mode this forward does the same: the
    batch is cut into the W interleaved shares, each goes through the model on its own, only
    share 0 updates the running statistics, and the outputs are put back in batch order. With a loss that is a mean over equal-sized shares, the gradient is then the
    DDP gradient. (SyncBatchNorm would make DDP equal a plain big batch, but torch supports it
    on GPUs only; on CPU, per-rank BatchNorm is what DDP does.)
    """
    forward = model.forward
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def ghost(x: torch.Tensor) -> torch.Tensor:
        if not model.training:
            return forward(x)
        outs = [forward(x[0::world])]
        # shares 1… must leave the running statistics alone: momentum 0 keeps them bit for bit
        # (they cannot be restored afterwards: autograd saved them at this version)
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
        try:
            for m in norms:
                m.momentum = 0.0
            outs += [forward(x[r::world]) for r in range(1, world)]
        finally:
            for m, (momentum, tracked) in zip(norms, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)
        return torch.stack(outs, dim=1).flatten(0, 1)  # (b, W, …) → (b·W, …) interleaves back

    model.forward = ghost  # type: ignore[method-assign]
    return model


def one_process_run(data: Path, out: Path, ghost: bool) -> dict[str, torch.Tensor]:
    """Train with the same flags in this process; returns the initial weights."""
    import brainseg.models as M
    from brainseg.cli import main

    real = M.create_model
    initial: dict[str, torch.Tensor] = {}

    def create(*a: Any, **k: Any) -> torch.nn.Module:
        model = real(*a, **k)
        initial.update({n: v.detach().clone() for n, v in model.state_dict().items()})
        return ghost_batch(model, WORLD) if ghost else model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun worker (OMP_NUM_THREADS=1); faster on a busy CPU
    M.create_model = create
    try:
        assert main(["train", "--data", str(data), "--epochs", str(EPOCHS), *TRAIN_FLAGS, "--out", str(out)]) == 0
    finally:
        M.create_model = real
        torch.set_num_threads(threads)
    return initial


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        __file__, str(out), str(tiny_phantoms),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=out)
    ranks = [out / f"rank{r}.json" for r in range(WORLD)]
    assert res.returncode == 0 and all(p.is_file() for p in ranks), res.stdout[-3000:] + res.stderr[-5000:]
    return {"out": out, "stdout": res.stdout, "ranks": [json.loads(p.read_text()) for p in ranks]}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from brainseg.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint_last.pt")["state_dict"]


def test_every_rank_ends_with_the_same_figures_and_only_rank0_writes(ddp: dict[str, Any]) -> None:
    r0, r1 = ddp["ranks"]
    assert r0["codes"] == r1["codes"] == {"a": 0, "b_interrupted": 130, "b_resumed": 0, "e": 0, "compare": 0}
    for run in ("a", "b", "e"):
        h0, h1 = r0["histories"][run], r1["histories"][run]
        assert [h["epoch"] for h in h0] == list(range(1, EPOCHS + 1))
        for e0, e1 in zip(h0, h1):
            for key in ("train_loss", "val_loss", "val_dice", "val_dice_slice", "lr", "best"):
                assert e0[key] == e1[key], (run, e0["epoch"], key)
    # rank 0 wrote every checkpoint, history and summary; rank 1 wrote nothing
    assert r1["writes"] == []
    names = [Path(p).name for _, p in r0["writes"]]
    assert names.count("checkpoint_last.pt") == 3 * EPOCHS + 1  # a: 3, b: 2 + 1 after resume, e: 3, compare: 1
    assert {"history.csv", "config.json", "train_summary.json", "protocol.json", "summary.json"} <= set(names)
    # results printed once (rank 1's stdout is silenced), not once per process
    lines = ddp["stdout"].splitlines()
    assert sum(line.startswith(f"unet: {EPOCHS} epochs") for line in lines) == 3, ddp["stdout"]
    summary = json.loads((ddp["out"] / "a" / "train_summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["epochs_run"] == EPOCHS


def test_resume_under_torchrun_reaches_the_uninterrupted_result(ddp: dict[str, Any]) -> None:
    from brainseg.fileio import read_csv

    a, b = _weights(ddp["out"] / "a"), _weights(ddp["out"] / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = read_csv(ddp["out"] / "a" / "history.csv"), read_csv(ddp["out"] / "b" / "history.csv")
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_dice"] for r in ha] == [r["val_dice"] for r in hb]


def test_a_moving_average_under_torchrun_leaves_the_trained_weights_as_without_it(ddp: dict[str, Any]) -> None:
    """train.ema under DDP: the weights as trained are bitwise those of run A (the average does not touch
    the optimisation), the saved and validated weights are their average, and every rank validated the
    same average (the first test compares the ranks' figures for run E too)."""
    from brainseg.training.checkpoint import load_checkpoint

    a = _weights(ddp["out"] / "a")
    e = load_checkpoint(ddp["out"] / "e" / "checkpoint_last.pt")
    for k in a:
        assert torch.equal(e["trained_state_dict"][k], a[k]), k
    assert any(not torch.equal(e["state_dict"][k], a[k]) for k in a if a[k].is_floating_point())
    assert e["ema_steps"] == e["train_state"]["global_step"]
    # each rank validates its share of the patients: all of them must use rank 0's weights and statistics
    r0, r1 = ddp["ranks"]
    assert len(r0["validated"]) == 3 + 3 + 3 + 1 and r0["validated"] == r1["validated"]  # a, b, e, compare


def test_compare_under_torchrun_finishes_with_a_report(ddp: dict[str, Any]) -> None:
    cmp = ddp["out"] / "cmp"
    assert (cmp / "runs" / "unet" / "eval_test" / "summary.json").is_file()
    assert (cmp / "leaderboard.csv").is_file() and (cmp / "report.html").is_file()
    assert json.loads((cmp / "runs" / "unet" / "train_summary.json").read_text())["world_size"] == WORLD


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_loaders_together_make_the_one_process_batches(world: int) -> None:
    """For every dataset length, W rank loaders of batch B/W (interleaved) yield exactly the global
    batches one loader of batch B yields, including how many (the incomplete tail is dropped)."""

    from brainseg.config import RunConfig
    from brainseg.training.run import make_train_loader

    cfg = RunConfig()
    cfg.train.seed = 7
    for batch in (world, 2 * world, 4 * world):
        cfg.train.batch_size = batch
        for n in range(batch, 5 * batch + world + 1):
            items = list(range(n))
            one = [b.tolist() for b in make_train_loader(items, cfg, torch.device("cpu"))]
            parts = [
                [b.tolist() for b in make_train_loader(items, cfg, torch.device("cpu"), rank=r, world=world)]
                for r in range(world)
            ]
            assert all(len(p) == len(one) == n // batch for p in parts), (n, batch)
            for j, global_batch in enumerate(one):
                interleaved = [parts[i % world][j][i // world] for i in range(batch)]
                assert interleaved == global_batch, (n, batch, j)


def test_two_processes_match_one_process_of_the_same_global_batch(
    ddp: dict[str, Any], tiny_phantoms: Path, tmp_path: Path
) -> None:
    """Tolerance: the DDP run and its one-process equivalent do the same arithmetic in another
    order (gradients summed by gloo across ranks vs by autograd in one graph), so they differ
    by float32 rounding, which Adam can amplify where a gradient is near zero. We require the
    distance between the two final weight vectors to be under 1e-4 of the distance training
    moved them (measured: ~2e-6), and the same ratio for the plain one-process run — per-rank
    BatchNorm not emulated — to be over 100× that (measured: ~0.6), so the check can fail.
    """
    from brainseg.fileio import read_csv

    initial = one_process_run(tiny_phantoms, tmp_path / "ghost", ghost=True)
    one_process_run(tiny_phantoms, tmp_path / "plain", ghost=False)

    def flat(sd: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.double().flatten() for v in sd.values() if v.is_floating_point()])

    ddp_w, ghost_w, plain_w = (flat(_weights(p)) for p in (ddp["out"] / "a", tmp_path / "ghost", tmp_path / "plain"))
    moved = float((ghost_w - flat(initial)).norm())
    gap = float((ddp_w - ghost_w).norm()) / moved
    gap_plain = float((ddp_w - plain_w).norm()) / moved
    assert moved > 0
    assert gap < TOLERANCE, (gap, gap_plain)
    assert gap_plain > 100 * TOLERANCE, (gap, gap_plain)  # per-rank BatchNorm matters, and the check sees it
    h_ddp, h_one = read_csv(ddp["out"] / "a" / "history.csv"), read_csv(tmp_path / "ghost" / "history.csv")
    for key in ("train_loss", "val_loss", "val_dice"):
        np.testing.assert_allclose(
            [float(r[key]) for r in h_ddp], [float(r[key]) for r in h_one], rtol=1e-3, atol=1e-4, err_msg=key
        )


if __name__ == "__main__":  # run by torchrun from the `ddp` fixture
    _worker(Path(sys.argv[1]), sys.argv[2])
