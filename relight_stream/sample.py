"""``SampleBatch``: the one record every stage reads and writes.

Conventions (ARCHITECTURE.md §4), written once here:

* Arrays are named with their layout: ``rgb_BHW3`` (sRGB uint8, 0–255, as decoded), ``lin_BHW3`` (linear RGB
  float32, 0–1+), ``mask_BHW`` (float32 0–1, soft edges allowed; stored as uint8 0–255), ``depth_BHW``
  (relative, larger = nearer, normalised to [0, 1] over the foreground), ``normals_BHW3`` (unit vectors in the
  camera frame: +x right, +y up, +z toward the viewer; pixel rows still run top to bottom), ``albedo_BHW3`` and
  ``shading_BHW3`` (linear float32), ``input_BHW3`` (the relit model input, sRGB uint8).
* An array has a leading batch axis of length ``len(batch)``; it lives on whichever device the stage that
  wrote it chose (NumPy, CuPy or torch) and stays there for the next stage.
* Per-sample failures never raise: a stage calls :meth:`SampleBatch.drop` with a reason code
  ``"<stage>:<code>"`` (``decode:truncated``, ``segment:empty_mask``). ``skipped`` means the input was bad,
  ``failed`` means our processing failed on it; both are recorded and counted, neither is silently lost.
* ``meta[i]`` is a JSON-able dict that ends up as the sample's ``meta.json``: every random parameter, model
  and revision a stage used goes there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class SampleBatch:
    """A batch of samples moving through the stages.

    Attributes:
        keys: Sample keys (``[A-Za-z0-9_/-]``, no dots).
        meta: Per-sample JSON-able metadata.
        arrays: Layout-suffixed arrays with a leading batch axis (or lists of per-sample arrays).
        keep_B: False once a sample was dropped.
        drop_reason: ``"<stage>:<code>"`` for dropped samples, else ``None``.
        failed_B: True where the drop was a processing failure rather than a bad input.
    """

    keys: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, Any] = field(default_factory=dict)
    keep_B: np.ndarray | None = None
    drop_reason: list[str | None] = field(default_factory=list)
    failed_B: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not self.meta:
            self.meta = [{} for _ in range(n)]
        if self.keep_B is None:
            self.keep_B = np.ones(n, dtype=bool)
        if not self.drop_reason:
            self.drop_reason = [None] * n
        if self.failed_B is None:
            self.failed_B = np.zeros(n, dtype=bool)
        assert len(self.meta) == n and len(self.keep_B) == n and len(self.drop_reason) == n

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, name: str) -> Any:
        return self.arrays[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.arrays[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def drop(self, i: int, reason: str, *, failed: bool = False, detail: str | None = None) -> None:
        """Mark sample ``i`` as dropped; the first reason wins (later stages do not overwrite it)."""
        if not self.keep_B[i]:
            return
        self.keep_B[i] = False
        self.drop_reason[i] = reason
        self.failed_B[i] = failed
        if detail:
            self.meta[i]["drop_detail"] = detail

    def kept(self) -> Iterator[int]:
        """Indices of the samples still kept."""
        return (int(i) for i in np.flatnonzero(self.keep_B))

    @property
    def num_kept(self) -> int:
        return int(self.keep_B.sum())

    def status(self, i: int) -> str:
        """``ok``, ``skipped`` (bad input) or ``failed`` (processing error) for sample ``i``."""
        if self.keep_B[i]:
            return "ok"
        return "failed" if self.failed_B[i] else "skipped"
