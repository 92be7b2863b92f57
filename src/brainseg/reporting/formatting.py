"""Text for tables and sentences: model display names, numbers, intervals, p-values, Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "display_name",
    "fmt",
    "fmt_ci",
    "fmt_count",
    "fmt_p",
    "fmt_seconds",
    "join_words",
    "markdown_table",
    "to_number",
]

_DISPLAY = {
    "unet": "UNet",
    "attention_unet": "Attention UNet",
    "segnet": "SegNet",
    "deeplabv3plus": "DeepLabV3+",
    "pspnet": "PSPNet",
}


def display_name(model: str) -> str:
    """Human name of a registered architecture ("attention_unet" → "Attention UNet")."""
    return _DISPLAY.get(model, model)




def to_number(v: Any) -> float:
    """A table cell as a float: numbers as they are, "true"/"false" as 1/0, empty or text as NaN."""
    if v is None or v == "":
        return float("nan")
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if s.lower() in ("true", "false"):
        return 1.0 if s.lower() == "true" else 0.0
    try:
        return float(s)
    except ValueError:
        return float("nan")


def fmt_p(p: float) -> str:
    """A p-value for a table: "< 0.001" below that, else three decimals; NaN/None → "n/a"."""
    if p is None or math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"



def join_words(items: Sequence[str]) -> str:
    """["a", "b", "c"] → "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]



def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: NaN/None → "–", integers without decimals."""
    if v is None or v == "":
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if float(v).is_integer() and abs(v) >= 1 and digits == 0:
        return f"{int(v)}"
    return f"{v:.{digits}f}"


def _scaled(v: Any, units: Sequence[tuple[str, float, str]], below: str = "") -> str:
    """`v` in the first of `units` (suffix, scale, format) whose scale it reaches, else whole with
    the suffix `below`; NaN and empty cells → "–"."""
    x = to_number(v)
    if math.isnan(x):
        return "–"
    return next((f"{x / scale:{spec}}{unit}" for unit, scale, spec in units if abs(x) >= scale), f"{x:.0f}{below}")


def fmt_count(v: Any) -> str:
    """1 234 567 → "1.23 M"; for parameters and FLOPs."""
    return _scaled(v, ((" G", 1e9, ".3g"), (" M", 1e6, ".3g"), (" k", 1e3, ".3g")))


def fmt_seconds(v: Any) -> str:
    """A duration in seconds as "12 s", "3.5 min" or "1.2 h"."""
    return _scaled(v, ((" h", 3600.0, ".1f"), (" min", 60.0, ".1f")), " s")


def fmt_ci(row: Mapping[str, Any], key: str) -> str:
    mean, lo, hi = row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` is one of l/r/c per column (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":---", "r": "---:", "c": ":---:"}

    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
