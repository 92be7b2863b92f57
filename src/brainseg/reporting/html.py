"""A report as a list of simple blocks, rendered to Markdown and to one self-contained HTML file.

The HTML file embeds every figure as a base64 data URI and carries its CSS inline; it loads
nothing from anywhere, so it opens offline and can be mailed as one file. The Markdown file
links the same figures relatively (figures/…png next to it).
"""

from __future__ import annotations

import base64
import html as _html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Bullets", "Code", "Details", "Figure", "Heading", "Para", "Table", "render_html", "render_markdown"]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    css: str = ""  # "note", "verdict", "ok", "fail": a styled paragraph in HTML


@dataclass
class Bullets:
    items: Sequence[str]


@dataclass
class Code:
    text: str


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    align: str | None = None  # one of l/r/c per column; default: first left, the rest right
    highlight_first: bool = False


@dataclass
class Figure:
    path: Path  # PNG file on disk
    caption: str
    alt: str = ""
    width: str = field(default="100%")


@dataclass
class Details:
    """Blocks folded away under a one-line summary (HTML and GitHub Markdown `<details>`)."""

    summary: str
    blocks: Sequence[Heading | Para | Bullets | Code | Table | Figure]


Block = Heading | Para | Bullets | Code | Table | Figure | Details


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# ----------------------------------------------------------------------------------------- Markdown


def render_markdown(title: str, blocks: Sequence[Block], base: Path) -> str:
    """Markdown with figures linked relative to `base` (the folder report.md is written to)."""
    return "\n".join([f"# {title}", "", *_markdown_lines(blocks, base)]).rstrip() + "\n"


def _markdown_lines(blocks: Sequence[Block], base: Path) -> list[str]:
    from brainseg.reporting.formatting import markdown_table

    out: list[str] = []
    for b in blocks:
        if isinstance(b, Details):  # GitHub renders Markdown inside <details> after a blank line
            out += [f"<details><summary>{_e(b.summary)}</summary>", "", *_markdown_lines(b.blocks, base), "</details>", ""]
        elif isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [f"> {b.text}" if b.css in ("note", "verdict") else b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out += [markdown_table(b.headers, b.rows, b.align), ""]
        elif isinstance(b, Figure):
            rel = Path(b.path).relative_to(base).as_posix() if Path(b.path).is_relative_to(base) else Path(b.path).name
            out += [f"![{b.alt or b.caption}]({rel})", "", f"*{b.caption}*", ""]
    return out


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --accent:#2c5fab; --okbg:#e8f5ec; --ok:#1e7b3c;
        --failbg:#fdecec; --fail:#b3261e; --notebg:#f4f6fa; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; line-height: 1.5; font-size: 15px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin-top: 2.2em; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.08em; margin-top: 1.6em; }
p.note { background: var(--notebg); border-left: 4px solid var(--muted); padding: 8px 12px; color: var(--muted); }
p.verdict { background: #eef3fb; border-left: 4px solid var(--accent); padding: 10px 14px; font-size: 1.03em; }
p.ok { background: var(--okbg); border-left: 4px solid var(--ok); padding: 8px 12px; }
p.fail { background: var(--failbg); border-left: 4px solid var(--fail); padding: 8px 12px; }
p.sub { color: var(--muted); margin-top: 0; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 0.9em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 4px; font-style: italic; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); }
th { background: #f3f5f9; font-weight: 600; border-bottom: 2px solid var(--line); }
tr.first td { font-weight: 600; background: #fbfcf0; }
td.l, th.l { text-align: left; } td.r, th.r { text-align: right; } td.c, th.c { text-align: center; }
.scroll { overflow-x: auto; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 10px 12px; overflow-x: auto; font-size: 0.85em; }
nav { font-size: 0.92em; color: var(--muted); margin: 10px 0 0; }
nav a { color: var(--accent); text-decoration: none; margin-right: 12px; }
details { margin: 10px 0 18px; border: 1px solid var(--line); padding: 6px 12px; }
summary { cursor: pointer; color: var(--accent); }
"""


def _e(s: str) -> str:
    return _html.escape(str(s), quote=True)


def _data_uri(path: Path) -> str:
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_html(title: str, blocks: Sequence[Block], *, subtitle: str = "") -> str:
    """One HTML page with inline CSS and every figure embedded; the only links are in-page anchors."""
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    body = [f"<h1>{_e(title)}</h1>"]
    if subtitle:
        body.append(f'<p class="sub">{_e(subtitle)}</p>')
    if toc:
        body.append("<nav>" + "".join(f'<a href="#{_anchor(h.text)}">{_e(h.text)}</a>' for h in toc) + "</nav>")
    body += _html_parts(blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _html_parts(blocks: Sequence[Block]) -> list[str]:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Details):
            body.append(f"<details><summary>{_e(b.summary)}</summary>" + "\n".join(_html_parts(b.blocks)) + "</details>")
        elif isinstance(b, Heading):
            body.append(f'<h{b.level} id="{_anchor(b.text)}">{_e(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            cls = f' class="{_e(b.css)}"' if b.css else ""
            body.append(f"<p{cls}>{_e(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            body.append(f"<pre><code>{_e(b.text)}</code></pre>")
        elif isinstance(b, Table):
            align = b.align or ("l" + "r" * (len(b.headers) - 1))
            rows = []
            for i, r in enumerate(b.rows):
                cls = ' class="first"' if b.highlight_first and i == 0 else ""
                rows.append(f"<tr{cls}>" + "".join(f'<td class="{a}">{_e(c)}</td>' for a, c in zip(align, r)) + "</tr>")
            cap = f"<caption>{_e(b.caption)}</caption>" if b.caption else ""
            head = "<tr>" + "".join(f'<th class="{a}">{_e(h)}</th>' for a, h in zip(align, b.headers)) + "</tr>"
            body.append(f'<div class="scroll"><table>{cap}<thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>')
        elif isinstance(b, Figure):
            body.append(
                f'<figure><img src="{_data_uri(b.path)}" alt="{_e(b.alt or b.caption)}" style="width:{_e(b.width)}">'
                f"<figcaption>{_e(b.caption)}</figcaption></figure>"
            )
    return body
