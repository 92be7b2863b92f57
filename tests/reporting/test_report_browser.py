"""report.html opened in headless Chromium: every embedded figure loads (skipped without Chromium)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fake_comparison import make_comparison

from brainseg.reporting import build_report

CHROMIUM = Path("/usr/bin/chromium")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "report_browser.py"


def _bench():
    spec = importlib.util.spec_from_file_location("report_browser", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (apt-get install -y chromium)")
def test_report_images_load_in_chromium(tmp_path):
    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"))
    written = build_report(d, n_boot=200)
    n_figures = sum(1 for k in written if k.startswith("figure_"))
    res = _bench().check_report_images(written["report_html"], chromium=str(CHROMIUM))
    assert len(res["images"]) == n_figures == 5
    for im in res["images"]:
        assert im["loaded"] and im["data_uri"] and im["width"] > 300 and im["height"] > 200, im
    assert res["resources"] == []  # nothing fetched from anywhere
    assert res["title"].startswith("brainseg comparison")
