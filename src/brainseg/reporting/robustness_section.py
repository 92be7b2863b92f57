"""The robustness section of a comparison's report, from the files `brainseg robustness` wrote.

Reads `<comparison>/robustness/robustness.csv` and `strata.csv`; draws the all-models figure and
the tables of per-patient Dice by perturbation and by stratum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from brainseg.reporting.comparison import read_table
from brainseg.reporting.formatting import display_name, fmt, to_number
from brainseg.reporting.html import Block, Figure, Heading, Para, Table

#: A clean robustness Dice further than this from the comparison's own is another model's.
OTHER_RUNS_TOLERANCE = 5e-4


def _f(v: object, d: int = 3) -> str:
    return fmt(v, d)


def robustness_blocks(
    cmp_dir: Path, labels: Mapping[str, str], colors: Mapping[str, str], fig_dir: Path, notes: list[str],
    study_dice: Mapping[str, float] | None = None,
) -> tuple[list[Block], Path | None]:
    """The report's robustness section from `<cmp_dir>/robustness/` (none when absent), and its figure.

    `study_dice` (model → the comparison's own per-patient Dice) tells which models were perturbed
    as other weights or under other evaluation settings than the comparison's (e.g. a fold trained
    again on a machine that could not repeat the committed run): their clean Dice differs from it,
    which the section says, with both figures. Problems with the files become entries in `notes`; they never stop
    the report.
    """
    rdir = cmp_dir / "robustness"
    path = rdir / "robustness.csv"
    if not path.is_file():
        return [], None
    try:
        rows = read_table(path, ("model", "perturbation", "severity", "dice_patient"))
    except Exception as exc:  # an optional section must not sink the report
        notes.append(f"{path} could not be used ({exc}); robustness section left out.")
        return [], None
    if not rows:
        notes.append(f"{path} has no rows; robustness section left out.")
        return [], None
    from brainseg.reporting.plots import plot_robustness

    compared = list(labels)
    labels = {**{str(r["model"]): display_name(str(r["model"])) for r in rows}, **labels}
    colors = dict(colors)
    from brainseg.reporting.plots import model_colors

    for m, c in model_colors([str(r["model"]) for r in rows]).items():
        colors.setdefault(m, c)
    fig = plot_robustness(rows, labels, colors, fig_dir / "robustness.png")
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    keys = list(dict.fromkeys((str(r["perturbation"]), r["severity"], str(r.get("parameter", ""))) for r in rows))
    table_rows = []
    for p, sev, par in keys:
        vals = {str(r["model"]): r["dice_patient"] for r in rows
                if (str(r["perturbation"]), r["severity"], str(r.get("parameter", ""))) == (p, sev, par)}
        table_rows.append([p, _f(sev, 0) if not math.isnan(sev) else "–", par or "–"] + [_f(vals.get(m)) for m in models])
    # the compared models (labels' keys, in the board's order) that have no rows here yet
    absent = [labels[m] for m in compared if m not in models]
    blocks: list[Block] = [Heading("Robustness")]
    from brainseg.reporting.plots import CLEAN_NAMES

    clean = {str(r["model"]): r["dice_patient"] for r in rows if str(r["perturbation"]).lower() in CLEAN_NAMES}
    study = study_dice or {}
    other = [(m, d, study[m]) for m, d in clean.items() if m in study and abs(d - study[m]) > OTHER_RUNS_TOLERANCE]
    if other:
        blocks.append(Para(
            "Unperturbed, these models score otherwise here than in the comparison above, so they were perturbed "
            "as other weights or under other evaluation settings (e.g. folds trained again on a machine that could "
            "not repeat the committed runs, or another checkpoint): "
            + "; ".join(f"{labels.get(m, m)} (clean per-patient Dice {_f(d, 4)} here, {_f(s, 4)} above)"
                        for m, d, s in other)
            + ". Their drops are measured against their own clean Dice.", "note"))
    if absent:
        blocks.append(Para(
            f"Not yet run under the perturbations: {', '.join(absent)} (`brainseg compare … --robustness quick` on a "
            "machine with their checkpoints adds them; a model whose result files are committed is trained again "
            "for them, checked epoch for epoch).", "note"))
    blocks += [
        Figure(fig, "Per-patient Dice on the test patients as each perturbation grows stronger, one line per model.",
               "robustness"),
        Table(["Perturbation", "Severity", "Parameter"] + [labels[m] for m in models], table_rows, align="lll" + "r" * len(models),
              caption="Mean per-patient Dice under each perturbation"),
    ]
    spath = rdir / "strata.csv"
    if spath.is_file():
        try:
            srows = read_table(spath, ("model", "stratum_type", "stratum", "dice_patient"))
        except Exception as exc:
            notes.append(f"{spath} could not be used ({exc}); stratified tables left out.")
            srows = []
        smodels = list(dict.fromkeys(str(r["model"]) for r in srows))
        for stype in dict.fromkeys(str(r["stratum_type"]) for r in srows):
            sub = [r for r in srows if str(r["stratum_type"]) == stype]
            strata = list(dict.fromkeys(str(r["stratum"]) for r in sub))
            trows = []
            for s in strata:
                cells, n = [], None
                for m in smodels:
                    hit = [r for r in sub if str(r["stratum"]) == s and str(r["model"]) == m]
                    cells.append(_f(hit[0]["dice_patient"]) if hit else "–")
                    if hit and not math.isnan(to_number(hit[0].get("n_patients"))):
                        n = int(to_number(hit[0]["n_patients"]))
                trows.append([s, "–" if n is None else str(n)] + cells)
            blocks.append(Table([stype.replace("_", " ").capitalize(), "Patients"] + [labels.get(m, m) for m in smodels],
                                trows, caption=f"Mean per-patient Dice by {stype.replace('_', ' ')}",
                                align="lr" + "r" * len(smodels)))
    return blocks, fig
