"""report.html opened in headless Chromium: every embedded figure loads (skipped without Chromium)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fake_comparison import make_comparison

from brainseg.reporting import build_report
from helpers_runs import load_benchmark

CHROMIUM = Path("/usr/bin/chromium")
OUT = os.environ.get("BRAINSEG_SCREENSHOT_DIR", "")


def _bench():
    return load_benchmark("report_browser")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (apt-get install -y chromium)")
def test_report_images_load_in_chromium(tmp_path):
    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"))
    written = build_report(d, n_boot=200)
    n_figures = sum(1 for k in written if k.startswith("figure_"))
    res = _bench().check_report_images(written["report_html"], chromium=str(CHROMIUM))
    assert len(res["images"]) == n_figures == 6
    for im in res["images"]:
        assert im["loaded"] and im["data_uri"] and im["width"] > 300 and im["height"] > 200, im
    assert res["resources"] == []  # nothing fetched from anywhere
    assert res["title"].startswith("brainseg comparison")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (apt-get install -y chromium)")
def test_study_report_headline_first_and_settings_folded(tmp_path):
    """A cross-validated study's report in Chromium: the headline figure (paired per-patient Dice) is
    the first image and shows in the first screen, the settings are folded, and the screenshot shows it."""
    from PIL import Image

    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet", "pspnet"), folds=2, n_patients=10)
    written = build_report(d, n_boot=200)
    shot = tmp_path / "shot.png"
    res = _bench().check_report_images(written["report_html"], chromium=str(CHROMIUM), screenshot=shot)
    first = res["images"][0]
    assert first["alt"] == "paired per-patient Dice" and first["loaded"]
    assert "figure_learning_curves_folds" in written
    assert any(im["alt"] == "learning curves over folds" and im["loaded"] for im in res["images"])
    # the headline figure lies wholly inside the first 1280×1400 px of the page, at a readable size
    assert first["shown_height"] > 300 and first["top"] + first["shown_height"] < 1400, first
    settings = [x for x in res["details"] if x["summary"].startswith("Shared settings")]
    assert len(settings) == 1 and res["details"], res["details"]
    for x in res["details"]:  # folded: one summary line on the page, the content there when unfolded
        assert not x["open"] and x["height"] < 60 and x["open_height"] > x["height"] + 100, x
    assert settings[0]["rows"] > 10  # the table is in the page, only folded away
    if OUT:  # keep the screenshot for a reader (set BRAINSEG_SCREENSHOT_DIR)
        Path(OUT).mkdir(parents=True, exist_ok=True)
        (Path(OUT) / "study_report.png").write_bytes(Path(res["screenshot"]).read_bytes())
    img = np.asarray(Image.open(res["screenshot"]).convert("RGB")).astype(int)
    assert img.shape[:2] == (3000, 1280)
    band = img[first["top"]: first["top"] + first["shown_height"]]
    assert len(np.unique(band.reshape(-1, 3), axis=0)) > 50  # a drawn figure, not blank page
    assert (band.sum(axis=2) < 300).mean() > 0.002  # with dark lines (the per-patient lines and median)
