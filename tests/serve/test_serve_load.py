"""A bounded load test on 127.0.0.1: concurrent uploads, all answered, none mixed up, memory bounded.

The server runs in a thread of this process (uvicorn on a free port of 127.0.0.1) and stops by
itself when the test ends; a full queue answers 503 and the client retries, as a page would.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from helpers_serve import patient_folders, serve_browser, slice_stack, zip_folder
from PIL import Image

N_UPLOADS = 8



def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_concurrent_uploads_answered_unmixed_and_bounded(segmenter, tiny_phantoms, tmp_path) -> None:
    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.render import image_layer

    folders = patient_folders(tiny_phantoms)
    cases = [folders[i % len(folders)] for i in range(N_UPLOADS)]
    zips = [zip_folder(f, images_only=True) for f in cases]
    # what each upload must give back: its own patient's first FLAIR slice and its own mask
    stacks = [slice_stack(f) for f in cases]
    expected = {f.name: segmenter.segment(s, None).mask for f, s in zip(cases, stacks)}
    # keep 3 finished jobs, but none younger than the grace time: under load a result must not be
    # deleted before its owner has read it (it was, with the grace of 0 this test first ran with)
    store = JobStore(tmp_path / "work", segmenter, workers=2, max_pending=2, keep=3, grace_s=600)
    rss0 = _rss_mb()
    drv = serve_browser()
    busy = 0
    with drv.ServerThread(create_app(store)) as srv:
        assert srv.url.startswith("http://127.0.0.1:")

        def one(i: int) -> tuple[int, dict, np.ndarray, np.ndarray]:
            nonlocal busy
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                while True:  # a full queue says 503: wait and send again
                    r = c.post("/api/jobs", files={"file": (f"case{i}.zip", zips[i], "application/zip")})
                    if r.status_code != 503:
                        break
                    busy += 1
                    time.sleep(0.2)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                t0 = time.monotonic()
                while (s := c.get(f"/api/jobs/{job_id}").json())["status"] not in ("done", "failed"):
                    assert time.monotonic() - t0 < 120
                    time.sleep(0.05)
                img = np.asarray(Image.open(io.BytesIO(c.get(f"/api/jobs/{job_id}/slices/0/image.png").content)))
                k = int(np.argmax(s["figures"]["slice_area_px"]))
                fill = np.asarray(Image.open(io.BytesIO(c.get(f"/api/jobs/{job_id}/slices/{k}/fill.png").content)))
                return i, s, img, (k, fill[..., 3] == 255)

        with ThreadPoolExecutor(N_UPLOADS) as pool:
            answers = list(pool.map(one, range(N_UPLOADS)))
        assert len(store._jobs) == N_UPLOADS  # every result stayed while its owner read it
        store.grace_s = 0
        store.prune()
        assert len(store._jobs) <= store.keep  # past the grace time older finished jobs are dropped
        assert len(list((tmp_path / "work").iterdir())) <= store.keep
    assert not srv.thread.is_alive()  # the server stopped with the test
    store.shutdown()
    assert busy > 0  # 8 uploads against 2 workers + 2 waiting: the bound was met and held
    for i, s, img, (k, mask_k) in answers:
        assert s["status"] == "done" and s["name"] == f"case{i}.zip"
        assert np.array_equal(img, image_layer(stacks[i], 0, 1))  # its own images, not another upload's
        assert np.array_equal(mask_k, expected[cases[i].name][k])
        assert s["figures"]["volume_px"] == int(expected[cases[i].name].sum())
    assert _rss_mb() - rss0 < 400  # eight cases of 64×64 slices: far below this unless jobs leak
