"""`build_report`: a finished comparison folder → leaderboard, significance tests, figures, report.

Reads only the files `brainseg compare` wrote (protocol.json, runs/…/eval_test/*.csv and
summary.json, history.csv, train_summary.json, examples/*.npz, robustness/*.csv); no model is
loaded, so a report can be rebuilt anywhere the folder is copied to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainseg.fileio import write_csv_atomic, write_text_atomic
from brainseg.metrics.detection import roc_curve
from brainseg.reporting.comparison import Comparison, first_of, load_comparison
from brainseg.reporting.formatting import (
    display_name,
    fmt,
    fmt_ci,
    fmt_count,
    fmt_seconds,
    markdown_table,
    to_number,
)
from brainseg.reporting.html import (
    Block,
    Bullets,
    Figure,
    Heading,
    Para,
    Table,
    render_html,
    render_markdown,
)
from brainseg.reporting.leaderboard import (
    BOARD_METRICS,
    board_label,
    complete_rows,
    is_partial,
    leaderboard,
    leaderboard_columns,
    per_patient_values,
    pooled_patients,
)
from brainseg.reporting.protocol_section import protocol_blocks, reproduce_blocks, split_blocks
from brainseg.reporting.robustness_section import robustness_blocks
from brainseg.reporting.significance import SIGNIFICANCE_COLUMNS, significance
from brainseg.reporting.study_plots import learning_curves_folds, paired_patient_plot
from brainseg.reporting.study_sections import (
    beside_blocks,
    environment_blocks,
    established_text,
    significance_blocks,
    surface_notes,
    surface_table,
)

__all__ = ["build_report", "leaderboard_text"]


def _f(v: Any, d: int = 3) -> str:
    return fmt(v, d)


def _ms(v: Any) -> str:
    x = to_number(v)
    return "–" if math.isnan(x) else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def _epochs(row: Mapping[str, Any]) -> str:
    e, b = to_number(row.get("epochs")), to_number(row.get("best_epoch"))
    if math.isnan(e):
        return "–"
    s = f"{e:.0f}" if float(e).is_integer() else f"{e:.1f}"
    return s + (f" (best {b:.0f})" if not math.isnan(b) else "")


# ------------------------------------------------------------------------------------------- tables


def board_tables(board: Sequence[Mapping[str, Any]], n_folds: int, confidence: float = 0.95,
                 surface_policy: Mapping[str, Any] | None = None) -> list[Table]:
    """The leaderboard as readable tables: overlap per patient, per slice/micro, detection, cost, and
    boundary/lesion metrics when the runs have them.

    `confidence` is the level of the board's bootstrap intervals (named in the caption);
    `surface_policy` the evaluation's surface_metrics_policy (units, NSD tolerance).
    """
    head = ["#", "Model", "Dice", "Dice median", "IoU", "Recall", "Precision", "Loss"]
    has_hd95 = any(not math.isnan(to_number(r.get("hd95_median"))) for r in board)
    if has_hd95:
        head.append(f"HD95 median ({(surface_policy or {}).get('distance_unit', 'px')})")
    rows = []
    for r in board:
        row = ["–" if is_partial(r) else str(r["rank"]), board_label(r, n_folds), fmt_ci(r, "dice_patient"), _f(r.get("dice_patient_median"))]
        row += [fmt_ci(r, f"{m}_patient") for m in ("iou", "recall", "precision")]
        row.append(_f(r.get("loss")))
        if has_hd95:
            row.append(fmt(r.get("hd95_median"), 2))
        if n_folds:
            row.append(f"{_f(r.get('dice_fold_mean'))} ± {_f(r.get('dice_fold_sd'))}")
        rows.append(row)
    if n_folds:
        head.append(f"Dice over {n_folds} folds (mean ± sd)")
    loss_name = next((r.get("loss_name") for r in board if r.get("loss_name")), "")
    pooled = f", pooled over {n_folds} folds" if n_folds else ""
    t1 = Table(
        head, rows, highlight_first=True, align="rl" + "r" * (len(head) - 2),
        caption=(f"Per patient volume: mean over {board[0]['n_patients'] if board else 0} test patients{pooled} "
                 f"[{confidence:.0%} bootstrap CI over patients]; loss = training loss ({loss_name or 'n/a'}) on the test split. "
                 "Ranked by Dice" + ("; a model with folds not yet evaluated (–) is listed after the complete ones, "
                                    "unranked, as its patients are fewer." if any(map(is_partial, board))
                                    and not all(map(is_partial, board)) else ".")),
    )
    t2 = Table(
        ["Model", "Dice / slice", "IoU / slice", "Recall / slice", "Precision / slice",
         "Dice micro", "IoU micro", "Recall micro", "Precision micro"],
        [[board_label(r, n_folds)] + [_f(r.get(f"{m}_slice")) for m in BOARD_METRICS] + [_f(r.get(f"{m}_micro")) for m in BOARD_METRICS]
         for r in board],
        caption="Per slice: mean over slices (empty-mask policy below); micro: counts summed over every test slice.",
    )
    t3 = Table(
        ["Model", "Slice sensitivity", "Slice specificity", "Slice AUROC",
         "Patient sensitivity", "Patient specificity", "Patient AUROC"],
        [[board_label(r, n_folds)] + [_f(r.get(f"{lvl}_{k}")) for lvl in ("slice", "patient") for k in ("sensitivity", "specificity", "auroc")]
         for r in board],
        caption="Tumour detection" + (" (from the test slices of all folds pooled)" if n_folds else ""),
    )
    t4 = Table(
        ["Model", "Parameters", "FLOPs / slice", "Training time", "Epochs", "Inference ms / slice"],
        [[board_label(r, n_folds), fmt_count(r.get("params")), fmt_count(r.get("flops")), fmt_seconds(r.get("train_seconds")),
          _epochs(r), _ms(r.get("inference_ms_per_slice"))] for r in board],
        caption="Cost" + (f" (training time summed over {n_folds} folds; epochs and inference time averaged)" if n_folds else "")
        + ". Parameters as trained (a training-only head such as PSPNet's auxiliary one included); FLOPs of one "
          "forward pass at inference",
    )
    t5 = surface_table(board, surface_policy, n_folds)
    return [t1, t2, t3, t4] + ([t5] if t5 else [])


def leaderboard_markdown(board: Sequence[Mapping[str, Any]], n_folds: int, confidence: float = 0.95,
                         surface_policy: Mapping[str, Any] | None = None) -> str:
    """leaderboard.md: the tables of `board_tables` in Markdown."""
    parts = []
    for t in board_tables(board, n_folds, confidence, surface_policy):
        parts += [f"*{t.caption}*", "", markdown_table(t.headers, t.rows, t.align), ""]
    return "# Leaderboard\n\n" + "\n".join(parts)


def _text_label(r: Mapping[str, Any]) -> str:
    """The model's name, "(3 folds)" after it when its folds are not all evaluated (as read back
    from leaderboard.csv, which does not hold the planned number)."""
    if not is_partial(r):
        return str(r["label"])
    k = int(to_number(r.get("n_folds")))
    return f"{r['label']} ({k} fold{'' if k == 1 else 's'})"


def leaderboard_text(board: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> str:
    """A compact fixed-width leaderboard for the terminal (`confidence`: the intervals' level)."""
    head = f"{'#':>2}  {'model':<22}{f'Dice per patient [{confidence:.0%} CI]':<28}{'IoU':>7}{'recall':>8}{'precision':>10}{'loss':>8}{'params':>10}{'train':>9}"
    lines = [head, "-" * len(head)]
    for r in board:
        lines.append(
            f"{'–' if is_partial(r) else int(r['rank']):>2}  {_text_label(r):<21} {fmt_ci(r, 'dice_patient'):<28}{_f(r.get('iou_patient')):>7}"
            f"{_f(r.get('recall_patient')):>8}{_f(r.get('precision_patient')):>10}{_f(r.get('loss')):>8}"
            f"{fmt_count(r.get('params')):>10}{fmt_seconds(r.get('train_seconds')):>9}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- report


def build_report(
    cmp_dir: str | Path,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Path]:
    """Write leaderboard.csv/.md, significance.csv, figures/*.png, report.md and report.html.

    Args:
        cmp_dir: a comparison folder written by `brainseg compare` (see brainseg.compare).
        alpha: family-wise significance level of the Holm-corrected pairwise tests.
        n_boot, confidence, seed: settings of every bootstrap interval.

    Returns:
        name → path of every file written (keys: leaderboard_csv, leaderboard_md,
        significance_csv, figure_<name>, report_md, report_html).

    Raises:
        BrainsegError: `cmp_dir` is not a comparison folder or no model has results.
    """
    from brainseg.reporting.overlays import load_examples, plot_examples
    from brainseg.reporting.plots import (
        model_colors,
        plot_detection,
        plot_dice_per_patient,
        plot_learning_curves,
        plot_metrics_bars,
    )

    cmp = load_comparison(cmp_dir)
    out = cmp.dir
    fig_dir = out / "figures"
    notes = list(cmp.notes)
    written: dict[str, Path] = {}

    board = leaderboard(cmp, n_boot=n_boot, confidence=confidence, seed=seed)
    sig = significance(cmp, board, alpha=alpha, n_boot=n_boot, confidence=confidence, seed=seed)
    notes += surface_notes(cmp)
    for m in cmp.models:
        _, dup = pooled_patients(cmp.runs[m])
        if dup:
            notes.append(f"{m}: {dup} patient(s) appear in more than one fold; their metrics were averaged.")

    written["leaderboard_csv"] = write_csv_atomic(out / "leaderboard.csv", board, leaderboard_columns(cmp.n_folds))
    surface_policy = next((r.summary.get("surface_metrics_policy") for runs in cmp.runs.values() for r in runs
                           if r.summary.get("surface_metrics_policy")), None)
    written["leaderboard_md"] = write_text_atomic(
        out / "leaderboard.md", leaderboard_markdown(board, cmp.n_folds, confidence, surface_policy))
    written["significance_csv"] = write_csv_atomic(out / "significance.csv", sig, SIGNIFICANCE_COLUMNS)

    colors = model_colors([str(m) for m in cmp.protocol["models"]])
    labels = {m: display_name(m) for m in cmp.protocol["models"]}
    ranked = [str(r["model"]) for r in board]
    figures: list[Figure] = []

    written["figure_metrics_bars"] = plot_metrics_bars(board, colors, fig_dir / "metrics_bars.png", confidence=confidence)
    figures.append(Figure(
        written["figure_metrics_bars"],
        f"Per-patient mean Dice, IoU, recall and precision with {confidence:.0%} bootstrap intervals over patients (left) "
        "and the training loss on the test split (right).", "metric bars"))

    per_patient = per_patient_values(cmp, "dice")
    written["figure_paired_dice"] = paired_patient_plot(
        {m: per_patient[m] for m in ranked}, fig_dir / "paired_dice.png", order=ranked, labels=labels)
    headline = Figure(
        written["figure_paired_dice"],
        "Per-patient Dice of every model, paired: one grey line per test patient across the models (ranked by mean "
        "Dice), the bold line their median. Crossing lines are patients on whom the ranking flips.", "paired per-patient Dice",
        width="62%")  # at its natural size, so the headline table and figure share the first screen
    written["figure_dice_per_patient"] = plot_dice_per_patient(
        {m: list(per_patient[m].values()) for m in ranked}, labels, colors, fig_dir / "dice_per_patient.png", seed=seed)
    figures.append(Figure(
        written["figure_dice_per_patient"],
        "Distribution of per-patient Dice: each point is one test patient; boxes span the quartiles, the line is "
        "the median and the diamond the mean.", "per-patient Dice"))

    histories = {m: [r.history for r in cmp.runs[m] if r.history] for m in cmp.models}
    histories = {m: h for m, h in histories.items() if h}
    if histories:
        written["figure_learning_curves"] = plot_learning_curves(histories, labels, colors, fig_dir / "learning_curves.png")
        figures.append(Figure(
            written["figure_learning_curves"],
            "Learning curves: training and validation loss (left) and validation Dice (right) per epoch"
            + (", one line per fold." if cmp.n_folds else "."), "learning curves"))
        if cmp.n_folds:
            order = [m for m in ranked if m in histories]
            written["figure_learning_curves_folds"] = learning_curves_folds(
                histories, fig_dir / "learning_curves_folds.png", order=order, labels=labels, colors=colors)
            figures.append(Figure(
                written["figure_learning_curves_folds"],
                "Validation Dice per epoch, one panel per model: thin lines are the folds, the bold line their mean "
                "(dashed where some folds had stopped). A curve still rising at the end means the budget, not the "
                "architecture, limited the model.", "learning curves over folds"))
    else:
        notes.append("No history.csv found: the learning-curve figure is left out.")

    rocs, ops = {}, {}
    for m in ranked:
        sl = [s for r in cmp.runs[m] for s in (r.per_slice or [])]
        if not sl or all(math.isnan(to_number(s.get("prob_max"))) for s in sl):
            continue
        rocs[m] = roc_curve([to_number(s.get("prob_max")) for s in sl],
                              [to_number(s.get("true_area")) > 0 for s in sl])
        row = next(r for r in board if r["model"] == m)
        ops[m] = (to_number(row.get("slice_sensitivity")), to_number(row.get("slice_specificity")))
    rocs = {m: v for m, v in rocs.items() if not math.isnan(v[2])}
    if rocs:
        min_area = next(iter(cmp.runs.values()))[0].summary.get("detection_min_area")
        written["figure_detection"] = plot_detection(
            rocs, labels, colors, fig_dir / "detection.png", operating_points=ops, min_area=min_area)
        figures.append(Figure(
            written["figure_detection"],
            "Slice-level tumour detection: ROC curves of each slice's highest tumour probability against "
            "'the slice has tumour'; dots mark the area rule used for the detection table.", "ROC curves"))
    else:
        notes.append("No per-slice probabilities with both tumour and tumour-free slices: the ROC figure is left out.")

    ex, ex_notes = load_examples(out / "examples", ranked)
    notes += ex_notes
    if ex is not None and ex.models:
        thresholds = {m: float(cmp.runs[m][0].summary.get("threshold", 0.5)) for m in cmp.models}
        written["figure_examples"] = plot_examples(
            ex, labels, thresholds, fig_dir / "examples.png", models=ranked, empty_policy=cmp.empty_policy)
        rows = (f"of {ex.rule}, the best, typical and worst by mean Dice over the models shown" if ex.rule
                else "best, typical and worst by mean Dice over models")
        figures.append(Figure(
            written["figure_examples"],
            f"Example test slices (rows: {rows}). Columns: the FLAIR "
            "image, the ground truth, then each model's prediction; green contour = ground truth, magenta = "
            "prediction; the title gives the slice's Dice (as in the model's per_slice.csv).", "example predictions"))
    elif ex is not None:
        notes.append("examples/ holds no model's predictions for its slices: the example figure is left out.")

    rob_blocks, rob_fig = robustness_blocks(out, labels, colors, fig_dir, notes,
                                            {str(r["model"]): to_number(r.get("dice_patient")) for r in board})
    if rob_fig is not None:
        written["figure_robustness"] = rob_fig

    # ------------------------------------------------------------------------------ the document
    p = cmp.protocol
    best = board[0]
    title = "brainseg comparison: " + ", ".join(labels[m] for m in cmp.models)
    done = len(cmp.runs.get(best["model"], ())) if cmp.n_folds else 0
    folds_desc = f"{cmp.n_folds} folds" if done == cmp.n_folds else f"{done} of {cmp.n_folds} folds (the others not yet run)"
    test_desc = f"{best['n_patients']} test patients" + (f" pooled over {folds_desc}" if cmp.n_folds else "")
    subtitle = " · ".join(x for x in (
        f"created {p.get('created')}" if p.get("created") else "",
        f"brainseg {p.get('brainseg_version')}" if p.get("brainseg_version") else "",
        f"device {p.get('device') or _device(cmp)}" if (p.get("device") or _device(cmp)) else "",
    ) if x)
    tables = board_tables(board, cmp.n_folds, confidence, surface_policy)
    # A results section: the headline sentence, table and figure first; how it was made comes after.
    blocks: list[Block] = [
        Para(f"{_how_many(board, p.get('models') or [])} on {test_desc}. "
             f"{'Best' if complete_rows(board) else 'Leading so far'}: {best['label']}, per-patient Dice "
             f"{fmt_ci(best, 'dice_patient')}.{_partial_note(board, cmp.n_folds)}", "verdict"),
        Heading("Results"), tables[0], headline,
    ]
    blocks += [Heading("Leaderboard", 3)] + tables[1:]
    blocks += significance_blocks(board, sig, alpha, confidence)
    blocks += [Para(established_text(board, sig, alpha=alpha, n_folds=cmp.n_folds), "verdict")]
    blocks += beside_blocks(cmp, board)
    blocks += [Heading("Figures")] + figures
    blocks += rob_blocks
    blocks += split_blocks(cmp)
    blocks += protocol_blocks(cmp, alpha=alpha, n_boot=n_boot, confidence=confidence)
    blocks += environment_blocks(cmp)
    if notes:
        blocks += [Heading("Notes"), Bullets(notes)]
    blocks += reproduce_blocks(cmp)

    md = render_markdown(title, ([Para(subtitle)] if subtitle else []) + blocks, out)
    written["report_md"] = write_text_atomic(out / "report.md", md)
    written["report_html"] = write_text_atomic(out / "report.html", render_html(title, blocks, subtitle=subtitle))
    return written


def _device(cmp: Comparison) -> str:
    for runs in cmp.runs.values():
        for r in runs:
            d = first_of(r.train_summary, "device_name", "device")
            if d:
                return str(d)
    return ""


def _partial_note(board: Sequence[Mapping[str, Any]], n_folds: int) -> str:
    """" Not ranked yet: SegNet (2 of 5 folds, 22 patients)." for the models whose folds are not all in."""
    part = [r for r in board if is_partial(r)]
    if not part or len(part) == len(board):
        return ""
    names = ", ".join(f"{r['label']} ({r.get('n_folds', 0)} of {n_folds} folds, {r['n_patients']} patients)" for r in part)
    return f" Not ranked yet: {names}."


def _how_many(board: Sequence[Mapping[str, Any]], planned: Sequence[str]) -> str:
    """"3 models compared", "One model evaluated", and the protocol's models without results yet."""
    lead = "One model evaluated" if len(board) == 1 else f"{len(board)} models compared"
    have = {r["model"] for r in board}
    pending = [display_name(m) for m in planned if m not in have]
    if pending:
        lead += f" ({len(have)} of the protocol's {len(have) + len(pending)}; {', '.join(pending)} not yet run)"
    return lead

