"""Regenerate the README's measured figures: each README number printed beside the command that makes it.

Accuracy figures (`main`, `compare_cpu`, `recipe`) are re-measured by running the README's own
command, `--repeats` times in separate processes, and read from the files it writes; the spread
(max − min over repeats) says how far a figure moves between runs of one command on one machine
(0 when training is repeatable, as it is on CPU at a fixed `train.threads`). On another machine
— other thread count, CPU instruction set or library versions — the figures move further (see
README, Reproducibility); every run records its environment in train_summary.json, and the JSON
written by `--json` carries it too. Timing figures (`models_speed`, `throughput`, `data_pipeline`,
`tests`) are made by their own benchmark, which prints them; this script runs it and shows the
README's figure beside it. Real-data figures skip with a message when the data is absent.

    python benchmarks/readme_figures.py --list                    # every figure: README value and command
    python benchmarks/readme_figures.py --only main --quick       # a reduced main job: NOT the README figures
    python benchmarks/readme_figures.py --only main --repeats 3 --json main.json
    python benchmarks/readme_figures.py --only compare_cpu --threads 1   # how far another thread count moves it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"
MODELS = {"unet": "UNet", "attention_unet": "Attention UNet", "deeplabv3plus": "DeepLabV3+", "pspnet": "PSPNet",
          "segnet": "SegNet"}  # fmt: skip


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def compare_dice(out: Path) -> dict[str, float]:
    """Per-patient test Dice of every model of a comparison folder."""
    got = {}
    for m, label in MODELS.items():
        p = out / "runs" / m / "eval_test" / "summary.json"
        if p.is_file():
            got[label] = _read_json(p)["metrics"]["dice"]["per_patient"]["mean"]
    return got


def run_metrics(out: Path) -> dict[str, float]:
    """Test Dice per patient, per slice and micro of one evaluated training run."""
    d = _read_json(out / "eval_test" / "summary.json")["metrics"]["dice"]
    return {"Dice per patient": d["per_patient"]["mean"], "Dice per slice": d["per_slice"]["mean"], "Dice micro": d["micro"]}


def compare_environment(out: Path) -> dict[str, Any]:
    for p in sorted(out.glob("runs/*/train_summary.json")) + [out / "train_summary.json"]:
        if p.is_file():
            return _read_json(p).get("environment") or {}
    return {}


@dataclass
class Figure:
    """One README figure: what it is, the README's values, the command that makes them."""

    name: str
    what: str
    readme: dict[str, float | str]
    argv: Callable[[Path, Path], list[str]]  # (out folder, data folder) → command line
    read: Callable[[Path], dict[str, float]] | None = None  # None: the command prints its own figures
    real_data: bool = False
    trains: bool = True  # takes --set train.threads=N
    quick: list[str] = field(default_factory=list)  # extra arguments of --quick

    def command(self, out: Path, data: Path, *, quick: bool, threads: int | None) -> list[str]:
        argv = self.argv(out, data) + (self.quick if quick else [])
        if threads is not None and self.trains:
            argv += ["--set", f"train.threads={threads}"]
        return argv


BRAINSEG = [sys.executable, "-m", "brainseg"]
BENCH = [sys.executable]

FIGURES = [
    Figure(
        "main", "brainseg compare on the phantoms, defaults (96×96, width 8, 20 epochs): per-patient test Dice",
        {"UNet": 0.943, "Attention UNet": 0.897, "DeepLabV3+": 0.826, "PSPNet": 0.787, "SegNet": 0.756},
        lambda out, data: [*BRAINSEG, "compare", "--out", str(out)], compare_dice,
        quick=["--epochs", "2", "--models", "unet,segnet"],
    ),
    Figure(
        "compare_cpu", "five models on the real data, reduced budget (configs/compare_cpu.yaml): per-patient test Dice",
        {"UNet": 0.707, "Attention UNet": 0.532, "DeepLabV3+": 0.552, "PSPNet": 0.481, "SegNet": 0.551},
        lambda out, data: [*BRAINSEG, "compare", "--data", str(data), "--config", "configs/compare_cpu.yaml", "--out", str(out)],
        compare_dice, real_data=True, quick=["--models", "unet", "--set", "train.epochs=2"],
    ),
    Figure(
        "recipe", "CPU recipe (configs/unet_cpu.yaml, 11 held-out patients, flip TTA + largest 3-D component)",
        {"Dice per patient": 0.837, "Dice per slice": 0.924, "Dice micro": 0.856},
        lambda out, data: [*BRAINSEG, "train", "--data", str(data), "--config", "configs/unet_cpu.yaml",
                           "--set", "data.test_fraction=0.2", "--out", str(out), "--evaluate"],
        run_metrics, real_data=True, quick=["--epochs", "2"],
    ),
    Figure(
        "models_speed", "ms per slice, forward / train step at 128 and 256, batch 16, 2 threads (idle machine)",
        {"UNet": "42 / 138 / 230 / 793", "Attention UNet": "45 / 128 / 216 / 795", "SegNet": "107 / 471 / 531 / 1942",
         "DeepLabV3+": "32 / 121 / 144 / 500", "PSPNet": "65 / 215 / 288 / 894"},
        lambda out, data: [*BENCH, "benchmarks/models_speed.py", "--threads", "2"], trains=False, quick=["--quick"],
    ),
    Figure(
        "throughput", "train / inference slices/s at 128×128, batch 4 (measured before the channels-last default)",
        {"UNet": "5.2 / 18.2", "Attention UNet": "3.8 / 14.1", "SegNet": "1.7 / 6.9", "DeepLabV3+": "2.9 / 18.7",
         "PSPNet": "2.4 / 8.0"},
        lambda out, data: [*BENCH, "benchmarks/speed.py", "--sizes", "128"], trains=False, quick=["--quick"],
    ),
    Figure(
        "data_pipeline", "cached dataset with augmentation on the real data, slices/s",
        {"slices/s": 57},
        lambda out, data: [*BENCH, "benchmarks/data_pipeline.py", "--data", str(data)], real_data=True, trains=False, quick=["--quick"],
    ),
    Figure(
        "tests", "clean-clone install and test suite (bash .ci/run), wall time",
        {"install + tests": "2 min 46 s", "tests": "1 min 53 s"},
        lambda out, data: ["bash", ".ci/run"], trains=False,
    ),
]
BY_NAME = {f.name: f for f in FIGURES}


def _shell(argv: list[str]) -> str:
    """The command as the README writes it (`brainseg …`, `python benchmarks/…`)."""
    if argv[: len(BRAINSEG)] == BRAINSEG:
        return " ".join(["brainseg", *argv[len(BRAINSEG) :]])
    if argv[0] == sys.executable:
        return " ".join(["python", *argv[1:]])
    return " ".join(argv)


def run_figure(fig: Figure, work: Path, data: Path, *, repeats: int, quick: bool, threads: int | None) -> dict[str, Any]:
    """Run `fig`'s command `repeats` times (fresh folders, separate processes); its figures per repeat."""
    result: dict[str, Any] = {"name": fig.name, "what": fig.what, "readme": fig.readme, "runs": [], "quick": quick}
    if fig.real_data and not data.is_dir():
        result["skipped"] = f"real data not found at {data} (pass --data)"
        print(f"\n## {fig.name}: skipped — {result['skipped']}")
        return result
    print(f"\n## {fig.name}: {fig.what}")
    for k in range(1, (repeats if fig.read else 1) + 1):
        out = work / f"{fig.name}_{k}"
        argv = fig.command(out, data, quick=quick, threads=threads)
        print(f"$ {_shell(argv)}", flush=True)
        t0 = time.perf_counter()
        log = work / f"{fig.name}_{k}.log"
        with log.open("w", encoding="utf-8") as fh:
            code = subprocess.run(argv, cwd=REPO, stdout=fh if fig.read else None, stderr=subprocess.STDOUT, text=True).returncode
        seconds = time.perf_counter() - t0
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if fig.read else ""
            print(f"   failed (exit {code}) after {seconds:.0f} s; log {log}\n{tail}")
            result["failed"] = code
            break
        run: dict[str, Any] = {"out": str(out), "seconds": round(seconds, 1), "command": _shell(argv)}
        if fig.read:
            run["figures"] = fig.read(out)
            run["environment"] = compare_environment(out)
        result["runs"].append(run)
    if fig.read and result["runs"]:
        print_table(result)
    elif not fig.read:
        print("   README: " + "; ".join(f"{k} {v}" for k, v in fig.readme.items()) + " (the benchmark's own output is above)")
    return result


def print_table(result: dict[str, Any]) -> None:
    runs = result["runs"]
    n = len(runs)
    head = f"   {'figure':<18}{'README':>8}" + "".join(f"{f'run {k + 1}':>9}" for k in range(n))
    print(head + (f"{'mean':>9}{'spread':>9}" if n > 1 else ""))
    for label, ref in result["readme"].items():
        vals = [r["figures"].get(label) for r in runs]
        if any(v is None for v in vals):
            continue
        line = f"   {label:<18}{ref:>8.3f}" + "".join(f"{v:>9.3f}" for v in vals)
        if n > 1:
            line += f"{sum(vals) / n:>9.3f}{max(vals) - min(vals):>9.3f}"
        print(line)
    env = runs[0].get("environment") or {}
    if env:
        print(f"   ({env.get('threads')} threads, {env.get('cpu_model')} {env.get('cpu_capability', '')}, torch {env.get('torch')};"
              f" {runs[0]['seconds']:.0f} s per run{', --quick: not the README settings' if result['quick'] else ''})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"figures to make (default all): {', '.join(BY_NAME)}")
    p.add_argument("--list", action="store_true", help="print every figure's README value and command, run nothing")
    p.add_argument("--quick", action="store_true", help="reduced settings (minutes, not the README's figures)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each accuracy figure, for its spread (default 1)")
    p.add_argument("--threads", type=int, help="train.threads of every training command (default: the setting's default)")
    p.add_argument("--data", type=Path, default=REAL_DATA, help=f"real dataset folder (default {REAL_DATA})")
    p.add_argument("--work", type=Path, help="folder for the runs' outputs (default: a new temporary folder)")
    p.add_argument("--json", type=Path, help="write every figure, run and environment to this file")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if args.repeats < 1:
        p.error("--repeats must be ≥ 1")
    if args.list:
        for n in names:
            f = BY_NAME[n]
            cmd = _shell(f.command(Path("OUT"), Path("DATA"), quick=args.quick, threads=args.threads))
            print(f"{n}: {f.what}\n   README: " + "; ".join(f"{k} {v}" for k, v in f.readme.items()) + f"\n   $ {cmd}")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="readme_figures_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"outputs in {work}")
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        print(f"note: OMP_NUM_THREADS={env} is set; training uses train.threads regardless")
    results = [run_figure(BY_NAME[n], work, args.data, repeats=args.repeats, quick=args.quick, threads=args.threads)
               for n in names]  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"figures": results}, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
