"""The report's study sections: significance, what is and is not established, the leaky study beside ours.

Also the boundary/lesion table of the leaderboard and the run environment. Everything is text
and tables built from the leaderboard rows, the significance rows and the comparison's files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from brainseg.reporting.comparison import Comparison
from brainseg.reporting.formatting import display_name, fmt, fmt_p, join_words, to_number
from brainseg.reporting.html import Block, Bullets, Heading, Para, Table
from brainseg.reporting.leaderboard import board_label, is_partial
from brainseg.reporting.significance import pair_claim, verdict

__all__ = [
    "LEAKY_REFERENCE",
    "beside_blocks",
    "environment_blocks",
    "established_text",
    "significance_blocks",
    "surface_notes",
    "surface_table",
]

#: Per-slice Dice reported by the slice-split study brainseg set out to redo honestly (its split
#: put slices of one patient in both training and test; it also reported IoU, recall, precision, loss).
LEAKY_REFERENCE: dict[str, float] = {
    "attention_unet": 0.8895, "deeplabv3plus": 0.8824, "segnet": 0.8435, "unet": 0.8396, "pspnet": 0.7732,
}


def significance_blocks(
    board: Sequence[Mapping[str, Any]], sig: Sequence[Mapping[str, Any]], alpha: float, confidence: float
) -> list[Block]:
    """The verdict paragraph, the pairwise table and one sentence per pair."""
    blocks: list[Block] = [
        Heading("Significance and verdict"), Para(verdict(board, sig, alpha=alpha, confidence=confidence), "verdict")
    ]
    if not sig:
        blocks.append(Para("Only one model has results: there is no pair to test.", "note"))
        return blocks
    rows = [
        [f"{r['label_a']} vs {r['label_b']}", str(r["n"]), f"{r['mean_diff']:+.3f}",
         f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f}" if not math.isnan(r["ci_low"]) else "–",
         f"{r['median_diff']:+.3f}" if not math.isnan(r.get("median_diff", math.nan)) else "–",
         fmt_p(r["p"]), fmt_p(r["p_holm"]),
         (display_name(r["better"]) + " better") if r["significant"] else "not distinguishable"]
        for r in sig
    ]
    blocks.append(Table(
        ["Pair (A vs B)", "Patients", "Mean Δ Dice (A − B)", f"{confidence:.0%} CI of mean Δ", "Median Δ",
         "p (Wilcoxon)", "p (Holm)", "Verdict"],
        rows, align="lrrrrrrl",
        caption=f"Paired Wilcoxon signed-rank tests on per-patient Dice, Holm-corrected over {len(sig)} pairs (α = {alpha}). "
                "The interval is a bootstrap over patients of the mean difference; the signed-rank test asks whether "
                "one model scores higher patient by patient. A few patients with large differences can put 0 inside "
                "the mean's interval while most patients favour one model (or the reverse), so the two can disagree: "
                "the verdict follows the test",
    ))
    blocks.append(Bullets([r["statement"] for r in sig]))
    return blocks


def established_text(board: Sequence[Mapping[str, Any]], sig: Sequence[Mapping[str, Any]], *, alpha: float,
                     n_folds: int) -> str:
    """A plain paragraph: which claims these results support, and which they do not."""
    if not board:
        return "No model has results, so nothing is established."
    n = int(board[0]["n_patients"])
    design = f"{n_folds}-fold cross-validation over patients (each tested once)" if n_folds else "one patient-level split"
    real = [r for r in sig if r["significant"]]
    tied = [r for r in sig if not r["significant"]]

    def pair(r: Mapping[str, Any]) -> str:
        return pair_claim(r, sig)

    text = f"What these results establish, on {n} patients from {design}: "
    if real:
        text += f"{join_words([pair(r) for r in real])} (paired Wilcoxon, Holm over all {len(sig)} pairs, α = {alpha}). "
    elif sig:
        text += "no difference in per-patient Dice between any two models. "
    else:
        text += "the per-patient Dice of one model, with its interval. "
    if tied:
        names = [str(r["label_a"]) + " vs " + str(r["label_b"]) for r in tied]
        text += (f"Not established: the order within {join_words(names)}"
                 " — a non-significant difference is not evidence that the models are equal, only that these "
                 "patients cannot tell them apart. ")
    text += ("Not established either" if tied else "Not established") + (": how the ranking would hold on other scanners, sequences or tumour grades "
             "(one public LGG collection), at other training budgets or input sizes than the protocol's, or for "
             "clinical use; nor the slice-split study's ranking, whose numbers come from a split that leaks patients.")
    return text


def surface_table(board: Sequence[Mapping[str, Any]], policy: Mapping[str, Any] | None = None,
                  n_folds: int = 0) -> Table | None:
    """Boundary, volume and lesion metrics per model, or None when no run has them."""
    if not any(not math.isnan(to_number(r.get("hd95_median"))) for r in board):
        return None
    unit = (policy or {}).get("distance_unit", "px")
    tol = (policy or {}).get("nsd_tolerance", 2.0)
    rows = [[board_label(r, n_folds), fmt(r.get("hd95_median"), 2), fmt(r.get("hd95_mean"), 2), fmt(r.get("assd_mean"), 2),
             fmt(r.get("nsd_mean")), fmt(r.get("lesion_sensitivity")), fmt(r.get("fp_lesions_per_patient"), 2),
             fmt(r.get("vol_rel_err_median"))] for r in board]
    return Table(
        ["Model", f"HD95 median ({unit})", f"HD95 mean ({unit})", f"ASSD mean ({unit})", f"NSD (τ = {tol:g} {unit})",
         "Lesion sensitivity", "FP lesions / patient", "Rel. volume error (median)"],
        rows,
        caption=(f"Boundary and lesions, per patient volume: distances in {unit} of the native slice "
                 f"({'kaggle_3m carries no voxel spacing' if unit == 'px' else 'with the stated spacing'}), "
                 "computed in-plane per slice and pooled over the patient; lesion sensitivity pooled over "
                 "all truth lesions (3-D components); empty cases as summary.json's surface_metrics_policy states."),
    )


def _rank(row: Mapping[str, Any], n_folds: int) -> str:
    """"#2", or "2 of 5 folds" for a model whose folds are not all evaluated (not ranked yet)."""
    return f"{row.get('n_folds', 0)} of {n_folds} folds" if is_partial(row) else f"#{row['rank']}"


def beside_blocks(cmp: Comparison, board: Sequence[Mapping[str, Any]]) -> list[Block]:
    """Our result next to the slice-split study's table, with the reason for each difference."""
    ours = {str(r["model"]): r for r in board}
    models = list(LEAKY_REFERENCE) + [m for m in ours if m not in LEAKY_REFERENCE]
    their_rank = {m: k for k, m in enumerate(sorted(LEAKY_REFERENCE, key=lambda m: -LEAKY_REFERENCE[m]), 1)}
    rows = []
    for m in models:
        r = ours.get(m, {})
        theirs = LEAKY_REFERENCE.get(m)
        d = to_number(r.get("dice_patient"))
        rows.append([
            display_name(m), "–" if theirs is None else f"{theirs:.4f} (#{their_rank[m]})",
            "–" if not r else f"{fmt(d)} ({_rank(r, cmp.n_folds)})", fmt(r.get("dice_slice")), fmt(r.get("dice_micro")),
            "–" if theirs is None or math.isnan(d) else f"{d - theirs:+.3f}",
        ])
    cfg = cmp.protocol.get("config") or {}
    data, model, train = cfg.get("data") or {}, cfg.get("model") or {}, cfg.get("train") or {}
    budget = ", ".join(x for x in (
        f"{data['size']}×{data['size']} px input" if data.get("size") else "",
        f"width {model['width']}" if model.get("width") else "",
        f"{train['epochs']} epochs" if train.get("epochs") else "",
        f"at most {train['max_batches_per_epoch']} batches per epoch" if train.get("max_batches_per_epoch") else "",
    ) if x) or "see the settings above"
    n = board[0]["n_patients"] if board else 0
    items = [
        "Split. The slice-split study divided slices, not patients, between training and test: neighbouring "
        "slices of one patient are nearly the same image, so its test set scored patients the models had "
        f"already seen. Here every test patient is unseen ({'k-fold over patients' if cmp.n_folds else 'a patient-level split'}, "
        f"{n} patients; see the leakage check). Expect our figures to be lower for that reason alone.",
        "Averaging. Its Dice is a mean over slices (or pixels) of the test set; our headline is the mean over "
        "patient volumes. The columns 'per slice' and 'micro' above are our own results averaged its way: the per-slice mean "
        + ("counts every tumour-free slice predicted empty as a perfect 1 (empty policy 'one')" if cmp.empty_policy == "one"
           else f"treats tumour-free slices by the empty policy '{cmp.empty_policy}'")
        + ", and micro Dice is dominated by the largest tumours, so both sit apart from the "
        "per-patient figure on the same predictions.",
        f"Budget and resolution. Our models were trained under one CPU budget ({budget}); the slice-split "
        "study's budget and input size are not part of its table. A gap that remains after the two reasons above "
        "may be budget or resolution, not architecture: see whether the learning curves had flattened.",
        "Metrics. It also reported IoU, recall, precision and loss; ours are in the leaderboard (per patient, with "
        "intervals). A loss value is comparable only under the same loss function, so its loss column is not compared.",
    ]
    return [
        Heading("Beside the slice-split study"),
        Table(["Model", "Slice-split study Dice (rank)", "Ours: Dice per patient (rank)", "Ours: per slice",
               "Ours: micro", "Δ per patient − theirs"], rows, align="lrrrrr",
              caption="The leaky study's Dice beside ours, three ways of averaging the same predictions"),
        Bullets(items),
    ]


def surface_notes(cmp: Comparison) -> list[str]:
    """A note for each model whose runs carry the surface columns only in part."""
    notes = []
    for m, runs in cmp.runs.items():
        has = [r for r in runs if r.per_patient and all(not math.isnan(to_number(p.get("hd95"))) for p in r.per_patient)]
        if has and len(has) < len(runs):
            lacking = ", ".join(str(r.dir) for r in runs if r not in has)
            notes.append(f"{display_name(m)}: {lacking} has no surface metrics (evaluated before they existed; run "
                         "`brainseg evaluate` on it again): the boundary and lesion figures leave this model out.")
    return notes


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def environment_blocks(cmp: Comparison) -> list[Block]:
    """The machines and software the runs were made with, when their files record an `environment`."""
    from brainseg.environment import environment_rows

    values: dict[str, set[str]] = {}
    envs = []
    for runs in cmp.runs.values():
        for r in runs:
            env = next((e for e in ((r.train_summary or {}).get("environment"), r.summary.get("environment"))
                        if isinstance(e, Mapping) and e), None)
            if env is None:
                continue
            envs.append(env)
            for k, v in _flat(env).items():
                values.setdefault(k, set()).add(v)
    n = len(envs)
    if not n:
        return []
    if all(len(v) == 1 for v in values.values()):  # one environment for every run: the readable table
        rows = environment_rows(envs[0])
    else:
        rows = [[k, "; ".join(sorted(v)) if len(v) <= 3 else f"{len(v)} different values"]
                for k, v in sorted(values.items())]
    return [Heading("Run environment", 3),
            Table(["", "Value"], rows, align="ll", caption=f"Environment as recorded by {n} run(s) (training summary, else evaluation)")]
