"""Model engines: one registry of kind × flavor × backend (``create_engine``), used by filter, generate and train.

Usage::

    from relight_stream.engines import create_engine, list_engines

    clip = create_engine("clip", "tiny")                     # backend="auto", device=None (CUDA if present)
    emb = clip.encode_image(images)                          # [B,3,H,W] float sRGB 0-1 -> [B,D] unit vectors
    txt = clip.encode_text(["a well lit portrait"])          # -> [B,D] unit vectors; clip.logit_scale (float)

    seg = create_engine("segmenter", "tiny")                 # SAM 2.1 (sam2 package)
    prob = seg(images, boxes)                                # boxes [B,4] xyxy pixels -> [B,H,W] mask prob 0-1

    depth = create_engine("depth", "tiny")                   # Depth Anything V2 / MiDaS DPT (transformers)
    inv = depth(images)                                      # -> [B,H,W] relative inverse depth, larger = nearer

    vae = create_engine("vae", "tiny")                       # diffusers AutoencoderKL encoder
    lat = vae.encode(images * 2 - 1)                         # [-1,1] -> [B,4,H/8,W/8] mean (x vae.scaling_factor)

Kinds and flavors (``list_engines()``; ``base`` aliases each kind's default size):

- ``clip``: ``tiny``, ``vit-b-32``, ``vit-l-14`` (base)
- ``segmenter``: ``tiny``, ``hiera-t``, ``hiera-s``, ``hiera-b+`` (base), ``hiera-l``
- ``segmenter_sam3``: ``tiny``, ``sam3`` (``base``; weights required)
- ``depth``: ``tiny``, ``midas-dpt-tiny``, ``depth-anything-v2-s``, ``-b`` (base), ``-l``, ``midas-dpt-hybrid``,
  ``midas-dpt-large``
- ``vae``: ``tiny``, ``sd15`` (base), ``sdxl``

Arguments of ``create_engine(kind, flavor="base", *, backend="auto", device=None, precision="fp32", weights=None)``:

- ``backend``: ``eager`` | ``compile`` (torch.compile per repeated block) | ``onnxruntime`` (ONNX exported once into
  the engine cache, see ``engines.cache``) | ``tensorrt`` (needs a plan built by ``relight-stream build-engines``)
  | ``auto``: decided once per process and logged — TensorRT, then compile, then eager on CUDA; eager on a CPU.
  ``RELIGHT_BACKEND=<name>`` overrides ``auto``. An unavailable backend asked for explicitly raises ``ValueError``
  naming the pip extra (``onnx``, ``tensorrt``).
- ``precision``: ``fp32`` | ``bf16`` | ``fp16``; engine outputs are always fp32.
- ``weights``: ``None`` = random init (seeded; the only option offline, fine for ``tiny`` and for full-size speed
  benchmarks), ``"org/name@revision"`` (a revision is required; each spec's ``hf_id`` names the real weights) or a
  local path. ``HF_HUB_OFFLINE=1`` (``--offline``) restricts hub weights to the local cache.

Engines take torch tensors on any device and return tensors on the engine's device. Unknown kinds, flavors,
backends or precisions raise ``ValueError`` listing the valid names before any model is built.

Exported artefacts live in the engine cache (``$RELIGHT_ENGINE_CACHE``, default ``~/.cache/relight_stream/engines``),
keyed by kind, flavor, part, precision, input shapes, batch, weights and runtime (TensorRT version and GPU compute
capability for plans), each with a JSON sidecar; ``relight-stream build-engines`` fills it ahead of time
(``engines.build``) and a stale or foreign plan is refused with the command that rebuilds it (``engines.cache``).
Each engine exposes ``spec`` (its :class:`EngineSpec`), ``backend``, ``precision`` and ``weights`` (identity).
"""

from __future__ import annotations

from relight_stream.engines.registry import create_engine, get_spec, list_engines, register_engine
from relight_stream.engines.spec import EngineSpec, Runner

__all__ = ["EngineSpec", "Runner", "create_engine", "get_spec", "list_engines", "register_engine"]
