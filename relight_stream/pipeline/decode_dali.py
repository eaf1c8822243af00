"""DALI batch JPEG decode + square resize (``device="mixed"`` with a GPU, CPU operators without).

Reads a list of JPEG byte strings that :func:`relight_stream.pipeline.decode.decode_batches` has already probed
(header checks passed, file ends with EOI, no ICC conversion needed, no CMYK); writes a ``B×R×R×3`` uint8 sRGB
array: NumPy on the CPU pipeline (DALI decodes; the square resize is OpenCV's, as on the PIL path, because DALI's
CPU resize is several times slower), a torch CUDA tensor (DALI resize on the GPU through :func:`square_graph`,
the same square as the CPU path's, copied out of DALI's buffer before the next ``run()``) on the mixed pipeline. EXIF orientation is applied by the decoder
(``adjust_orientation=True``), which matches ``PIL.ImageOps.exif_transpose``. A failing batch raises; the caller
re-decodes that batch per sample on the CPU (DALI cannot skip a corrupt file, RELIABILITY.md A12).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.config import DecodeConfig
from relight_stream.log import pool_threads

log = logging.getLogger(__name__)


def dali_available() -> tuple[bool, str]:
    """(importable, reason)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA runtime
        return False, f"nvidia.dali is not importable ({exc}); pip install 'relight-stream[dali]'"
    return True, "nvidia.dali importable"


class DaliDecoder:
    """A DALI pipeline fed through ``external_source``: decode → resize → centre crop (or pad).

    Args:
        cfg: Decode settings (``resolution``, ``resize``, ``background``, ``batch_size``).
        device: ``"cpu"`` (``device_id=None``) or ``"mixed"`` (nvJPEG on GPU ``device_id``).
        num_threads: DALI CPU worker threads.
        device_id: CUDA device for ``mixed``.
    """

    def __init__(self, cfg: DecodeConfig, *, device: str = "cpu", num_threads: int = 0, device_id: int = 0,
                 dali_resize: bool | None = None) -> None:
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI device must be 'cpu' or 'mixed', got {device!r}")
        self.cfg = cfg
        self.device = device
        # the square resize in the DALI graph: on the GPU always; on the CPU only when asked (tests, benchmarks),
        # since OpenCV's resize is faster there
        self.dali_resize = device == "mixed" if dali_resize is None else dali_resize
        self.num_threads = num_threads or pool_threads()
        self.device_id = device_id
        self.name = f"dali-{device}"
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        res, cfg = self.cfg.resolution, self.cfg

        gpu = self.device == "mixed"

        @pipeline_def(batch_size=cfg.batch_size, num_threads=self.num_threads, prefetch_queue_depth=1,
                      device_id=self.device_id if gpu else None, exec_dynamic=gpu)
        def pipe():
            enc = fn.external_source(name="enc", dtype=types.UINT8, batch=True)
            img = fn.decoders.image(enc, device=self.device, output_type=types.RGB, adjust_orientation=True)
            if not self.dali_resize:  # DALI's CPU resize is ~5x slower than OpenCV's: the caller resizes
                return img
            return square_graph(img, enc, res, cfg.resize, cfg.background)

        p = pipe()
        p.build()
        return p

    def decode(self, blobs: list[bytes], *, pool: Any = None) -> Any:
        """Decode up to ``batch_size`` JPEGs (``pool``: an executor for the CPU resize). Raises on a failed batch."""
        if not blobs:
            raise ValueError("empty batch")
        if len(blobs) > self.cfg.batch_size:
            raise ValueError(f"batch of {len(blobs)} > batch_size {self.cfg.batch_size}")
        if self._pipe is None:
            self._pipe = self._build()
            log.info("DALI %s decode pipeline built (%d threads)", self.device, self.num_threads)
        try:
            self._pipe.feed_input("enc", [np.frombuffer(b, np.uint8) for b in blobs])
            (out,) = self._pipe.run()
        except Exception:
            self._pipe = None  # rebuild after a failure; DALI's state after an operator error is not guaranteed
            raise
        if self.device == "mixed":
            import torch

            return torch.from_dlpack(out.as_tensor()).clone()  # copy before the next run() reuses the buffer
        from relight_stream.pipeline.decode_pixels import fit_square

        imgs = [np.asarray(out.at(i)) for i in range(len(blobs))]
        if self.dali_resize:
            return np.stack(imgs)
        fit = lambda a: fit_square(a, self.cfg)  # noqa: E731
        return np.stack(list(pool.map(fit, imgs)) if pool is not None else [fit(a) for a in imgs])


def square_graph(img: Any, enc: Any, res: int, mode: str, background: Any) -> Any:
    """DALI graph of :func:`relight_stream.pipeline.decode_pixels.fit_square`: the same square, on the same pixels.

    ``crop``: the centre square of the oriented image (its size from the JPEG header: ``peek_image_shape``, on the
    CPU) resized to ``res``² in one pass through the resize's ROI. ``pad``: the longer side scaled to ``res``
    (sides rounded as ``fit_square`` rounds them), then a slice with negative anchors letterboxes it with
    ``background``, the extra row or column at the bottom/right as on the CPU path. Downscaling is antialiased
    (like INTER_AREA), upscaling cubic (like INTER_CUBIC).
    """
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    shape = fn.peek_image_shape(enc, adjust_orientation=True, dtype=types.INT32)
    h, w = shape[0], shape[1]
    if mode == "crop":
        s = dmath.min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        start = fn.cast(fn.stack(y0, x0), dtype=types.FLOAT)
        end = fn.cast(fn.stack(y0 + s, x0 + s), dtype=types.FLOAT)
        return fn.resize(img, size=(res, res), roi_start=start, roi_end=end, roi_relative=False, antialias=True,
                         mag_filter=types.INTERP_CUBIC)
    hf, wf = fn.cast(h, dtype=types.FLOAT), fn.cast(w, dtype=types.FLOAT)
    scale = res / dmath.max(hf, wf)
    nh = dmath.max(fn.cast(dmath.floor(hf * scale + 0.5), dtype=types.INT32), 1)
    nw = dmath.max(fn.cast(dmath.floor(wf * scale + 0.5), dtype=types.INT32), 1)
    small = fn.resize(img, size=fn.cast(fn.stack(nh, nw), dtype=types.FLOAT), antialias=True,
                      mag_filter=types.INTERP_CUBIC)
    y0, x0 = (res - nh) // 2, (res - nw) // 2
    full = fn.stack(res + 0 * nh, res + 0 * nw)  # a per-sample CPU node, as slice's shape input must be
    return fn.slice(small, fn.stack(-y0, -x0), full, axis_names="HW", out_of_bounds_policy="pad",
                    fill_values=list(background))
