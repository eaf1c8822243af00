"""Relighting kernels: array code written once against ``xp`` (NumPy on CPU, CuPy on GPU).

Conventions (ARCHITECTURE.md §4): kernels take *single* images — ``(H, W)`` maps and ``(H, W, 3)`` colour images,
the batch loop lives in the pipeline stage — except the colour transfer functions, which accept any shape. All
lighting maths is in linear RGB float32. Camera frame: +x right, +y up, +z toward the viewer; pixel rows run down
(row index increasing = -y). Light direction: unit vector toward the light; azimuth 0° = from image right, 90° =
from above, 180° = from left; elevation 90° = frontal, 0° = grazing, < 0 = from behind. Depth: relative, larger =
nearer, [0, 1] over the foreground; ``depth_scale`` (default 0.5) = its extent as a fraction of the image side.
Lengths (blur sigmas, pattern sizes, shadow distances) are fractions of the image side, so results do not depend
on resolution. Every function follows its input's array module (``xp.get_xp``); ``fast=True`` lets NumPy inputs
use OpenCV for resizes/blurs (same values as the pure-``xp`` path, which CuPy uses).

API by module:

* ``color``: ``srgb_to_linear(u8|float)``, ``linear_to_srgb(x)``, ``linear_to_srgb_u8(x)``, ``luminance(lin)``,
  ``kelvin_to_rgb(K)``, ``tonemap(lin, mode="clip"|"reinhard")``.
* ``normals``: ``normals_from_depth(depth, mask, depth_scale=0.5, smooth=0)``, ``normals_from_height(z, mask)``,
  ``inflate_mask(mask)``, ``normals_from_mask(mask, lin, detail=0.15[, return_scale=True]) -> (depth, normals[,
  depth_scale])`` (classical backend; record ``depth_scale`` so cast shadows get the true length),
  ``normals_to_u8`` / ``normals_from_u8`` (``normals.png`` encoding), ``as_mask``.
* ``retinex`` (albedo): ``estimate_albedo(lin, mask, method="retinex"|"lab"|"intrinsic", **kw) -> (albedo,
  shading)``, each ``(H, W, 3)`` with ``albedo * shading == lin`` in the mask; ``retinex_albedo(sigmas=...)``,
  ``lab_albedo``, ``intrinsic_albedo``.
* ``shading``: ``light_direction(az, el)``, ``lambert``, ``shade_directional``, ``sh_basis``, ``shade_sh``,
  ``sh_from_directional``.
* ``shadows``: ``cast_shadow(depth, direction, size_deg=...) -> visibility``.
* ``specular``: ``specular(normals, direction, model="ggx"|"blinn_phong", roughness, f0)``.
* ``patterns``: ``pattern_transmission(record, shape, depth=, direction=)``, ``PATTERNS``;
  ``pattern_sampling.sample_pattern(rng, kind)``.
* ``lights``: ``sample_relight(rng, mix, ambient=(lo, hi)) -> record`` (JSON-able, goes into ``meta.json``),
  ``make_light``, ``combine_lights``, ``DEGRADATIONS`` (the ``RelightConfig.mix`` keys).
* ``render``: ``render_relight(albedo, normals, depth, mask, record) -> (relit, shading)`` (linear, not tone
  mapped), ``composite(fg_lin, mask)`` (onto sRGB 128 grey), ``render_consistency_triplet(..., p1, p2) ->
  (I1, I2, I12)`` (the record of L1 + L2 is ``lights.combine_lights(p1, p2)``); ``render_shading(normals, depth,
  record) -> (shading, speculars | None)`` for callers that shade at a lower resolution and upsample.
* ``filters``: ``gaussian_blur`` (pyramid for large sigmas), ``masked_blur``, ``masked_blur_multi``,
  ``downsample``, ``upsample``, ``resize_bilinear``, ``work_factor``.
* ``ops``: BLAS-free per-pixel helpers (``dot3``, ``combine_maps``, ``mul3``, ``expand3``, ``channel_max``);
  ``ops.GENERIC = True`` sends NumPy through the CuPy code path (tests check it on a CPU).
* ``intrinsic_bench``: procedural scenes with exact albedo/shading and the MIT scale-invariant ``lmse``.

Performance notes for callers: the NumPy kernels are single-threaded (OpenCV threads are the caller's choice) and
allocation-heavy; a worker process gains ~30 % from ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set high
(glibc otherwise unmaps and re-faults every freed 12 MB image), and ``OPENBLAS_NUM_THREADS=1`` protects any
BLAS call elsewhere from thread spinning on loaded machines.

Typical generate-stage use, per sample::

    lin = color.srgb_to_linear(rgb_u8)
    depth, normals_ = normals.normals_from_mask(mask, lin)          # or normals_from_depth(depth_net, mask)
    albedo, shading0 = retinex.estimate_albedo(lin, mask, method="retinex")
    record = lights.sample_relight(rng, cfg.relight.mix, ambient=cfg.relight.ambient)
    relit, shading = render.render_relight(albedo, normals_, depth, mask, record)
    input_u8 = color.linear_to_srgb_u8(render.composite(color.tonemap(relit), mask))
"""
