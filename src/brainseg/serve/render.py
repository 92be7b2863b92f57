"""PNG layers of one slice for the viewer: the scan channel, the mask (filled or outline), the uncertainty.

The page stacks them on a canvas: the grey image first, then one overlay layer drawn with the
opacity the slider sets. Overlay layers are RGBA with alpha 0 outside what they mark, so the
image shows through untouched there.
"""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage

from brainseg.inference.writers import OVERLAY_RGB

LAYERS = ("image", "fill", "outline", "uncertainty")


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 3) or (H, W, 4) → PNG bytes (fast compression: these are served live)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_layer(images: np.ndarray, k: int, channel: int) -> np.ndarray:
    """Slice k of uint8 (N, H, W, C) as grey (H, W); a 1-channel case shows its one channel."""
    c = channel if images.shape[-1] > channel >= 0 else 0
    return images[k, :, :, c]


def mask_layer(mask2d: np.ndarray, outline: bool) -> np.ndarray:
    """RGBA (H, W, 4): the mask in the overlay colour, filled or only its edge pixels, transparent elsewhere."""
    m = np.asarray(mask2d, dtype=bool)
    if outline:
        m = m & ~ndimage.binary_erosion(m, border_value=0)
    out = np.zeros((*m.shape, 4), dtype=np.uint8)
    out[m, :3] = OVERLAY_RGB
    out[m, 3] = 255
    return out


def uncertainty_layer(u2d: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4): disagreement 0–1 as yellow→red, its alpha growing with it (0 is transparent)."""
    u = np.clip(np.asarray(u2d, dtype=np.float32), 0.0, 1.0)
    out = np.zeros((*u.shape, 4), dtype=np.uint8)
    out[..., 0] = 255
    out[..., 1] = np.rint(255 * (1.0 - u)).astype(np.uint8)
    out[..., 3] = np.rint(255 * np.sqrt(u)).astype(np.uint8)  # √: faint disagreement stays visible
    return out
