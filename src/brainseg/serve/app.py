"""The FastAPI app of `brainseg serve`: the page, uploads, job status, slice layers and downloads.

API (all under the server's own origin; nothing is fetched from anywhere else):

- ``GET /``: the viewer page (``static/index.html``, plain HTML/JS from the package);
- ``GET /api/info``: models, settings, upload limit and the review rule;
- ``POST /api/jobs``: multipart form with one ``file`` field → 202 ``{"id": …}``; the upload is
  unpacked and read before answering, so a bad one is a 4xx with one line saying what is wrong;
- ``GET /api/jobs/{id}``: status, progress and, once segmented, the figures;
- ``GET /api/jobs/{id}/slices/{k}/{layer}.png``: layer image (``?channel=0|1|2``), fill, outline
  or uncertainty of slice k;
- ``GET /api/jobs/{id}/masks.zip``, ``…/volumes.csv``, ``…/figures.json``: the results as files.

The upload body is counted as it arrives and cut off past the limit (413), and written only
into the job's folder (python-multipart's parser pointed at it), never to the system's temp folder.
"""

from __future__ import annotations

import io
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from brainseg import __version__
from brainseg.errors import BrainsegError
from brainseg.serve.jobs import Job, JobStore
from brainseg.serve.render import LAYERS, image_layer, mask_layer, png_bytes, uncertainty_layer
from brainseg.serve.uploads import (
    UNPACK_FACTOR,
    UploadError,
    safe_name,
    single_case,
    strip_paths,
    unpack_upload,
)

DEFAULT_MAX_UPLOAD_MB = 200


def _static_dir() -> Path:
    return Path(str(resources.files("brainseg.serve") / "static"))


async def _receive_upload(request: Request, job: Job, max_bytes: int) -> tuple[Path, str]:
    """Stream the multipart body into the job's folder; returns (saved file, original name)."""
    from python_multipart import create_form_parser

    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UploadError("send the scan as a multipart form with one field named 'file'", 415)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(f"the upload is {int(declared) / 2**20:.1f} MiB; the limit is {max_bytes // 2**20} MiB", 413)
    files: list[Any] = []
    upload_dir = job.folder / "upload"
    upload_dir.mkdir()
    try:
        parser = create_form_parser(
            {"Content-Type": ctype}, lambda field: None, files.append,
            config={"UPLOAD_DIR": str(upload_dir), "UPLOAD_DELETE_TMP": False, "MAX_MEMORY_FILE_SIZE": 0},
        )
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise UploadError(f"the upload is larger than the limit of {max_bytes // 2**20} MiB", 413)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors: a malformed or cut-off form
        raise UploadError(f"the upload is not a well-formed multipart form: {exc}") from None
    if len(files) != 1 or (files[0].field_name or b"") != b"file":
        raise UploadError("send exactly one file, in the form field named 'file'")
    f = files[0]
    if f.in_memory:  # an empty or tiny part may never have reached the disk
        f.flush_to_disk()
    f.close()
    saved = Path((f.actual_file_name or b"").decode())
    name = (f.file_name or b"upload").decode("utf-8", "replace")
    if not saved.is_file() or saved.resolve().parent != upload_dir.resolve():
        raise UploadError("the upload could not be saved")
    if saved.stat().st_size == 0:
        raise UploadError(f"{name} is empty")
    return saved, name


def create_app(
    store: JobStore,
    *,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
    host: str = "127.0.0.1",
    dicom_series: dict[str, str] | None = None,
) -> FastAPI:
    """The app serving `store`'s jobs (see the module docstring); `dicom_series` as in `read_case`."""
    max_bytes = int(max_upload_mb * 2**20)
    app = FastAPI(title="brainseg", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    static = _static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(BrainsegError)
    async def _bad_input(request: Request, exc: BrainsegError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    def job_or_404(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise UploadError("no such job (finished jobs are kept for a while only)", 404)
        return job

    def result_or_409(job: Job) -> Any:
        if job.result is None or job.data is None:
            raise UploadError(f"job is {job.status}; no result yet", 409)
        return job.result

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {"version": __version__, "host": host, "max_upload_mb": max_upload_mb,
                "workers": store.workers, **store.segmenter.describe()}

    @app.post("/api/jobs", status_code=202)
    async def create_job(request: Request) -> dict[str, Any]:
        job = store.new("upload")
        try:
            saved, name = await _receive_upload(request, job, max_bytes)
            job.label = name

            def prepare() -> None:
                from brainseg.inference.readers import read_case

                target = unpack_upload(saved, name, job.folder / "input", UNPACK_FACTOR * max_bytes)
                saved.unlink(missing_ok=True)
                case = single_case(target, name)
                try:
                    job.data = read_case(case, dicom_series)
                except BrainsegError as exc:
                    raise UploadError(f"{name}: {strip_paths(str(exc), job.folder / 'input')}") from None
                job.case = case

            await run_in_threadpool(prepare)
        except BaseException:
            store.discard(job)
            raise
        store.submit(job)
        return {"id": job.id, **job.summary()}

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).summary()

    @app.get("/api/jobs/{job_id}/slices/{k}/{layer}.png")
    async def slice_layer(job_id: str, k: int, layer: str, channel: int = 1) -> Response:
        job = job_or_404(job_id)
        if layer not in LAYERS:
            raise UploadError(f"layer must be one of {', '.join(LAYERS)}", 404)
        data = job.data
        if data is None:
            raise UploadError("job has no images", 409)
        if not 0 <= k < len(data.images):
            raise UploadError(f"slice {k} is out of range 0–{len(data.images) - 1}", 404)
        if layer == "image":
            arr = image_layer(data.images, k, channel)
        else:
            res = result_or_409(job)
            if layer == "uncertainty":
                if res.uncertainty is None:
                    raise UploadError("one view only: no uncertainty", 404)
                arr = uncertainty_layer(res.uncertainty[k])
            else:
                arr = mask_layer(res.mask[k], outline=layer == "outline")
        return Response(await run_in_threadpool(png_bytes, arr), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=600"})

    def done_or_409(job: Job) -> Path:
        if job.status != "done":
            raise UploadError(f"job is {job.status}; its files are not written yet", 409)
        return job.folder / "out"

    @app.get("/api/jobs/{job_id}/masks.zip")
    async def masks_zip(job_id: str) -> Response:
        job = job_or_404(job_id)
        out = done_or_409(job)

        def pack() -> bytes:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in sorted(out.rglob("*")):
                    if p.is_file() and not p.name.startswith("."):
                        zf.write(p, str(p.relative_to(out)))
            return buf.getvalue()

        stem = safe_name(job.case.name if job.case else "case")  # it goes into a header
        return Response(await run_in_threadpool(pack), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{stem}_brainseg.zip"'})

    @app.get("/api/jobs/{job_id}/volumes.csv")
    async def volumes_csv(job_id: str) -> FileResponse:
        return FileResponse(done_or_409(job_or_404(job_id)) / "volumes.csv", media_type="text/csv",
                            filename="volumes.csv")

    @app.get("/api/jobs/{job_id}/figures.json")
    async def figures_json(job_id: str) -> FileResponse:
        return FileResponse(done_or_409(job_or_404(job_id)) / "figures.json", media_type="application/json",
                            filename="figures.json")

    return app

