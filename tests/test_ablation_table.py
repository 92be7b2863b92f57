"""benchmarks/ablation_table.py pools per-fold `brainseg evaluate` outputs as it pools comparisons."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_runs import load_benchmark


def _load():
    return load_benchmark("ablation_table")


def _write_folds(root: Path, folds: list[dict[str, float]]) -> Path:
    for k, vals in enumerate(folds):
        d = root / f"fold{k}"
        d.mkdir(parents=True)
        lines = ["patient,institution,dice,recall"] + [f"{p},XX,{v},0.5" for p, v in vals.items()]
        (d / "per_patient.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_folds_of_evaluations_are_pooled_and_paired(tmp_path, capsys):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8, "P2": 0.4}, {"P3": 0.6}])
    b = _write_folds(tmp_path / "b", [{"P1": 0.9, "P2": 0.5}, {"P3": 0.7}])
    assert mod.evaluated_values(a) == ({"P1": 0.8, "P2": 0.4, "P3": 0.6}, 2)
    assert mod.main([f"a={a}", f"b={b}"]) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| a ") or line.startswith("| b ")
    ]
    # a: mean (0.8 + 0.4 + 0.6) / 3 = 0.600, median 0.600, one patient < 0.5, two < 0.7;
    # b is 0.1 higher for every patient; no train minutes in evaluate outputs.
    assert (
        rows[0].startswith("| a | 3 (2) | 0.600 [")
        and "| 0.600 | 1 / 2 |" in rows[0]
        and rows[0].endswith("| – |")
    )
    assert rows[1].startswith("| b | 3 (2) | 0.700 [") and "+0.100 (p 0.250, 3 up / 0 down)" in rows[1]


def test_the_direction_of_the_ranks_is_stated_when_it_disagrees_with_the_mean(tmp_path, capsys):
    """Twelve patients lose 0.01 and one gains 0.5: the mean rises by (0.5 − 12·0.01) / 13 = +0.029, yet
    the signed ranks point down (r+ = 13, r− = 78; SciPy's two-sided p = 0.0195)."""
    mod = _load()
    base = {f"P{i:02d}": 0.4 for i in range(13)}
    new = {**{f"P{i:02d}": 0.39 for i in range(12)}, "P12": 0.9}
    a = _write_folds(tmp_path / "a", [base])
    b = _write_folds(tmp_path / "b", [new])
    assert mod.main([f"a={a}", f"b={b}"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| b "))
    assert "+0.029 (p 0.020, 1 up / 12 down, ranks lower)" in row


def test_a_patient_in_two_folds_is_refused(tmp_path):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8}, {"P1": 0.6}])
    with pytest.raises(SystemExit, match="P1 is in two folds"):
        mod.evaluated_values(a)


def test_replicates_are_averaged_per_patient(tmp_path):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8, "P2": 0.4}, {"P3": 0.6}])
    b = _write_folds(tmp_path / "b", [{"P1": 0.6, "P2": 0.6}, {"P3": 0.7}])
    vals, folds, minutes = mod.replicate_values(f"{a},{b}", "unet")
    # (0.8 + 0.6) / 2, (0.4 + 0.6) / 2, (0.6 + 0.7) / 2
    assert vals == pytest.approx({"P1": 0.7, "P2": 0.5, "P3": 0.65}) and folds == 2


def test_common_scores_every_row_on_the_shared_patients(tmp_path, capsys):
    mod = _load()
    full = _write_folds(tmp_path / "full", [{"P1": 0.8, "P2": 0.4}, {"P3": 0.9}])
    part = _write_folds(tmp_path / "part", [{"P1": 0.9, "P2": 0.6}])
    assert mod.main([f"full={full}", f"part={part}", "--common"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| full ", "| part "))]
    # full on P1, P2 only: (0.8 + 0.4) / 2 = 0.600, one patient < 0.5 and < 0.7 (0.700 over all
    # three without --common);
    # part: 0.750, +0.150 paired over the same two patients
    assert rows[0].startswith("| full | 2 (2) | 0.600 [") and "| 1 / 1 |" in rows[0]
    assert rows[1].startswith("| part | 2 (1) | 0.750 [") and "+0.150" in rows[1]
    assert mod.main([f"full={full}", f"part={part}"]) == 0
    assert "| full | 3 (2) | 0.700 [" in capsys.readouterr().out


def test_common_refuses_rows_without_a_shared_patient(tmp_path):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8}])
    b = _write_folds(tmp_path / "b", [{"P2": 0.6}])
    with pytest.raises(SystemExit, match="share no patient"):
        mod.main([f"a={a}", f"b={b}", "--common"])


def test_exclude_leaves_the_named_patients_out_of_every_row(tmp_path, capsys):
    """Four patients; B gains 0.3 on P4 alone (a flipped patient) and loses 0.01 on the three others:
    over all four (0.3 − 3·0.01) / 4 ≈ +0.067, 1 up / 3 down; without P4 both rows are over P1–P3, a 0.7 / 0.69 mean, −0.010."""
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"TCGA_X_1_2001": 0.7, "TCGA_X_2_2002": 0.6}, {"P3": 0.8, "P4": 0.0}])
    b = _write_folds(tmp_path / "b", [{"TCGA_X_1_2001": 0.69, "TCGA_X_2_2002": 0.59}, {"P3": 0.79, "P4": 0.3}])
    assert mod.main([f"a={a}", f"b={b}"]) == 0
    assert "+0.067 (p 1.000, 1 up / 3 down)" in capsys.readouterr().out
    assert mod.main([f"a={a}", f"b={b}", "--exclude", "P4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| a ", "| b "))]
    assert "left out: P4" in out
    assert rows[0].startswith("| a | 3 (2) | 0.700 [") and rows[1].startswith("| b | 3 (2) | 0.690 [")
    assert "−0.010" in rows[1] or "-0.010" in rows[1]
    # an id prefix names a patient by its start; two entries at once
    assert mod.main([f"a={a}", f"b={b}", "--exclude", "TCGA_X_1,P4"]) == 0
    out = capsys.readouterr().out
    assert "left out: P4, TCGA_X_1_2001" in out and "| a | 2 (2) | 0.700 [" in out


def test_exclude_refuses_an_id_that_matches_nobody(tmp_path):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8, "P2": 0.6}])
    with pytest.raises(SystemExit, match="'TCGA_CS_6188' matches no patient"):
        mod.main([f"a={a}", "--exclude", "TCGA_CS_6188"])


def test_paired_deltas_are_the_mean_differences_on_shared_patients_with_their_ci_and_p():
    """B is 0.1 above A on each of its three patients (P4 is A's alone): +0.100, every resample the same,
    so the CI is [0.1, 0.1]. C against A: differences +0.2, 0.0, −0.05 → mean +0.05; the CI lies within
    the smallest and largest difference; p is SciPy's two-sided Wilcoxon on the same pairs."""
    from scipy.stats import wilcoxon

    mod = _load()
    a = {"P1": 0.5, "P2": 0.6, "P3": 0.7, "P4": 0.2}
    b = {"P1": 0.6, "P2": 0.7, "P3": 0.8}
    c = {"P1": 0.7, "P2": 0.6, "P3": 0.65, "P4": 0.2}
    d_b, d_c = mod.paired_deltas([("a", a), ("b", b), ("c", c)])
    assert d_b["lever"] == "b" and d_b["n"] == 3
    assert d_b["delta"] == pytest.approx(0.1) and d_b["lo"] == pytest.approx(0.1) and d_b["hi"] == pytest.approx(0.1)
    assert d_c["n"] == 4 and d_c["delta"] == pytest.approx((0.2 + 0.0 - 0.05 + 0.0) / 4)
    assert -0.05 - 1e-9 <= d_c["lo"] <= d_c["delta"] <= d_c["hi"] <= 0.2 + 1e-9
    keep = ["P1", "P3"]  # zero differences are dropped by the test, as SciPy's default does
    assert d_c["p"] == pytest.approx(wilcoxon([c[p] for p in keep], [a[p] for p in keep]).pvalue)
    with pytest.raises(SystemExit, match="shares no patient"):
        mod.paired_deltas([("a", {"P1": 0.5}), ("z", {"P9": 0.5})])


def test_plot_and_md_write_the_forest_plot_and_the_table_and_plot_refuses_a_single_row(tmp_path, capsys):
    mod = _load()
    a = _write_folds(tmp_path / "a", [{"P1": 0.8, "P2": 0.4}, {"P3": 0.6}])
    b = _write_folds(tmp_path / "b", [{"P1": 0.9, "P2": 0.5}, {"P3": 0.7}])
    png, md = tmp_path / "levers.png", tmp_path / "levers.md"
    assert mod.main([f"a={a}", f"b={b}", "--plot", str(png), "--md", str(md)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    assert "| b | 3 (2) | 0.700 [" in md.read_text(encoding="utf-8")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(SystemExit, match="at least two rows"):
        mod.main([f"a={a}", "--plot", str(tmp_path / "one.png")])
