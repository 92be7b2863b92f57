"""Seeded synthetic MRI-like phantoms in the kaggle_3m layout: the dataset every command defaults to.

Each phantom patient is a small 3-D head: an elliptical scalp (bright fat), a dark skull, a thin
CSF rim, a folded grey-matter cortex, white matter with texture, butterfly-shaped ventricles that
come and go with the slice position, and one or two lesions. A lesion is a lobulated 3-D blob
(an ellipsoid deformed by smooth random noise) spanning consecutive slices; it is hyperintense in
FLAIR (channel 1) by a lesion-specific amount, hypointense in pre-contrast T1 (channel 0), and
sometimes has a dark cystic core or an enhancing rim in post-contrast T1 (channel 2). The masks
mark the whole FLAIR abnormality, as in the real set.

What makes it a segmentation problem rather than a thresholding one: the scalp is as bright as
lesions in FLAIR, grey matter overlaps faint lesions, cystic cores are dark, and every
"institution" and patient has its own gains, contrast, bias field, noise level and head shape.
About two thirds of the slices have no lesion, as in the LGG set (642 of 1909 slices have one).

All randomness comes from `numpy.random.default_rng([seed, patient index])`, so a patient does
not change when more patients are asked for, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.data.index_cache import cache_dir
from brainseg.errors import BrainsegError

#: Bump when the generator changes, so cached default sets are regenerated.
PHANTOM_VERSION = 1
DEFAULT_PATIENTS = 20
DEFAULT_SEED = 0
DEFAULT_SLICES = (16, 24)
DEFAULT_SIZE = 256

# Institutions in a fixed 10-patient cycle (roughly the proportions of the development set).
_INSTITUTION_CYCLE = ("DU", "HT", "CS", "DU", "FG", "HT", "DU", "CS", "HT", "FG")

# The header of the real data.csv (the phantom values are random, for the layout only).
CSV_COLUMNS = (
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
    "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade",
    "tumor_tissue_site", "laterality", "tumor_location", "gender", "age_at_initial_pathologic",
    "race", "ethnicity", "death01",
)  # fmt: skip


@dataclass(frozen=True)
class Site:
    """Scanner/protocol differences of one phantom institution."""

    gain: tuple[float, float, float]  # per channel intensity gain
    gm_contrast: float  # grey/white matter contrast multiplier
    noise: float  # Rician noise sigma, in uint8 units
    bias: float  # amplitude of the smooth multiplicative bias field
    aspect: float  # head width / height
    scalp: float  # scalp brightness multiplier


SITES: dict[str, Site] = {
    "CS": Site(gain=(1.00, 1.05, 0.95), gm_contrast=1.0, noise=3.0, bias=0.12, aspect=0.82, scalp=1.00),
    "DU": Site(gain=(0.85, 0.82, 0.92), gm_contrast=0.8, noise=2.0, bias=0.20, aspect=0.78, scalp=1.10),
    "FG": Site(gain=(1.10, 1.15, 1.05), gm_contrast=1.2, noise=4.5, bias=0.08, aspect=0.86, scalp=0.90),
    "HT": Site(gain=(0.95, 0.95, 1.12), gm_contrast=1.0, noise=2.5, bias=0.25, aspect=0.80, scalp=1.05),
}

# Base intensities (0–1) per tissue for (pre-contrast T1, FLAIR, post-contrast T1).
_SCALP = np.array([0.85, 0.72, 0.85], np.float32)
_BONE = np.array([0.05, 0.05, 0.05], np.float32)
_CSF = np.array([0.12, 0.09, 0.12], np.float32)
_GM = np.array([0.36, 0.34, 0.36], np.float32)
_WM = np.array([0.46, 0.27, 0.43], np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-std smooth random field (size × size), about `cells` blobs per side."""
    from PIL import Image

    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    # bicubic upsampling of white noise keeps its variance roughly (the kernel nearly interpolates)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def _soft_inside(level: np.ndarray, edge: float, width: float) -> np.ndarray:
    """Partial-volume weight of `level < edge` with a linear ramp `width` wide (anti-aliased edges)."""
    return np.clip((edge - level) / width + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, value: np.ndarray) -> None:
    """In place: img = img·(1−α) + value·α for a (3, H, W) image and an (H, W) weight."""
    img *= 1.0 - alpha
    img += alpha * value[:, None, None]


class _Lesion:
    """A lobulated 3-D blob: an ellipsoid deformed by a smooth random field (head coordinates)."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        from scipy import ndimage

        self.cz = rng.uniform(-0.45, 0.6)  # slice position, in [-1, 1] from bottom to top
        # centre inside the brain, in head-normalised coordinates (unit circle = scalp)
        r, a = 0.5 * math.sqrt(rng.uniform(0.0, 1.0)), rng.uniform(0, 2 * math.pi)
        self.cu, self.cv = r * math.cos(a), r * math.sin(a)
        radius = rng.uniform(0.045, 0.16) * size  # pixels at mid-extent
        elong = rng.uniform(0.7, 1.4)
        self.rx, self.ry = radius * math.sqrt(elong), radius / math.sqrt(elong)
        self.rz = rng.uniform(0.14, 0.4)  # half extent in normalised slice units
        self.angle = rng.uniform(0, math.pi)
        self.lobes = rng.uniform(0.2, 0.55)  # deformation amplitude
        self.blur = rng.uniform(1.0, 3.0)  # edge width in pixels (infiltrative lesions are fuzzy)
        self.contrast = rng.uniform(0.5, 1.2)  # FLAIR hyperintensity over white matter
        self.t1_drop = rng.uniform(0.1, 0.35)
        self.cyst = rng.uniform(0.3, 0.55) if rng.random() < 0.25 else 0.0
        self.rim = rng.uniform(0.25, 0.5) if rng.random() < 0.3 else 0.0
        # 7×7×7 control grid over [-1.5, 1.5]^3 in lesion units; cubic spline between the points
        grid = np.clip(rng.standard_normal((7, 7, 7)), -2.0, 2.0)
        self.coeffs = ndimage.spline_filter(grid, order=3)
        self.het = rng.uniform(0.5, 1.5)  # internal heterogeneity

    def level(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """Deformed ellipsoid level (< 1 inside) at pixel coordinates relative to the lesion centre."""
        from scipy import ndimage

        c, s = math.cos(self.angle), math.sin(self.angle)
        lx = (x * c + y * s) / self.rx
        ly = (-x * s + y * c) / self.ry
        lz = (z - self.cz) / self.rz
        base = lx * lx + ly * ly + lz * lz
        # map [-1.5, 1.5] lesion units onto the 0..6 control grid
        coords = np.stack([np.full_like(lx, lz), lx, ly]) * 2.0 + 3.0
        warp = ndimage.map_coordinates(self.coeffs, coords.reshape(3, -1), order=3, prefilter=False, mode="nearest")
        return base + self.lobes * warp.reshape(lx.shape)


def _patient_volume(
    rng: np.random.Generator, institution: str, n_slices: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom patient: images (n, S, S, 3) uint8 and masks (n, S, S) uint8 {0, 1}."""
    site = SITES.get(institution, SITES["CS"])
    S = size
    px = 1.0 / S  # one pixel in head-fraction units

    # ---- per-patient anatomy and acquisition
    ay = rng.uniform(0.37, 0.43)  # head semi-axis (fraction of the image), vertical
    ax = ay * site.aspect * rng.uniform(0.95, 1.05)
    cx, cy = rng.normal(0.0, 0.02, size=2)
    theta = rng.normal(0.0, math.radians(5))
    harmonics = [(k, rng.normal(0, 0.025), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4, 5)]
    scalp_t, bone_t, csf_t = rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.05), rng.uniform(0.012, 0.02)
    gm_t = rng.uniform(0.05, 0.08)
    gyri = [(k, rng.uniform(0, 2 * math.pi)) for k in (rng.integers(18, 26), rng.integers(30, 40))]
    vent_scale = rng.uniform(0.7, 1.3)
    gain = np.array(site.gain, np.float32) * rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    bias_coef = rng.normal(0.0, 1.0, 3) * site.bias
    scalp_var = (rng.uniform(0.1, 0.25), rng.uniform(0, 2 * math.pi))
    lesions = [_Lesion(rng, S) for _ in range(2 if rng.random() < 0.15 else 1)]

    # ---- coordinates shared by all slices
    coords = (np.arange(S, dtype=np.float32) + 0.5) / S - 0.5
    X, Y = np.meshgrid(coords, coords)  # X: columns (left-right), Y: rows (anterior-posterior)
    c, s = math.cos(theta), math.sin(theta)
    U = ((X - cx) * c + (Y - cy) * s) / ax
    V = (-(X - cx) * s + (Y - cy) * c) / ay
    phi = np.arctan2(V, U)
    outline = 1.0 + sum(a * np.cos(k * phi + p) for k, a, p in harmonics)
    d0 = np.sqrt(U * U + V * V) / outline  # 1 on the scalp surface
    gyral = 0.5 * (np.cos(gyri[0][0] * phi + gyri[0][1]) + np.cos(gyri[1][0] * phi + gyri[1][1]))
    bias = 1.0 + bias_coef[0] * U + bias_coef[1] * V + bias_coef[2] * U * V
    scalp_mod = 1.0 + scalp_var[0] * np.cos(3 * phi + scalp_var[1])

    drift = max(1, S // 128)
    big = S + drift * n_slices
    tex_big = _smooth_noise(rng, big, max(4, big // 10))
    fine_big = _smooth_noise(rng, big, max(6, big // 4))

    images = np.empty((n_slices, S, S, 3), np.uint8)
    masks = np.zeros((n_slices, S, S), np.uint8)
    for k in range(n_slices):
        z = -1.0 + 2.0 * (k + 0.5) / n_slices
        scale = math.sqrt(max(0.15, 1.0 - (0.85 * z) ** 2))
        d = d0 / scale
        w = px / (scale * ay)  # one pixel in d units
        brain_edge = 1.0 - scalp_t - bone_t - csf_t
        # windows into one texture per patient, drifting a little per slice like real anatomy does
        o1, o2 = k * drift, (n_slices - 1 - k) * drift
        tex = tex_big[o1 : o1 + S, o2 : o2 + S]
        fine = fine_big[o2 : o2 + S, o1 : o1 + S]

        img = np.zeros((3, S, S), np.float32)
        _paint(img, _soft_inside(d, 1.0, w) * np.clip(scalp_mod * (1 + 0.12 * fine), 0, None), _SCALP * site.scalp)
        _paint(img, _soft_inside(d, 1.0 - scalp_t, w), _BONE)
        _paint(img, _soft_inside(d, 1.0 - scalp_t - bone_t, w), _CSF)
        brain = _soft_inside(d, brain_edge, w)
        gm = _GM.copy()
        gm[1] = _WM[1] + (_GM[1] - _WM[1]) * site.gm_contrast
        _paint(img, brain, gm)
        wm_edge = brain_edge - gm_t * (1.0 + 0.6 * gyral)
        _paint(img, _soft_inside(d, wm_edge, w), _WM)
        # ventricles: two tilted ellipses beside the midline, largest just above the middle slice
        v_size = vent_scale * math.sqrt(max(0.0, 1.0 - ((z - 0.1) / 0.45) ** 2))
        if v_size > 0.05:
            for side in (-1.0, 1.0):
                vu = (U / scale - side * 0.09 * v_size) / 0.055
                vv = (V / scale + 0.03) / (0.22 * v_size)
                tilt = side * math.radians(15)
                a = vu * math.cos(tilt) + vv * math.sin(tilt)
                b = -vu * math.sin(tilt) + vv * math.cos(tilt)
                _paint(img, _soft_inside(np.sqrt(a * a + b * b), 1.0 / v_size, 0.15), _CSF)
        # tissue texture (shared by the channels, as anatomy is)
        img *= 1.0 + 0.07 * tex * brain

        inside_brain = d < brain_edge - 2 * w
        for lesion in lesions:
            if abs(z - lesion.cz) > 1.5 * lesion.rz:
                continue
            # pixel box around the lesion centre (3 radii wide), clipped to the image
            ccx = lesion.cu * ax * c - lesion.cv * ay * s + cx
            ccy = lesion.cu * ax * s + lesion.cv * ay * c + cy
            half = 1.5 * max(lesion.rx, lesion.ry)
            col0 = max(0, int((ccx + 0.5) * S - half))
            col1 = min(S, int((ccx + 0.5) * S + half) + 2)
            row0 = max(0, int((ccy + 0.5) * S - half))
            row1 = min(S, int((ccy + 0.5) * S + half) + 2)
            if col0 >= col1 or row0 >= row1:
                continue
            sl = (slice(row0, row1), slice(col0, col1))
            xs = (X[sl] - ccx) * S
            ys = (Y[sl] - ccy) * S
            level = lesion.level(xs, ys, z)
            ramp = 2.0 * lesion.blur / max(lesion.rx, lesion.ry)  # level ≈ (r/R)², so dL ≈ 2·dr/R
            inside = inside_brain[sl]
            alpha = _soft_inside(level, 1.0, ramp) * inside
            het = 1.0 + 0.15 * fine[sl] * lesion.het
            value = np.empty((3, *level.shape), np.float32)
            value[0] = _WM[0] * (1.0 - lesion.t1_drop)
            value[1] = _WM[1] * (1.0 + lesion.contrast) * het
            value[2] = value[0]
            if lesion.cyst:
                core = _soft_inside(level, lesion.cyst**2, ramp)
                value[1] = value[1] * (1 - core) + _CSF[1] * 1.6 * core
                value[0] = value[0] * (1 - core) + _CSF[0] * core
                value[2] = value[2] * (1 - core) + _CSF[2] * core
            if lesion.rim:
                ring = _soft_inside(level, 1.0, ramp) * (1.0 - _soft_inside(level, 0.6, ramp))
                value[2] += lesion.rim * ring
            sub = img[:, sl[0], sl[1]]
            sub *= 1.0 - alpha
            sub += alpha * value
            masks[k][sl] |= ((level < 1.0) & inside).astype(np.uint8)

        img *= (gain[:, None, None] * bias)[...] * 255.0
        # Rician noise: magnitude of a complex signal with Gaussian noise in both parts
        noise = rng.standard_normal((2, *img.shape), dtype=np.float32)
        noise *= site.noise
        noise[0] += img
        np.square(noise, out=noise)
        out = np.sqrt(noise[0] + noise[1])
        np.clip(out, 0.0, 254.5, out=out)
        out += 0.5  # the uint8 assignment below truncates: +0.5 rounds
        images[k] = out.transpose(1, 2, 0)
    return images, masks


def _patient_name(rng: np.random.Generator, index: int, institution: str) -> str:
    year, month, day = rng.integers(1994, 2004), rng.integers(1, 13), rng.integers(1, 29)
    return f"TCGA_{institution}_{7000 + index:04d}_{year}{month:02d}{day:02d}"


def _write_tif(path: Path, array: np.ndarray, photometric: str) -> None:
    import tifffile

    # Images uncompressed like the original Kaggle files (deflate of noisy slices is slow), masks
    # deflated (tiny); no metadata, so the bytes depend on the pixels only.
    compression = "zlib" if photometric == "minisblack" else None
    tifffile.imwrite(path, array, photometric=photometric, compression=compression, metadata=None)


def write_phantoms(
    out: str | Path,
    *,
    patients: int = DEFAULT_PATIENTS,
    seed: int = DEFAULT_SEED,
    slices: tuple[int, int] = DEFAULT_SLICES,
    size: int = DEFAULT_SIZE,
) -> Path:
    """Write a phantom dataset in the kaggle_3m layout to `out/kaggle_3m` and return that folder.

    The folder is built under a temporary name and renamed when complete, so an interrupted run
    never leaves half a dataset behind.

    Args:
        out: parent folder (created if needed); `out/kaggle_3m` must not exist yet.
        patients: number of patients.
        seed: generator seed; the same arguments give byte-identical files.
        slices: (min, max) slices per patient, both inclusive.
        size: image height and width in pixels (256 like the real set).
    """
    if patients < 1:
        raise BrainsegError(f"phantoms: --patients must be at least 1, got {patients}")
    lo, hi = slices
    if not 1 <= lo <= hi:
        raise BrainsegError(f"phantoms: slices must satisfy 1 ≤ min ≤ max, got {slices}")
    if size < 16:
        raise BrainsegError(f"phantoms: size must be at least 16 pixels, got {size}")
    out = Path(out).expanduser()
    target = out / "kaggle_3m"
    if target.exists():
        raise BrainsegError(f"{target} already exists; choose another folder or remove it first")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kaggle_3m.", suffix=".partial", dir=out))
    try:
        _generate(tmp, patients=patients, seed=seed, slices=(lo, hi), size=size)
        os.replace(tmp, target)  # atomic on one file system; fails if another writer won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _generate(folder: Path, *, patients: int, seed: int, slices: tuple[int, int], size: int) -> None:
    rows = []
    for i in range(patients):
        rng = np.random.default_rng([seed, i])
        institution = _INSTITUTION_CYCLE[i % len(_INSTITUTION_CYCLE)]
        name = _patient_name(rng, i, institution)
        n = int(rng.integers(slices[0], slices[1] + 1))
        images, masks = _patient_volume(rng, institution, n, size)
        pdir = folder / name
        pdir.mkdir()
        for k in range(n):
            _write_tif(pdir / f"{name}_{k + 1}.tif", images[k], "rgb")
            _write_tif(pdir / f"{name}_{k + 1}_mask.tif", masks[k] * np.uint8(255), "minisblack")
        case = name.rsplit("_", 1)[0]
        values = [case] + [str(int(v)) for v in rng.integers(1, 4, len(CSV_COLUMNS) - 5)]
        values += [str(int(rng.integers(20, 75))), str(int(rng.integers(1, 4))), "", str(int(rng.integers(0, 2)))]
        rows.append(",".join(values))
    # CRLF like the real data.csv
    (folder / "data.csv").write_bytes(("\r\n".join([",".join(CSV_COLUMNS), *rows]) + "\r\n").encode())
    (folder / "README.md").write_text(
        "# brainseg phantoms\n\n"
        f"Synthetic MRI-like phantoms (generator version {PHANTOM_VERSION}): {patients} patients, "
        f"seed {seed}, {slices[0]}–{slices[1]} slices of {size}×{size}.\n"
        "Channels: pre-contrast T1, FLAIR, post-contrast T1. Not real patients; data.csv values are random.\n",
        encoding="utf-8",
    )


def default_phantom_root() -> Path:
    """The cached default phantom set (its `kaggle_3m` folder), generated on first use.

    It lives in the user cache (`$BRAINSEG_CACHE`, `$XDG_CACHE_HOME/brainseg` or `~/.cache/brainseg`) in a folder named after the
    generator version and settings; generation is atomic, so a killed run never leaves half a set.
    """
    parent = cache_dir() / f"phantoms-v{PHANTOM_VERSION}-p{DEFAULT_PATIENTS}-s{DEFAULT_SEED}"
    target = parent / "kaggle_3m"
    if target.is_dir():
        return target
    try:
        return write_phantoms(parent, patients=DEFAULT_PATIENTS, seed=DEFAULT_SEED, slices=DEFAULT_SLICES,
                              size=DEFAULT_SIZE)  # fmt: skip
    except (BrainsegError, OSError):
        if target.is_dir():  # another process finished the same set first: use it
            return target
        raise
