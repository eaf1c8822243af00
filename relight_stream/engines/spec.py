"""Engine specifications, weight references and the ``Runner`` protocol every backend implements.

An :class:`EngineSpec` describes one (kind, flavor): how to build the torch module(s) from a config (the
architecture) and, separately, which real weights exist for it (a Hugging Face id; the revision is always
supplied by the user as ``weights="org/name@revision"``, because a commit hash cannot be known offline and a
moving ``main`` is not a pin). Building yields a :class:`BuiltModel`: named *parts* (the sub-networks a backend
runs and ``build-engines`` exports, e.g. CLIP's ``image`` and ``text`` towers) plus example inputs and extras
(tokenizer, logit scale). The engine class of the kind wraps pre/post-processing around runners of the parts and
never branches on the backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

PRECISIONS = ("fp32", "bf16", "fp16")
RANDOM_SEED = 0
"""Random-weight builds are seeded with this, so a cached ONNX/TRT export matches a fresh eager build."""


@runtime_checkable
class Runner(Protocol):
    """Runs one exported/compiled part: positional tensors in, tuple of tensors out (fp32 outputs)."""

    name: str

    def available(self) -> tuple[bool, str]: ...

    def __call__(self, *inputs: Any) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class PartIO:
    """Names of a part's inputs and outputs (ONNX/TensorRT tensor names); axis 0 of every tensor is the batch.

    ``dynamic_axes`` names further axes that vary at run time (``{"images": {2: "height", 3: "width"}}``).
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass
class BuiltModel:
    """What a spec's ``build`` returns.

    Attributes:
        parts: name -> ``torch.nn.Module`` whose ``forward(*tensors)`` returns a tuple of tensors.
        io: name -> :class:`PartIO`.
        example_inputs: name -> ``fn(batch_size) -> tuple of tensors`` in the part's input space (for export,
            parity checks and benchmarks).
        extras: anything the engine needs besides the parts (tokenizer, logit scale); ``extras["model"]`` is the
            whole underlying library model (open_clip CLIP, SAM2Base, transformers/diffusers model).
    """

    parts: dict[str, Any]
    io: dict[str, PartIO]
    example_inputs: dict[str, Callable[[int], tuple[Any, ...]]]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineSpec:
    """One (kind, flavor): architecture config, real-weight location, and how to build and wrap it.

    Attributes:
        kind: model kind (``clip``, ``segmenter``, ``depth``, ``vae``).
        flavor: flavor name (``tiny``, ``vit-l-14``, ...).
        build: ``build(spec, weights: WeightsRef) -> BuiltModel`` (random init when ``weights.source == "random"``).
        engine: ``engine(spec, runners, built, device) -> engine object`` with the kind's public API.
        input_size: side in pixels of the square image the model consumes (the engine resizes to it).
        hf_id: Hugging Face repository of the real weights, or ``None`` when there are none.
        hf_file: file inside ``hf_id`` holding the weights (``None`` = the whole repository).
        config: architecture parameters, recorded in build sidecars.
        description: one line for ``list_engines``.
        random_build: whether the flavor can be built with random weights (a full-size model whose architecture
            only comes with its weights cannot).
    """

    kind: str
    flavor: str
    build: Callable[[EngineSpec, WeightsRef], BuiltModel]
    engine: Callable[..., Any]
    input_size: int
    hf_id: str | None = None
    hf_file: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    random_build: bool = True


_HF_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<rev>[\w.-]+)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")


def check_revision(repo: str, rev: str | None, what: str) -> None:
    """Refuse a hub ``repo`` without a pinned commit: a branch or tag (``main``, ``v1``) can move under a run.

    Raises:
        ValueError: ``rev`` missing or not a lowercase hex commit sha (7-40 digits here; give all 40, which is
            what the Hub resolves for certain).
    """
    if not rev or not _COMMIT_RE.match(rev):
        got = f"'{rev}' is a branch or tag, which can move" if rev else "no revision"
        raise ValueError(f"{what} {repo!r}: {got}; pin a commit, e.g. '{repo}@<40-hex commit sha>' (the repo's "
                         "'History' page on the Hub lists them), or give a local path")


@dataclass(frozen=True)
class WeightsRef:
    """Where weights come from: ``random`` (seeded init), ``hf`` (repo at a pinned revision) or ``local`` (path)."""

    source: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None

    @property
    def ident(self) -> str:
        """Stable identity for cache keys: the revision for hub weights, size+mtime for local files."""
        if self.source == "random":
            return f"random:seed{RANDOM_SEED}"
        if self.source == "hf":
            return f"hf:{self.repo}@{self.revision}"
        p = Path(self.path or "")
        st = p.stat()
        return f"local:{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def parse_weights(weights: str | os.PathLike | None, spec: EngineSpec) -> WeightsRef:
    """Validate a user's ``weights`` value for ``spec`` before anything loads.

    Args:
        weights: ``None`` or ``"random"`` (seeded random init), ``"org/name@revision"`` (Hugging Face, revision
            required), or an existing local file/folder.
        spec: the engine spec the weights are for.

    Raises:
        ValueError: a hub id without a revision, or something that is neither a hub id nor an existing path.
    """
    if weights is None or str(weights) == "random":
        return WeightsRef("random")
    text = str(weights)
    if Path(text).expanduser().exists():
        return WeightsRef("local", path=str(Path(text).expanduser()))
    m = _HF_RE.match(text)
    if m:
        check_revision(m["repo"], m["rev"], "weights")
        return WeightsRef("hf", repo=m["repo"], revision=m["rev"])
    hint = f" ({spec.kind}/{spec.flavor} real weights: '{spec.hf_id}@<commit>')" if spec.hf_id else ""
    if "/" in text and "@" not in text:
        raise ValueError(
            f"weights {text!r}: pin a revision, e.g. weights='{text}@<commit sha>' (a moving branch such as "
            f"'main' is not reproducible){hint}"
        )
    raise ValueError(
        f"weights {text!r} is neither an existing local path nor a Hugging Face id 'org/name@revision'{hint}"
    )


def offline() -> bool:
    """True when the hub must not be contacted (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set truthy)."""
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in flags)


def fetch_weights(ref: WeightsRef, filename: str | None = None) -> Path:
    """Local path of the weights: the file/folder itself (``filename`` inside it, if it is a folder holding one),
    or the hub snapshot (file) at the pinned revision; its ``.safetensors`` files checked for truncation.

    Honours offline mode: then only the local hub cache is used, and a miss raises ``ValueError`` naming the
    pre-fetch command (see :mod:`relight_stream.engines.weights`).
    """
    from relight_stream.engines.weights import resolve_weights

    return resolve_weights(ref, filename)
