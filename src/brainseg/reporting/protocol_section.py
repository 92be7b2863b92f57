"""The report's protocol sections: data and split, shared settings (folded), metric definitions, reproduce.

What was compared and how, from protocol.json and the runs' summaries; the numbers themselves
are in the leaderboard and study sections.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from brainseg.reporting.comparison import Comparison
from brainseg.reporting.formatting import display_name
from brainseg.reporting.html import Block, Bullets, Code, Details, Heading, Para, Table
from brainseg.reporting.leakage import check_leakage

__all__ = ["protocol_blocks", "reproduce_blocks", "split_blocks"]


def split_blocks(cmp: Comparison) -> list[Block]:
    p = cmp.protocol
    data = p.get("data") or {}
    blocks: list[Block] = [Heading("Data and split")]
    rows = [["Dataset", str(data.get("root", "–"))]]
    for key, label in (("patients", "Patients"), ("slices", "Slices")):
        if data.get(key) is not None:
            rows.append([label, str(data[key])])
    if data.get("tumour_slices") is not None:
        share = f" ({data['tumour_slices'] / data['slices']:.0%} of slices)" if data.get("slices") else ""
        rows.append(["Slices with tumour", f"{data['tumour_slices']}{share}"])
    inst = data.get("institutions")
    if isinstance(inst, Mapping) and inst:
        rows.append(["Institutions", f"{len(inst)}: " + ", ".join(f"{k} ({v})" for k, v in sorted(inst.items()))])
    blocks.append(Table(["", "Value"], rows, align="ll", caption="Dataset"))
    if cmp.splits:
        if cmp.n_folds:
            srows = [[str(k), str(s.get("id", "–")), str(len(s.get("train") or [])), str(len(s.get("val") or [])),
                      str(len(s.get("test") or []))] for k, s in enumerate(cmp.splits)]
            blocks.append(Table(["Fold", "Split id", "Train patients", "Validation patients", "Test patients"], srows,
                                caption=f"{cmp.n_folds}-fold cross-validation over patients "
                                        f"(method: {cmp.splits[0].get('method', 'k-fold')}); each patient is tested once"))
        else:
            s = cmp.splits[0]
            blocks.append(Table(
                ["Split method", "Split id", "Train patients", "Validation patients", "Test patients"],
                [[str(s.get("method", "–")), str(s.get("id", "–")), str(len(s.get("train") or [])),
                  str(len(s.get("val") or [])), str(len(s.get("test") or []))]],
                caption="Patient-level split (every slice of a patient is in one part only)",
                align="llrrr",
            ))
    ok, lines = check_leakage(cmp)
    css = "ok" if ok else ("fail" if ok is False else "note")
    blocks.append(Para("Leakage check — " + " ".join(lines), css))
    return blocks


def _settings_rows(config: Mapping[str, Any]) -> list[list[str]]:
    skip = {"data": {"root", "split_file", "fold"}, "model": {"name"}}
    rows = []
    for sec in ("data", "model", "train", "eval"):
        for k, v in (config.get(sec) or {}).items():
            if k in skip.get(sec, set()):
                continue
            rows.append([f"{sec}.{k}", json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else str(v)])
    return rows


def protocol_blocks(cmp: Comparison, *, alpha: float, n_boot: int, confidence: float) -> list[Block]:
    s = next(iter(cmp.runs.values()))[0].summary
    threshold = s.get("threshold", 0.5)
    thresholds = {r[0].summary.get("threshold") for r in cmp.runs.values()}
    policy = s.get("empty_policy", "one")
    policy_doc = s.get("empty_policy_doc") or s.get("empty_policy_description") or ""
    post = s.get("postprocessing") or {}
    min_area = s.get("detection_min_area", (s.get("detection") or {}).get("min_area"))
    blocks: list[Block] = [
        Heading("Protocol"),
        Para(
            "Every model was trained on the same patients with the same settings (below) and evaluated on "
            "the same test patients at each slice's native resolution; only the architecture differs."
        ),
    ]
    config = cmp.protocol.get("config") or {}
    if config:
        rows = _settings_rows(config)
        blocks.append(Details(f"Shared settings ({len(rows)} rows; click to show)",
                              [Table(["Setting", "Value"], rows, align="ll", caption="Shared settings")]))
    items = [
        "A pixel is tumour when its sigmoid probability ≥ "
        + (f"{threshold}" if len(thresholds) <= 1 else ", ".join(f"{display_name(m)} {r[0].summary.get('threshold')}" for m, r in cmp.runs.items()))
        + (f"; post-processing: {', '.join(f'{k} = {v}' for k, v in post.items())}" if post else "") + ".",
        "Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN); precision = TP / (TP + FP); "
        "recall (sensitivity) = TP / (TP + FN); specificity = TN / (TN + FP).",
        "Per patient (volume): counts summed over all slices of a patient, then the metric; the mean over "
        f"patients is the headline figure, with a {confidence:.0%} percentile-bootstrap interval over patients "
        f"({n_boot} resamples).",
        "Per slice: the metric of every slice, averaged over slices. Micro: counts summed over every test slice.",
        f"Empty masks (policy '{policy}'): {policy_doc}" if policy_doc else f"Empty masks: policy '{policy}'.",
        f"Detection: a slice is called positive when its predicted tumour area is at least {min_area} pixels; "
        "a patient when any of its slices is. AUROC uses each slice's highest tumour probability.",
        "Loss: the training loss evaluated on the test split.",
        "Significance: two-sided Wilcoxon signed-rank test on per-patient Dice for every pair of models "
        f"(paired by patient), p-values adjusted with Holm's method; a difference is called real when p_holm < {alpha}.",
    ]
    blocks += [Heading("Metric definitions", 3), Bullets(items)]
    return blocks


def reproduce_blocks(cmp: Comparison) -> list[Block]:
    p = cmp.protocol
    cmd = p.get("command") or ""
    if not cmd:
        cfg = p.get("config") or {}
        parts = ["brainseg compare", f"--models {','.join(p['models'])}"]
        root = (cfg.get("data") or {}).get("root") or (p.get("data") or {}).get("root")
        if root:
            parts.append(f"--data {root}")
        parts.append(f"--out {cmp.dir}")
        cmd = " ".join(parts) + "   # reconstructed: protocol.json has no command"
    blocks: list[Block] = [
        Heading("Reproduce"),
        Para("The comparison was made with:"),
        Code(cmd),
        Para("This report can be rebuilt from the folder's files alone (no model is loaded) with:"),
        Code(f"brainseg report {cmp.dir}"),
    ]
    if p.get("config"):
        blocks.append(Details("Full settings shared by every model (also in protocol.json and each run's config.json)",
                              [Code(json.dumps(p["config"], indent=2, default=str))]))
    return blocks
