"""PNG members (``normals.png``, ``mask.png``, ``alpha.png``): fast zlib setting, lossless and byte-deterministic."""

from __future__ import annotations

import cv2
import numpy as np

from relight_stream.pipeline import shard as S


def _normals(n: int = 256) -> np.ndarray:
    """Unit normals of a smooth bumpy surface (z toward the viewer)."""
    yy, xx = np.mgrid[:n, :n] / n
    h = np.sin(6 * xx) * np.cos(5 * yy) * 0.3
    gy, gx = np.gradient(h * n / 8)
    v = np.dstack([-gx, gy, np.ones_like(h)]).astype(np.float32)
    return v / np.linalg.norm(v, axis=2, keepdims=True)


def test_normals_and_mask_pngs_are_lossless_and_byte_identical_on_rerun():
    n = _normals()
    yy, xx = np.mgrid[:256, :256]
    mask = np.clip((90 - np.hypot(yy - 128, xx - 120)) / 4, 0, 1).astype(np.float32)
    for enc, a, want in ((S.enc_normals_png, n, np.clip(np.rint((n + 1) * 127.5), 0, 255).astype(np.uint8)),
                         (S.enc_mask_png, mask, np.rint(mask * 255).astype(np.uint8))):
        b1, b2 = enc(a, 95), enc(a.copy(), 95)
        assert b1 == b2
        back = cv2.imdecode(np.frombuffer(b1, np.uint8), cv2.IMREAD_UNCHANGED)
        back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB) if back.ndim == 3 else back
        assert (back == want).all()


def test_the_fast_png_setting_is_not_larger_than_opencvs_default_level():
    u8 = cv2.cvtColor(np.clip(np.rint((_normals() + 1) * 127.5), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    default = cv2.imencode(".png", u8, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1]
    fast = S.enc_normals_png(_normals(), 95)
    assert S.PNG_LEVEL == 1 and len(fast) <= len(default)
