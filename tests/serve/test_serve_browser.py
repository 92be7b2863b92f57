"""The viewer in headless Chromium, used as a person would: upload, wait, move the slider and a slice, look.

Skipped when Debian's ``chromium`` is not installed (`.ci/run` installs it). The screenshot is
checked against the job's own mask: at full opacity every pixel under the mask shows the overlay
colour and every other pixel the grey FLAIR value; at half opacity the mix of the two.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers_serve import patient_folders, serve_browser, zip_folder
from PIL import Image

from brainseg.serve.render import OVERLAY_RGB

drv = serve_browser()
pytestmark = pytest.mark.skipif(drv.find_chromium() is None, reason="Chromium not installed (apt-get install -y chromium)")


def _canvas_pixels(browser) -> np.ndarray:
    """The canvas as shown on screen, sampled at the centre of each image pixel → (H, W, 3)."""
    r = browser.rect("#view")
    shot = np.asarray(Image.open(io.BytesIO(browser.screenshot(r))).convert("RGB")).astype(int)
    h, w = browser.eval("[document.getElementById('view').height, document.getElementById('view').width]")
    ys = ((np.arange(h) + 0.5) * shot.shape[0] / h).astype(int)
    xs = ((np.arange(w) + 0.5) * shot.shape[1] / w).astype(int)
    return shot[ys][:, xs]


def _layer(client_get, job: str, k: int, layer: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client_get(f"/api/jobs/{job}/slices/{k}/{layer}.png"))))


def test_upload_overlay_slider_and_slice_in_chromium(segmenter, tiny_phantoms, tmp_path) -> None:
    import urllib.request

    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore

    folder = patient_folders(tiny_phantoms)[5]
    scan = tmp_path / f"{folder.name}.zip"
    scan.write_bytes(zip_folder(folder, images_only=True))
    store = JobStore(tmp_path / "work", segmenter)
    with drv.ServerThread(create_app(store)) as srv, drv.Chromium() as browser:

        def get(path: str) -> bytes:
            with urllib.request.urlopen(srv.url + path, timeout=30) as resp:
                return resp.read()

        times = drv.open_scan(browser, srv.url, scan)
        assert 0 < times["accepted"] <= times["ready"] <= times["firstOverlay"]
        job = browser.eval("window.brainseg.state.job.id")
        k = browser.eval("window.brainseg.state.k")
        areas = browser.eval("window.brainseg.state.job.figures.slice_area_px")
        assert areas[k] == max(areas) > 0  # it opens on the slice with the most tumour
        assert browser.eval("document.getElementById('view').dataset.drawn") == f"{k}:fill:50"
        mask = _layer(get, job, k, "fill")[..., 3] == 255
        grey = _layer(get, job, k, "image").astype(int)
        inside, outside = mask, ~mask
        half = _canvas_pixels(browser)
        colour = np.array(OVERLAY_RGB)
        mixed = 0.5 * grey[..., None] + 0.5 * colour
        assert np.abs(half[inside] - mixed[inside]).max() <= 3
        assert np.abs(half[outside] - grey[outside][:, None]).max() <= 1

        # move the opacity slider to its right end, as a click there does
        r = browser.rect("#opacity")
        browser.click(r["x"] + r["width"] - 1, r["y"] + r["height"] / 2)
        browser.wait_for(f"document.getElementById('view').dataset.drawn === '{k}:fill:100'", 20)
        full = _canvas_pixels(browser)
        assert np.abs(full[inside] - colour).max() <= 1
        assert np.abs(full[outside] - grey[outside][:, None]).max() <= 1

        # one slice on with the keyboard (focus on the image), then back with the wheel's twin key
        step = 1 if k + 1 < len(areas) else -1
        browser.eval("document.getElementById('view').focus()")
        browser.key("ArrowDown" if step == 1 else "ArrowUp", 40 if step == 1 else 38)
        j = k + step
        browser.wait_for(f"document.getElementById('view').dataset.drawn === '{j}:fill:100'", 20)
        assert browser.eval("document.getElementById('slice-out').textContent") == f"{j + 1} / {len(areas)}"
        moved = _canvas_pixels(browser)
        mask_j = _layer(get, job, j, "fill")[..., 3] == 255
        grey_j = _layer(get, job, j, "image").astype(int)
        assert np.abs(moved[mask_j] - colour).max(initial=0) <= 1
        assert np.abs(moved[~mask_j] - grey_j[~mask_j][:, None]).max() <= 1
        thumbs = browser.eval("Array.from(document.querySelectorAll('#thumbs img.tumour')).length")
        assert thumbs == sum(a >= segmenter.pp.min_area for a in areas)
        assert browser.eval("document.querySelector('#thumbs img.current').alt").startswith(f"slice {j + 1}")

        # a bad upload shows its reason in the page
        bad = tmp_path / "notes.txt"
        bad.write_text("not a scan")
        browser.choose_file("#file", bad)
        browser.wait_for("document.body.dataset.state === 'error'", 20)
        assert "415" in browser.eval("document.getElementById('error').textContent")
    store.shutdown()
