"""The README's study table says what docs/study/leaderboard.csv (built by `brainseg report docs/study`) says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from brainseg.fileio import read_csv

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "docs" / "study" / "leaderboard.csv"


def _readme_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.index("| Model | per-patient Dice [95% CI] (54 patients)")
    rows = {}
    for line in text[head:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(not BOARD.is_file(), reason="docs/study/leaderboard.csv absent")
def test_readme_study_table_matches_the_leaderboard() -> None:
    board = {r["label"]: r for r in read_csv(BOARD)}
    rows = _readme_rows()
    assert set(rows) == set(board), "the README's study table lists other models than docs/study/leaderboard.csv"
    for label, cells in rows.items():
        r = board[label]
        dice, lo, hi = (float(x) for x in re.findall(r"\d\.\d{3}", cells[0]))
        got = [dice, lo, hi, *(float(c) for c in cells[1:6])]
        want = [float(r[k]) for k in ("dice_patient", "dice_patient_ci_low", "dice_patient_ci_high", "dice_patient_median",
                                      "iou_patient", "recall_patient", "precision_patient", "hd95_median")]
        assert got[:7] == pytest.approx([round(w, 3) for w in want[:7]], abs=6e-4), label
        assert got[7] == pytest.approx(want[7], abs=6e-3), label
        mean, sd = (float(x) for x in re.findall(r"\d\.\d{3}", cells[6]))
        assert (mean, sd) == pytest.approx((float(r["dice_fold_mean"]), float(r["dice_fold_sd"])), abs=6e-4), label
