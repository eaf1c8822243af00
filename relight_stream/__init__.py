"""relight-stream: IC-Light-style relighting data at high throughput, and the InstructPix2Pix model trained on it.

The flow (ARCHITECTURE.md §1)::

    images (folder | CSV/parquet list | WebDataset tars)
      └─ decode ──┬─ filter:   lighting score (photometric + CLIP) → top-N / threshold → seeded splits
                  └─ generate: segment → geometry (depth → normals) → albedo → relight
                               → instruction → shard (WebDataset triplets, atomic, resumable)
                                     └─ cache-latents (VAE + text) → train (InstructPix2Pix) → infer

Sub-packages: ``pipeline`` (stages and the streaming runner), ``engines`` (model kinds × flavors × backends),
``kernels`` (array code written once against NumPy/CuPy), ``train`` (diffusers + accelerate), ``bench``.
"""

__version__ = "0.1.0"
