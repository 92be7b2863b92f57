"""The server's jobs: random ids, a bounded worker pool, a bounded number kept, files in one work folder.

A job is one upload: its folder ``WORK/<id>/`` holds the upload, the unpacked input and the
results (``out/``: masks in the input's own form as `brainseg predict` writes them, volumes.csv,
figures.json). Ids come from `secrets.token_urlsafe`, so one upload's results are never reachable
from a guessed or counted URL. At most `workers` jobs run at once and `max_pending` wait; a full
queue is refused (HTTP 503) rather than grown. Only the newest `keep` finished jobs are kept: older
ones are deleted, files and arrays, so memory and disk stay bounded however long the server runs —
but never a job that finished less than `grace_s` seconds ago, so that under load a user's result
is not deleted before the page has fetched it.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainseg.errors import BrainsegError
from brainseg.fileio import write_csv_atomic, write_json_atomic
from brainseg.inference.inputs import Case
from brainseg.inference.readers import CaseData
from brainseg.serve.segment import CaseResult, Segmenter
from brainseg.serve.uploads import UploadError

ID_BYTES = 16


@dataclass
class Job:
    """One upload and what became of it (status: queued, running, done, failed)."""

    id: str
    folder: Path
    label: str
    case: Case | None = None
    data: CaseData | None = None
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    result: CaseResult | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None  # time.monotonic() when it became done or failed
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The job as the API shows it (no server paths)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.label,
            "status": self.status,
            "progress": round(self.progress, 3),
            "error": self.error,
            "seconds": self.seconds,
        }
        if self.case is not None and self.data is not None:
            out.update(kind=self.case.kind, n_slices=int(self.data.images.shape[0]),
                       channels=int(self.data.images.shape[-1]), notes=list(self.data.notes))
        out["ready"] = self.result is not None  # the viewer may show it before the files are written
        if self.result is not None:
            out["figures"] = self.result.figures
        return out


def write_results(out: Path, case: Case, data: CaseData, result: CaseResult, settings: dict[str, Any]) -> None:
    """Masks in the input's own form, volumes.csv and figures.json, as `brainseg predict` lays them out."""
    from brainseg.inference.pipeline import VOLUME_COLUMNS, _write_case, case_rows, plan_case

    n = len(data.images)
    plan = plan_case(out, case, n)
    _write_case(out, case, data, plan, result.mask, "none")
    labels = [lab if lab is not None else k for k, lab in enumerate(case.numbers)] if case.images else list(range(n))
    names = [str(p.relative_to(out)) for p in plan.masks] * (n if len(plan.masks) == 1 and n > 1 else 1)
    rows = case_rows(case, labels, names, str(plan.volume_mask.relative_to(out)), result.mask, result.probs,
                     data.spacing, int(settings["postprocessing"]["min_area"]))
    for row in rows:  # the server's own folders mean nothing to whoever downloads the table
        row["input"] = case.name
    write_csv_atomic(out / "volumes.csv", rows, VOLUME_COLUMNS)
    write_json_atomic(out / "figures.json", {"case": case.name, "kind": case.kind, **result.figures,
                                              "settings": settings, "notes": list(data.notes)})


class JobStore:
    """Jobs by id, run on a bounded thread pool, the oldest finished ones dropped past `keep`.

    Args:
        work: the folder every job's files go under (created).
        segmenter: the loaded model(s).
        workers: jobs segmented at once.
        max_pending: jobs allowed to wait beyond the running ones.
        keep: finished jobs kept (files and arrays); older ones are deleted.
        grace_s: a job that finished less than this long ago is never deleted.
    """

    def __init__(self, work: Path, segmenter: Segmenter, *, workers: int = 1, max_pending: int = 8,
                 keep: int = 16, grace_s: float = 60.0) -> None:
        self.work = Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.segmenter = segmenter
        self.workers, self.max_pending, self.keep, self.grace_s = workers, max_pending, keep, grace_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brainseg-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, label: str) -> Job:
        """A new job with a fresh random id and an empty folder.

        Raises:
            UploadError: 503 when the queue is full.
        """
        with self._lock:
            active = sum(j.status in ("queued", "running", "receiving") for j in self._jobs.values())
            if active >= self.workers + self.max_pending:
                raise UploadError(f"the server is busy with {active} jobs; try again shortly", 503)
            job_id = secrets.token_urlsafe(ID_BYTES)
            job = Job(job_id, self.work / job_id, label, status="receiving")
            job.folder.mkdir()
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def discard(self, job: Job) -> None:
        """Forget a job and delete its folder (a refused upload leaves nothing behind)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        if job.folder.resolve().parent == self.work:  # never delete anything outside the work folder
            shutil.rmtree(job.folder, ignore_errors=True)

    def submit(self, job: Job) -> None:
        """Queue a job whose case has been read."""
        job.status = "queued"
        self._pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        assert job.case is not None and job.data is not None
        job.status = "running"
        t0 = time.perf_counter()

        def progress(f: float) -> None:
            job.progress = 0.95 * f

        context = max(m.context for m in self.segmenter.members)
        if context and len(job.data.images) == 1:
            import dataclasses

            from brainseg.inference.predictor import single_slice_note

            job.data = dataclasses.replace(job.data, notes=(*job.data.notes, single_slice_note(context, job.case.name)))
        try:
            result = self.segmenter.segment(job.data.images, job.data.spacing, job.case.name, progress)
            job.seconds["segment"] = round(time.perf_counter() - t0, 3)
            job.result = result  # the viewer can show it while the files are written
            t1 = time.perf_counter()
            write_results(job.folder / "out", job.case, job.data, result, self.segmenter.describe())
            job.seconds["write"] = round(time.perf_counter() - t1, 3)
            job.progress, job.status = 1.0, "done"
        except BrainsegError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # a job must never take the server down; say what happened
            job.status, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        job.finished = time.monotonic()
        self.prune()

    def prune(self) -> None:
        """Delete the oldest finished jobs beyond `keep`, sparing those finished within `grace_s`."""
        now = time.monotonic()
        with self._lock:
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            old = [j for j in finished[: max(0, len(finished) - self.keep)]
                   if j.finished is None or now - j.finished >= self.grace_s]
            drop = old
        for job in drop:
            self.discard(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
