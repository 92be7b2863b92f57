"""Are the models' differences real? Paired tests on per-patient Dice, and the verdict in words."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from brainseg.reporting.comparison import Comparison
from brainseg.reporting.formatting import display_name, fmt_p, join_words
from brainseg.reporting.leaderboard import complete_rows, is_partial, per_patient_values

__all__ = ["SIGNIFICANCE_COLUMNS", "significance", "significance_sentence", "verdict"]


def significance(
    cmp: Comparison,
    board: Sequence[Mapping[str, Any]],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pairwise Wilcoxon signed-rank tests on per-patient Dice with Holm's correction.

    Pairs are formed in leaderboard order, so model_a is the higher-ranked model and a positive
    mean_diff favours it. Each row also carries `statement`, one plain-English sentence.
    """
    from brainseg.metrics.stats import pairwise_comparisons

    values = per_patient_values(cmp, "dice")
    ordered = {str(r["model"]): values[str(r["model"])] for r in board}
    if len(ordered) < 2:
        return []
    rows = pairwise_comparisons(ordered, alpha=alpha, n_boot=n_boot, confidence=confidence, seed=seed)
    for r in rows:
        r["label_a"], r["label_b"] = display_name(r["model_a"]), display_name(r["model_b"])
        r["statement"] = significance_sentence(r, confidence=confidence)
    return rows


SIGNIFICANCE_COLUMNS = (
    "model_a", "model_b", "n", "mean_a", "mean_b", "mean_diff", "median_diff", "ci_low", "ci_high",
    "statistic", "p", "p_holm", "significant", "better", "statement",
)


def significance_sentence(row: Mapping[str, Any], *, confidence: float = 0.95) -> str:
    """E.g. "Attention UNet vs SegNet: +0.031 Dice (95% CI +0.010 to +0.052; median +0.020), p_holm = 0.004 — a
    real difference" (the mean difference, its interval, and the median difference when the row has it).

    The interval is labelled with `confidence`, the level it was computed at.
    """
    a, b = display_name(row["model_a"]), display_name(row["model_b"])
    diff, lo, hi = row["mean_diff"], row.get("ci_low", float("nan")), row.get("ci_high", float("nan"))
    p = row["p_holm"]
    head = f"{a} vs {b}: {diff:+.3f} Dice"
    median = row.get("median_diff")
    parts = [f"{confidence:.0%} CI {lo:+.3f} to {hi:+.3f}"] if lo is not None and not math.isnan(lo) else []
    parts += [f"median {median:+.3f}"] if median is not None and not math.isnan(median) else []
    if parts:
        head += f" ({'; '.join(parts)})"
    head += f", p_holm {'<' if p < 0.001 else '='} {fmt_p(p).lstrip('< ')} over {row['n']} patients"
    if row["significant"]:
        better = display_name(row["better"]) if row["better"] not in ("none", None) else a
        return f"{head} — a real difference: {better} is better."
    return f"{head} — {a} and {b} are not distinguishable."


def _min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p an exact signed-rank test can give with n pairs (all differences one sign)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def pair_claim(r: Mapping[str, Any], sig: Sequence[Mapping[str, Any]]) -> str:
    """"UNet > SegNet", with "(on 33 patients)" where the pair has fewer patients in common than
    the best-paired one (a model whose folds are not all evaluated)."""
    worse = r["model_b"] if r["better"] == r["model_a"] else r["model_a"]
    most = max((int(x["n"]) for x in sig), default=0)
    return f"{display_name(r['better'])} > {display_name(worse)}" + (
        f" (on {int(r['n'])} patients)" if int(r["n"]) < most else "")


def verdict(
    board: Sequence[Mapping[str, Any]], sig: Sequence[Mapping[str, Any]], *, alpha: float = 0.05,
    confidence: float = 0.95,
) -> str:
    """One paragraph: which model is best, by how much, and which differences are real.

    `confidence` is the level the board's intervals were computed at (it is named in the text).
    """
    if not board:
        return "No model has results."
    # models with folds not yet evaluated are scored on fewer patients: the ranking is over the rest
    part = [r for r in board if is_partial(r)] if complete_rows(board) else []
    board = complete_rows(board) or list(board)
    ranked = {str(r["model"]) for r in board}
    best = board[0]
    b = best["label"]
    text = (
        f"{b} has the highest mean per-patient Dice, {best['dice_patient']:.3f} "
        f"({confidence:.0%} CI {best['dice_patient_ci_low']:.3f}–{best['dice_patient_ci_high']:.3f}) over "
        f"{best['n_patients']} test patients"
    )
    waiting = ""
    if part:
        waiting = (f" {join_words([str(r['label']) for r in part])} "
                   f"{'is' if len(part) == 1 else 'are'} not ranked yet: not all of {'its' if len(part) == 1 else 'their'} "
                   "folds are evaluated, so the mean is over other patients (the paired tests below use the patients in common).")
    if len(board) == 1:
        return (text + "; it is the only model in this comparison with every fold evaluated, so nothing is ranked."
                if part else text + "; it is the only model in this comparison, so nothing is compared.") + waiting
    second = board[1]
    gap = best["dice_patient"] - second["dice_patient"]
    if gap < 0.0005:  # would print as +0.000: say it in words
        text += f", level with {second['label']} ({second['dice_patient']:.4f} vs {best['dice_patient']:.4f})"
    else:
        text += f", {gap:+.3f} ahead of {second['label']} ({second['dice_patient']:.3f})"
    worst = board[-1]
    if len(board) > 2:
        text += f" and {best['dice_patient'] - worst['dice_patient']:+.3f} ahead of the last, {worst['label']} ({worst['dice_patient']:.3f})"
    text += "." + waiting + " "
    real = [r for r in sig if r["significant"]]
    vs_best = [r for r in sig if best["model"] in (r["model_a"], r["model_b"])
               and {r["model_a"], r["model_b"]} <= ranked]
    beaten = [r for r in vs_best if r["significant"] and r["better"] == best["model"]]
    tied = [r for r in vs_best if not r["significant"]]
    if vs_best and len(beaten) == len(vs_best):
        text += f"{b} is significantly better than every other {'complete ' if part else ''}model (Wilcoxon signed-rank, Holm-corrected, α = {alpha}). "
    elif tied:
        others = [display_name(r["model_b"] if r["model_a"] == best["model"] else r["model_a"]) for r in tied]
        text += (
            f"{b} cannot be told apart from {join_words(others)} on these patients "
            f"(Holm-corrected Wilcoxon, α = {alpha}), so the data do not single out one best model. "
        )
    if real:
        pairs = [pair_claim(r, sig) for r in real]
        text += f"Real differences: {join_words(pairs)}. "
    else:
        text += "No difference between models is significant. "
    n = max((int(r["n"]) for r in sig), default=0)
    # Holm multiplies the smallest p by the number of pairs: below this many patients nothing can pass.
    if 0 < n and not real and _min_wilcoxon_p(n) * len(sig) >= alpha:
        text += (
            f"With only {n} paired patients and {len(sig)} comparisons, even a model better on every "
            f"patient gets p_holm ≥ {min(1.0, _min_wilcoxon_p(n) * len(sig)):.3f}, so no difference can reach "
            f"α = {alpha}: more test patients (or --folds) are needed. "
        )
    return text.strip()
