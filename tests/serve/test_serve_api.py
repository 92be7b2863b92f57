"""`brainseg serve` through FastAPI's test client: upload → job → result, checked against `predict`."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from helpers_serve import patient_folders, slice_stack, wait_done, zip_folder
from PIL import Image

from brainseg.cli import main as cli_main
from brainseg.inference import predict_path
from brainseg.inference.predictor import Predictor
from brainseg.serve.render import OVERLAY_RGB
from brainseg.serve.segment import DISPUTE, REVIEW_SHARE, case_figures, largest_diameter


def upload(client, name: str, payload: bytes):
    return client.post("/api/jobs", files={"file": (name, payload, "application/octet-stream")})


def test_patient_zip_gives_predict_masks_figures_and_uncertainty(client, tiny_phantoms, tiny_run, tmp_path) -> None:
    folder = patient_folders(tiny_phantoms)[0]
    r = upload(client, "patient.zip", zip_folder(folder, prefix=f"wrapper/{folder.name}", images_only=True))
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "done" and job["kind"] == "patient" and job["n_slices"] == len(list(folder.glob("*_mask.tif")))

    # the masks are what `brainseg predict` writes for the same folder with TTA
    predict_path(folder, tmp_path / "pred", [tiny_run], device="cpu", tta=True, progress=False)
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/masks.zip").content))
    names = sorted(n for n in z.namelist() if n.endswith("_mask.tif"))
    assert names == sorted(str(p.relative_to(tmp_path / "pred")) for p in (tmp_path / "pred").rglob("*_mask.tif"))
    served = np.stack([tifffile.imread(io.BytesIO(z.read(n))) for n in
                       sorted(names, key=lambda n: int(n.split("_")[-2]))])
    assert np.array_equal(served, slice_stack(tmp_path / "pred" / folder.name, "_mask"))

    # uncertainty = range over the flipped views, recomputed here with a plain Predictor
    images = slice_stack(folder)
    p = Predictor([tiny_run], device="cpu")
    views = np.stack([p.predict(images), p.predict(images[:, :, ::-1].copy())[:, :, ::-1],
                      p.predict(images[:, ::-1].copy())[:, ::-1]])
    u = views.max(0) - views.min(0)
    mask = served == 255
    f = job["figures"]
    assert f["volume_px"] == int(mask.sum()) and f["volume_ml"] is None and "pixels" in f["size_note"]
    assert f["slice_area_px"] == mask.reshape(len(mask), -1).sum(1).tolist()
    assert f["disputed_px"] == int((u >= DISPUTE).sum())
    k = int(np.argmax(u.reshape(len(u), -1).max(1)))
    png = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/slices/{k}/uncertainty.png").content)))
    assert np.allclose(png[..., 3] / 255.0, np.sqrt(np.clip(u[k], 0, 1)), atol=1.5 / 255)

    # layers: fill is the overlay colour exactly on the mask; image is the chosen channel
    k = int(np.argmax(f["slice_area_px"]))
    fill = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/slices/{k}/fill.png").content)))
    assert np.array_equal(fill[..., 3] == 255, mask[k]) and (fill[mask[k], :3] == OVERLAY_RGB).all()
    for ch in (0, 1, 2):
        img = np.asarray(Image.open(io.BytesIO(
            client.get(f"/api/jobs/{job['id']}/slices/{k}/image.png?channel={ch}").content)))
        assert np.array_equal(img, images[k, :, :, ch])

    csv_text = client.get(f"/api/jobs/{job['id']}/volumes.csv").text
    assert csv_text.splitlines()[0].startswith("level,case,slice") and str(tmp_path) not in csv_text
    assert client.get(f"/api/jobs/{job['id']}/figures.json").json()["volume_px"] == f["volume_px"]


def test_nifti_upload_keeps_affine_and_gives_ml(client, tiny_phantoms, tmp_path) -> None:
    folder = patient_folders(tiny_phantoms)[1]
    vol = slice_stack(folder).transpose(1, 2, 0, 3)  # X×Y×Z×3
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-20, 10, 5)
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    path = tmp_path / "scan.nii.gz"
    nib.save(img, path)
    r = upload(client, "scan.nii.gz", path.read_bytes())
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/masks.zip").content))
    (tmp_path / "m.nii.gz").write_bytes(z.read("scan_mask.nii.gz"))
    m = nib.load(tmp_path / "m.nii.gz")
    assert m.shape == vol.shape[:3] and np.allclose(m.affine, affine)
    f = job["figures"]
    voxels = int(np.asanyarray(m.dataobj).sum())
    assert f["volume_px"] == voxels
    assert f["volume_ml"] == pytest.approx(voxels * 0.8 * 0.8 * 2.5 / 1000)
    assert f["largest_diameter_px"] is None and f["largest_diameter_mm"] > 0


def test_largest_diameter_by_hand() -> None:
    r = np.zeros((10, 10), bool)
    r[2:5, 3:7] = True  # 3 rows × 4 columns of pixels: corners span 3 × 4
    assert largest_diameter(r) == pytest.approx(5.0)
    assert largest_diameter(r, (2.0, 1.0)) == pytest.approx(np.hypot(6.0, 4.0))
    one = np.zeros((4, 4), bool)
    one[1, 1] = True
    assert largest_diameter(one) == pytest.approx(np.sqrt(2))
    assert largest_diameter(np.zeros((3, 3), bool)) == 0.0
    # an L shape: farthest corners found by brute force over every pair of pixel corners
    el = np.zeros((8, 8), bool)
    el[1:7, 1] = True
    el[6, 1:5] = True
    rr, cc = np.nonzero(el)
    pts = np.array([(a + i, b + j) for a, b in zip(rr, cc) for i in (0, 1) for j in (0, 1)], float)
    brute = max(np.hypot(*(p - q)) for p in pts for q in pts)
    assert largest_diameter(el) == pytest.approx(brute)


def test_review_flag_follows_the_stated_rule() -> None:
    mask = np.zeros((2, 10, 10), bool)
    mask[0, 2:6, 2:6] = True  # 16 tumour pixels
    probs = mask.astype(np.float32)
    u = np.zeros_like(probs)
    u[0, :1, :4] = DISPUTE  # 4 disputed = exactly REVIEW_SHARE × 16
    assert REVIEW_SHARE * 16 == 4
    f = case_figures(mask, probs, u, (1.0, 1.0, 2.0), min_area=3)
    assert f["needs_review"] is True and f["disputed_px"] == 4 and f["volume_ml"] == pytest.approx(32 / 1000)
    u[0, 0, 0] = DISPUTE - 0.01
    assert case_figures(mask, probs, u, None, min_area=3)["needs_review"] is False
    # an empty prediction is flagged only from min_area disputed pixels on
    empty = np.zeros_like(mask)
    u2 = np.zeros_like(probs)
    u2[1, 0, :2] = 0.9
    assert case_figures(empty, probs * 0, u2, None, min_area=3)["needs_review"] is False
    u2[1, 0, :3] = 0.9
    assert case_figures(empty, probs * 0, u2, None, min_area=3)["needs_review"] is True
    assert case_figures(mask, probs, None, None, 3)["needs_review"] is None
    f = case_figures(mask, probs, u, None, min_area=3)
    assert f["slices_involved"] == [0] and f["largest_diameter_px"] == pytest.approx(np.hypot(4, 4))


def test_job_ids_are_random_and_unknown_ids_404(client, tiny_phantoms) -> None:
    folder = patient_folders(tiny_phantoms)[2]
    ids = [upload(client, "p.zip", zip_folder(folder)).json()["id"] for _ in range(2)]
    assert len(set(ids)) == 2 and all(len(i) >= 20 for i in ids)
    for i in ids:
        wait_done(client, i)
    assert client.get("/api/jobs/1").status_code == 404
    assert client.get(f"/api/jobs/{ids[0][:-1]}x/masks.zip").status_code == 404


def _truncated_tif_zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.glob("*.tif")):
            data = f.read_bytes()
            zf.writestr(f"{folder.name}/{f.name}", data[: len(data) // 3] if f.name.endswith("_2.tif") else data)
    return buf.getvalue()


def _mixed_size_zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.glob("*.tif")):
            if f.name.endswith("_3.tif"):
                b = io.BytesIO()
                tifffile.imwrite(b, np.zeros((32, 32, 3), np.uint8))
                zf.writestr(f"{folder.name}/{f.name}", b.getvalue())
            else:
                zf.write(f, f"{folder.name}/{f.name}")
    return buf.getvalue()


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,make,status,message",
    [
        ("notes.txt", lambda f: b"just some text, not a scan", 415, r"notes\.txt is not an accepted upload"),
        ("p.zip", lambda f: zip_folder(f)[:5000], 400, r"cannot be unpacked|not a readable zip"),
        ("p.zip", _truncated_tif_zip, 400, r"_2\.tif cannot be read as a TIFF"),
        ("p.zip", _mixed_size_zip, 400, r"_3\.tif has shape \(32, 32, 3\).*share one size"),
        ("evil.zip", lambda f: _zip_of({"../../escaped.tif": b"x", "a/b.tif": b"y"}), 400, r"points outside"),
        ("evil.zip", lambda f: _zip_of({"/etc/escaped.tif": b"x"}), 400, r"points outside"),
        ("two.zip", lambda f: _zip_of({f"{p.name}/{q.name}": q.read_bytes()
                                       for p in patient_folders(f.parent)[:2] for q in p.glob("*.tif")}),
         400, r"holds 2 cases"),
        ("big.nii", lambda f: b"\0" * (2 * 2**20 + 10), 413, r"limit is 2 MiB"),
        ("empty.nii", lambda f: b"", 400, r"empty"),
        ("scan.nii.gz", lambda f: b"\x1f\x8b\x08\x00" + b"\0" * 40, 400, r"scan\.nii\.gz cannot be read"),
    ],
    ids=["text", "truncated-zip", "truncated-tif", "mixed-sizes", "zip-slip", "absolute-path", "two-patients",
         "too-large", "empty", "broken-nifti"],
)
def test_bad_uploads_get_4xx_and_leave_nothing(client, work, tiny_phantoms, tmp_path, name, make, status, message):
    folder = patient_folders(tiny_phantoms)[3]
    r = upload(client, name, make(folder))
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert re.search(message, r.json()["error"]), r.json()["error"]
    assert str(work) not in r.json()["error"]  # no server paths in messages
    assert list(work.iterdir()) == []  # the refused job's folder is gone
    assert not (tmp_path / "escaped.tif").exists() and not Path("/etc/escaped.tif").exists()
    # and the server still works afterwards
    assert client.get("/api/info").status_code == 200


def test_not_multipart_and_wrong_field(client) -> None:
    r = client.post("/api/jobs", content=b"abc", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    r = client.post("/api/jobs", files={"scan": ("x.nii", b"abc")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]


def test_queue_and_kept_jobs_are_bounded(segmenter, tiny_phantoms, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.uploads import UploadError

    store = JobStore(tmp_path / "w", segmenter, workers=1, max_pending=1, keep=1, grace_s=0)
    a, b = store.new("a"), store.new("b")
    with pytest.raises(UploadError, match="busy") as e:
        store.new("c")
    assert e.value.status == 503
    store.discard(a)
    store.discard(b)
    assert list((tmp_path / "w").iterdir()) == []
    with TestClient(create_app(store)) as c:
        folder = patient_folders(tiny_phantoms)[4]
        first = upload(c, "p.zip", zip_folder(folder)).json()["id"]
        wait_done(c, first)
        second = upload(c, "p.zip", zip_folder(folder)).json()["id"]
        wait_done(c, second)
        assert c.get(f"/api/jobs/{first}").status_code == 404  # only `keep` finished jobs stay
        assert [p.name for p in (tmp_path / "w").iterdir()] == [second]
    store.shutdown()


def test_page_and_static_files_are_served_offline(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "brainseg viewer" in page.text
    for asset in ("/static/viewer.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    assert "https://" not in page.text and "http://" not in page.text
    info = client.get("/api/info").json()
    assert info["host"] == "127.0.0.1" and info["n_views"] == 3 and "disputed" in info["review_rule"]


def test_serve_without_a_model_says_how_to_pass_one(capsys, monkeypatch, tmp_path) -> None:
    import brainseg.bundles as B

    monkeypatch.setattr(B.default_bundle, "__defaults__", (tmp_path,))  # a brainseg that bundles no model
    assert cli_main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "no model to serve" in err and "-c" in err


def test_serve_without_a_model_takes_the_bundled_one() -> None:
    import brainseg.bundles as B
    from brainseg.commands.serve import resolve_checkpoints

    if B.default_bundle() is None:
        pytest.skip("this checkout ships no bundled model yet")
    assert resolve_checkpoints([]) == [str(B.default_bundle())]
    assert resolve_checkpoints(["runs/x"]) == ["runs/x"]


def test_dicom_zip_upload_gives_a_nifti_mask_on_the_series_grid(client, tiny_phantoms, tmp_path) -> None:
    from helpers_dicom import write_study

    folder = patient_folders(tiny_phantoms)[6]
    images = slice_stack(folder)
    study = write_study(tmp_path / "STUDY", images)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(study.rglob("*")):
            if f.is_file():
                zf.write(f, f"export/{f.relative_to(study.parent)}")
    r = upload(client, "study.zip", buf.getvalue())
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "done" and job["kind"] == "dicom" and job["channels"] == 3
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/masks.zip").content))
    assert "STUDY_seg.dcm" in z.namelist()  # and a DICOM SEG over the FLAIR series
    (tmp_path / "m.nii.gz").write_bytes(z.read("STUDY_mask.nii.gz"))
    m = nib.load(tmp_path / "m.nii.gz")
    assert m.shape == images.shape[1:3] + images.shape[:1]
    assert job["figures"]["volume_ml"] == pytest.approx(int(np.asanyarray(m.dataobj).sum()) * 0.9 * 0.8 * 3 / 1000)
    # the page's FLAIR layer is the FLAIR series, as sent
    img = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/slices/2/image.png").content)))
    assert np.array_equal(img, images[2, :, :, 1])


def test_png_patient_zip_gives_png_masks(client, tiny_phantoms) -> None:
    folder = patient_folders(tiny_phantoms)[7]
    images = slice_stack(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, img in enumerate(images, start=1):
            png = io.BytesIO()
            Image.fromarray(img).save(png, format="PNG")
            zf.writestr(f"case_{k}.png", png.getvalue())
    r = upload(client, "pngs.zip", buf.getvalue())
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "done" and job["n_slices"] == len(images)
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/masks.zip").content))
    masks = sorted((n for n in z.namelist() if n.endswith("_mask.png")), key=lambda n: int(n.split("_")[-2]))
    assert len(masks) == len(images)
    got = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n)))) == 255 for n in masks])
    assert int(got.sum()) == job["figures"]["volume_px"]
    assert got.reshape(len(got), -1).sum(1).tolist() == job["figures"]["slice_area_px"]


def test_a_single_slice_upload_to_a_2_5_d_model_is_noted(tiny_phantoms, tmp_path) -> None:
    import torch
    from fastapi.testclient import TestClient

    from brainseg.data.preprocess import preprocessing_dict
    from brainseg.models import create_model
    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.segment import Segmenter

    torch.manual_seed(0)
    model = create_model("unet", in_channels=9, width=4)  # untrained: only the note is checked
    ckpt = {"model": dict(model.config), "state_dict": model.state_dict(), "config": {},
            "preprocessing": preprocessing_dict(32, 3, "unit", context=1)}
    store = JobStore(tmp_path / "w", Segmenter([ckpt], tta=False), workers=1)
    one = sorted(f for f in patient_folders(tiny_phantoms)[0].glob("*.tif") if not f.name.endswith("_mask.tif"))[0]
    with TestClient(create_app(store)) as c:
        job = wait_done(c, upload(c, one.name, one.read_bytes()).json()["id"])
        assert job["status"] == "done" and job["n_slices"] == 1
        assert any("2.5-D" in n and "single slice" in n for n in job["notes"])
        folder = patient_folders(tiny_phantoms)[0]
        whole = wait_done(c, upload(c, "p.zip", zip_folder(folder)).json()["id"])
        assert whole["status"] == "done" and not any("2.5-D" in n for n in whole["notes"])
    store.shutdown()
