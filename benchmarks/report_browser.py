"""Open a comparison's report.html in headless Chromium and check that every image loads.

    python benchmarks/report_browser.py [REPORT.html | COMPARISON_DIR] [--screenshot PNG]

With no argument, a small synthetic comparison is built in a temporary folder (the fixture of
tests/reporting) and its report checked. A copy of the page gets a tiny inline script that, on
the window's load event, writes for every <img> whether it finished loading with a non-zero
natural size (and which network resources the page fetched: there must be none) into the DOM;
Chromium's --dump-dom prints that DOM. Exit code 0 when every image loaded, 1 when one did not,
0 with a "skipped" message when Chromium is not installed (apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1280, 3000)  # px: the screenshot's size, and the layout the probe measures
_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images).map(function (im) {
    return {alt: im.alt, complete: im.complete, width: im.naturalWidth, height: im.naturalHeight,
            loaded: im.complete && im.naturalWidth > 0, data_uri: im.src.indexOf("data:image/png;base64,") === 0,
            top: Math.round(im.getBoundingClientRect().top + window.scrollY),
            shown_height: Math.round(im.getBoundingClientRect().height)};
  });
  var details = Array.prototype.slice.call(document.querySelectorAll("details")).map(function (d) {
    var r = {open: d.open, summary: d.querySelector("summary").textContent, rows: d.querySelectorAll("tr").length,
             height: d.getBoundingClientRect().height};
    var was = d.open;
    d.open = true;  // measured unfolded too, so a test can tell "folded" from "empty"
    r.open_height = d.getBoundingClientRect().height;
    d.open = was;
    return r;
  });
  var res = performance.getEntriesByType("resource").map(function (r) { return r.name; });
  var pre = document.createElement("pre");
  pre.id = "brainseg-image-check";
  pre.textContent = JSON.stringify({images: imgs, resources: res, title: document.title, details: details,
                                    viewport: [window.innerWidth, window.innerHeight]});
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in CANDIDATES:
        path = name if Path(name).is_file() else shutil.which(name)
        if path:
            return str(path)
    return None


def check_report_images(
    html_path: str | Path, *, chromium: str | None = None, timeout: float = 90.0, screenshot: str | Path | None = None
) -> dict[str, Any]:
    """Load `html_path` in headless Chromium; return {"images": [...], "resources": [...], "title"}.

    Each image entry has loaded = complete and naturalWidth > 0, and its top and shown height in
    the page (px, window WINDOW); "details" lists every <details> with open, summary, table rows,
    its height on the page and its height when unfolded. Raises RuntimeError when
    Chromium is missing or its output holds no result.
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise RuntimeError("Chromium not found (apt-get install -y chromium)")
    html = Path(html_path).read_text(encoding="utf-8")
    probed = html.replace("</body>", _PROBE + "</body>", 1) if "</body>" in html else html + _PROBE
    with tempfile.TemporaryDirectory(prefix="brainseg-chromium-") as tmp:
        page = Path(tmp) / "report_probe.html"
        page.write_text(probed, encoding="utf-8")
        profile = Path(tmp) / "profile"
        profile.mkdir()
        # One window size for the probe and the screenshot, so positions in the result match the picture.
        base = [exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
        proc = subprocess.run(
            [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=timeout, check=False
        )
        m = re.search(r'<pre id="brainseg-image-check">(.*?)</pre>', proc.stdout, re.S)
        if not m:
            raise RuntimeError(
                f"Chromium (exit {proc.returncode}) printed no image-check result; stderr tail: {proc.stderr[-800:]}"
            )
        import html as _html

        result = json.loads(_html.unescape(m.group(1)))
        if screenshot:
            shot = Path(screenshot).resolve()
            subprocess.run(
                [*base, f"--screenshot={shot}", Path(html_path).resolve().as_uri()],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
            result["screenshot"] = str(shot) if shot.is_file() else None
    return result


def _synthetic_report(tmp: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reporting"))
    import fake_comparison as fake  # the test fixture: a random but consistent comparison folder

    from brainseg.reporting import build_report

    cmp = fake.make_comparison(tmp / "cmp")
    fake.add_robustness(cmp)
    return build_report(cmp, n_boot=500)["report_html"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", help="report.html or a comparison folder (default: a synthetic one)")
    ap.add_argument("--screenshot", metavar="PNG", help="also save a screenshot of the top of the page")
    args = ap.parse_args(argv)
    exe = find_chromium()
    if exe is None:
        print("report_browser: skipped — Chromium is not installed (apt-get update && apt-get install -y chromium)")
        return 0
    with tempfile.TemporaryDirectory(prefix="brainseg-report-") as tmp:
        if args.target is None:
            html = _synthetic_report(Path(tmp))
        else:
            t = Path(args.target)
            html = t / "report.html" if t.is_dir() else t
        if not html.is_file():
            print(f"report_browser: {html} does not exist", file=sys.stderr)
            return 1
        res = check_report_images(html, chromium=exe, screenshot=args.screenshot)
    imgs = res["images"]
    bad = [i for i in imgs if not i["loaded"]]
    print(f"{html}: {len(imgs)} image(s) in Chromium ({exe}), {len(imgs) - len(bad)} loaded")
    for i in imgs:
        print(f"  {'ok  ' if i['loaded'] else 'FAIL'} {i['width']:>5}×{i['height']:<5} data URI: {i['data_uri']}  {i['alt']}")
    if res["resources"]:
        print(f"  the page fetched {len(res['resources'])} resource(s): {res['resources'][:5]}")
    if res.get("screenshot"):
        print(f"  screenshot: {res['screenshot']}")
    return 0 if imgs and not bad and not res["resources"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
