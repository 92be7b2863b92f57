"""`brainseg serve` speed: a 35-slice volume from upload to first overlay (target: < 5 s on the CPU).

    python benchmarks/serve_speed.py                       # the CPU recipe's UNet (width 16, 128 px), random weights
    python benchmarks/serve_speed.py -c runs/unet          # a trained checkpoint instead
    python benchmarks/serve_speed.py --no-browser --repeats 1

The case is one phantom patient of 35 native 256×256 three-channel slices, zipped as kaggle_3m
TIFs (about what one LGG patient is). The server runs on 127.0.0.1 in this process. Figures, per
engine (PyTorch; ONNX Runtime when installed) and with the serve default of TTA on (3 views):

- *API*: POST the zip → poll the job (every 10 ms) until its result is ready → fetch the first
  overlay (the image and fill PNGs of the slice with the most tumour). Median over `--repeats`
  after one untimed warm-up, with the split into upload+read and segmentation as the job reports it.
  Also the CPU time this process (server and client) spent: on a machine shared with other work
  the wall time stretches with the load, the CPU time hardly, and an idle machine needs at most it.
- *browser* (when Chromium is installed): the page's own timings in headless Chromium, from the
  file being chosen to the overlay drawn on the canvas (benchmarks/serve_browser.py).

Speed does not depend on the weights, so random ones serve. On a machine shared with other work
the figures are contended: say so when quoting them.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def phantom_zip(tmp: Path, slices: int) -> tuple[Path, bytes]:
    from brainseg.data.phantom import write_phantoms

    root = write_phantoms(tmp / "data", patients=1, seed=0, slices=(slices, slices), size=256)
    patient = next(p for p in root.iterdir() if p.is_dir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(patient.glob("*.tif")):
            if not f.stem.endswith("_mask"):
                zf.write(f, f"{patient.name}/{f.name}")
    path = tmp / f"{patient.name}.zip"
    path.write_bytes(buf.getvalue())
    return path, buf.getvalue()


def api_first_overlay(url: str, payload: bytes) -> dict[str, float]:
    """Seconds from POST to the first overlay's PNGs fetched, and the job's own split."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        r = c.post("/api/jobs", files={"file": ("case.zip", payload, "application/zip")})
        r.raise_for_status()
        t_accepted = time.perf_counter()
        job_id = r.json()["id"]
        while not (s := c.get(f"/api/jobs/{job_id}").json())["ready"]:
            if s["status"] == "failed":
                raise RuntimeError(s["error"])
            time.sleep(0.01)
        k = max(range(s["n_slices"]), key=lambda i: s["figures"]["slice_area_px"][i])
        for layer in ("image", "fill"):
            c.get(f"/api/jobs/{job_id}/slices/{k}/{layer}.png").raise_for_status()
        t1 = time.perf_counter()
        cpu = time.process_time() - cpu0
        while c.get(f"/api/jobs/{job_id}").json()["status"] == "running":
            time.sleep(0.01)  # let the files be written before the next run starts
    return {"total_s": t1 - t0, "accept_s": t_accepted - t0, "segment_s": s["seconds"].get("segment", float("nan")),
            "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--checkpoint", help="checkpoint or run folder (default: a random full-width UNet)")
    ap.add_argument("--size", type=int, default=128, help="model size of the random UNet (default 128)")
    ap.add_argument("--width", type=int, default=16,
                    help="width of the random UNet (default 16: configs/unet_cpu.yaml, the CPU recipe)")
    ap.add_argument("--slices", type=int, default=35, help="slices of the volume (default 35)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median; default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=("torch", "onnx"))
    ap.add_argument("--no-tta", action="store_true", help="one view only (the serve default is TTA on)")
    ap.add_argument("--no-browser", action="store_true", help="skip the headless-Chromium figure")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from brainseg.engine import onnx_available
    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.segment import Segmenter

    drv = _load("serve_browser")
    ckpt: Any = args.checkpoint or _load("predict_speed").in_memory_checkpoint("unet", args.size, args.width)
    engines = [e for e in args.engines if e == "torch" or onnx_available()]
    browser = not args.no_browser and drv.find_chromium() is not None
    print(f"serve speed: {args.slices} slices of 256×256×3 (zip of TIFs), "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else f'random UNet of width {args.width} at {args.size} px'}, "
          f"TTA {'off' if args.no_tta else 'on (3 views)'}, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeats} after a warm-up")
    with tempfile.TemporaryDirectory(prefix="brainseg-serve-speed-") as tmp:
        scan, payload = phantom_zip(Path(tmp), args.slices)
        for engine in engines:
            seg = Segmenter([ckpt], tta=not args.no_tta, device="cpu", engine=engine)
            store = JobStore(Path(tmp) / f"work-{engine}", seg, keep=2)
            with drv.ServerThread(create_app(store)) as srv:
                api_first_overlay(srv.url, payload)  # warm-up
                runs = [api_first_overlay(srv.url, payload) for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                verdict = "under" if med["total_s"] < 5 else "OVER"
                each = ", ".join(f"{r['total_s']:.2f}" for r in runs)
                print(f"  {seg.engine:<6} API: upload → first overlay {med['total_s']:.2f} s ({verdict} 5 s; "
                      f"upload+unpack+read {med['accept_s']:.2f} s, segmentation {med['segment_s']:.2f} s); "
                      f"runs {each}; CPU time of this process {med['cpu_s']:.2f} s, an upper bound of the wall "
                      "time on an idle machine")
                if browser:
                    with drv.Chromium() as b:
                        drv.open_scan(b, srv.url, scan)  # warm-up (page, browser caches)
                        times = [drv.open_scan(b, srv.url, scan)["firstOverlay"] / 1000 for _ in range(args.repeats)]
                    print(f"  {seg.engine:<6} browser: file chosen → overlay drawn {statistics.median(times):.2f} s "
                          f"(runs {', '.join(f'{t:.2f}' for t in times)})")
            store.shutdown()
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
