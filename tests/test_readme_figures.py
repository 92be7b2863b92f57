"""benchmarks/readme_figures.py and the README agree: every figure the script checks is the README's."""

from __future__ import annotations

import json
from pathlib import Path

from helpers_runs import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_benchmark("readme_figures")


def test_every_scripted_figure_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for fig in _script().FIGURES:
        for label, value in fig.readme.items():
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            if isinstance(value, str):  # a row of a README table or list: each number in it
                assert all(part.strip() in readme for part in text.split("/")), (fig.name, label, text)
            else:
                assert text in readme, f"{fig.name}: {label} {text} is not in README.md"


def test_compare_figures_are_read_from_the_comparison_files(tmp_path: Path) -> None:
    mod = _script()
    for model, dice in (("unet", 0.5), ("segnet", 0.25)):
        p = tmp_path / "runs" / model / "eval_test" / "summary.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"metrics": {"dice": {"per_patient": {"mean": dice}}}}))
    (tmp_path / "runs" / "unet" / "train_summary.json").write_text(json.dumps({"environment": {"threads": 2}}))
    assert mod.compare_dice(tmp_path) == {"UNet": 0.5, "SegNet": 0.25}
    assert mod.compare_environment(tmp_path) == {"threads": 2}


def test_list_prints_each_figure_with_its_command(capsys) -> None:
    assert _script().main(["--list", "--only", "main,compare_cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "$ brainseg compare --out OUT --set train.threads=1" in out
    assert "$ brainseg compare --data DATA --config configs/compare_cpu.yaml --out OUT --set train.threads=1" in out
