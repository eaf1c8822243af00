"""A subject prior that needs no download: Haar faces (OpenCV 4.x) + saliency + a centre prior.

Reads an sRGB uint8 image, returns a probability map at a reduced working resolution (``work``², float32 0–1)
that a subject covers each pixel, plus the subject boxes (full-resolution pixels, ``x0 y0 x1 y1``) that seed
GrabCut (classical segmenter) or prompt SAM2 (neural segmenter).

Cues, combined as a soft union so none of them is required:

* faces: OpenCV's bundled Haar cascades (frontal, profile both ways, cat faces). Each face adds a head ellipse
  and a body region below it (people are rarely only a face), so every person in the photo is covered, not
  only the most central one. OpenCV 5.x ships no cascades; then this cue is simply absent (logged once).
* saliency: spectral residual (Hou & Zhang, CVPR 2007) on a 64² thumbnail, plus colour distance (CIE Lab) to
  the image border colours — works for animals, statues, objects and illustrations with no face at all.
* centre prior: a broad Gaussian, since photographers frame their subject.

A subject that fills the frame (a close-up cat) defeats the border cue: only its eyes and nose stand out, so the
first GrabCut pass returns scattered features. :func:`is_scattered` spots that and :func:`fill_from_fragments`
re-seeds GrabCut from the features' convex hull, so the subject grows over the fur that shares its colours.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from relight_stream.log import warn_once

log = logging.getLogger(__name__)

FACE_RESOLUTION = 192
"""Side of the square the frontal Haar cascade scans: faces down to ~7 % of the frame are found."""
MIN_BORDER_SHARE = 0.3
SCATTERED_LARGEST, SCATTERED_SOLIDITY = 0.8, 0.6
"""A first GrabCut pass whose largest piece is under 80 % of it and that fills under 60 % of its hull is read as the
features of a subject that fills the frame (:func:`is_scattered`)."""
FILL_GROW = 0.15
"""How far (fraction of the side) a frame-filling subject may extend beyond the hull of its salient features."""
_CASCADES = {
    "frontal": "haarcascade_frontalface_default.xml",
    "profile": "haarcascade_profileface.xml",
    "cat": "haarcascade_frontalcatface.xml",
}


@dataclass
class SubjectPrior:
    """The prior for one image.

    Attributes:
        prob_hw: Subject probability at working resolution (float32 0–1, square ``work``²).
        faces: Face boxes in full-resolution pixels (``x0, y0, x1, y1``), most confident first.
        boxes: Subject boxes in full-resolution pixels: one per face-seeded person, or one salient box.
        box: The union box of all subjects (full-resolution pixels), the SAM2 prompt.
        cues: Which cues fired (``faces``, ``saliency``, ``centre``), for ``meta.json``.
    """

    prob_hw: np.ndarray
    faces: list[list[int]] = field(default_factory=list)
    boxes: list[list[int]] = field(default_factory=list)
    box: list[int] = field(default_factory=list)
    cues: dict[str, float] = field(default_factory=dict)


_LOCAL = threading.local()


def _cascade(name: str) -> cv2.CascadeClassifier | None:
    """This thread's cascade ``name`` (a CascadeClassifier keeps per-image state: one per thread, never shared)."""
    cache = _LOCAL.__dict__.setdefault("cascades", {})
    if name not in cache:
        cache[name] = _load_cascade(name)
    return cache[name]


def _load_cascade(name: str) -> cv2.CascadeClassifier | None:
    data = getattr(cv2, "data", None)
    root = getattr(data, "haarcascades", None)
    if root is None or not hasattr(cv2, "CascadeClassifier"):
        warn_once(log, f"OpenCV {cv2.__version__} ships no Haar cascades: the face cue of the subject prior is off")
        return None
    clf = cv2.CascadeClassifier(root + _CASCADES[name])
    if clf.empty():
        warn_once(log, f"Haar cascade {_CASCADES[name]} failed to load: the face cue is off")
        return None
    return clf


def detect_faces(gray_hw: np.ndarray, *, cascades: tuple[str, ...] = ("frontal", "profile", "cat")
                 ) -> list[tuple[int, int, int, int]]:
    """Face boxes ``(x, y, w, h)`` in the pixels of ``gray_hw`` (uint8), merged across cascades.

    The frontal cascade scans at :data:`FACE_RESOLUTION` (small faces in group photos); the profile (both
    ways) and cat cascades at two thirds of it. Each later cascade runs only when the earlier ones found nothing
    (a portrait costs one scan, ~15 ms; a photo without faces all three, ~40 ms).
    """
    found: list[tuple[int, int, int, int]] = []
    for name, frac, step in (("frontal", 1.0, 1.12), ("profile", 2 / 3, 1.2), ("cat", 2 / 3, 1.2)):
        clf = _cascade(name) if name in cascades else None
        if clf is None or found:
            continue
        n = max(32, int(round(FACE_RESOLUTION * frac)))
        img = cv2.resize(gray_hw, (n, n), interpolation=cv2.INTER_AREA)
        scale = gray_hw.shape[1] / n, gray_hw.shape[0] / n
        min_size = max(9, n // 14)
        views = [(img, False)] + ([(img[:, ::-1].copy(), True)] if name == "profile" else [])
        for view, flipped in views:
            rects = clf.detectMultiScale(view, scaleFactor=step, minNeighbors=4, minSize=(min_size, min_size))
            for x, y, w, h in np.asarray(rects, dtype=int).reshape(-1, 4):
                if flipped:
                    x = n - x - w
                found.append((int(x * scale[0]), int(y * scale[1]), int(w * scale[0]), int(h * scale[1])))
    # Non-maximum suppression by overlap: cascades fire on the same face.
    found.sort(key=lambda r: -r[2] * r[3])
    kept: list[tuple[int, int, int, int]] = []
    for r in found:
        if all(_iou(r, k) < 0.3 for k in kept):
            kept.append(r)
    return kept


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def spectral_residual(gray_hw: np.ndarray, *, size: int = 64) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) at ``size``², normalised to 0–1."""
    small = cv2.resize(gray_hw, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    spec = np.fft.fft2(small)
    log_amp = np.log(np.abs(spec) + 1e-6).astype(np.float32)
    residual = log_amp - cv2.blur(log_amp, (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spec)))) ** 2
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), size / 24)
    return _normalise(sal)


def border_contrast(lab_hw3: np.ndarray) -> np.ndarray:
    """Colour distance (CIE Lab) to the image border, robust to a subject touching one or two sides (0–1).

    Each side's band is summarised by two k-means colours (a colour covering under :data:`MIN_BORDER_SHARE` of
    the side is dropped: that is the subject crossing the edge); a pixel's distance to a side is the distance to
    the nearer of them, and the result is the mean of the two middle side distances (a soft median), so a
    person cut by the bottom edge or an animal touching one side does not count as "border coloured".
    """
    h, w = lab_hw3.shape[:2]
    b = max(2, h // 24)
    chans = [c.astype(np.float32) for c in cv2.split(lab_hw3)]  # per-channel planes: no (N, k, 3) temporaries
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 6, 1.0)
    cv2.setRNGSeed(0)  # k-means++ draws from this thread's RNG: reset it so the prior is reproducible
    dists = []
    for band in (lab_hw3[:b], lab_hw3[-b:], lab_hw3[:, :b], lab_hw3[:, -b:]):
        samples = band.reshape(-1, 3).astype(np.float32)
        _, labels, centres = cv2.kmeans(samples, 2, None, crit, 1, cv2.KMEANS_PP_CENTERS)
        share = np.bincount(labels.ravel(), minlength=2) / max(1, labels.size)
        centres = centres[share >= MIN_BORDER_SHARE]  # a subject crossing the edge is a minority of that side
        d = None
        for c in centres:
            dc = (chans[0] - c[0]) ** 2 + (chans[1] - c[1]) ** 2 + (chans[2] - c[2]) ** 2
            d = dc if d is None else np.minimum(d, dc)
        dists.append(np.sqrt(d))
    # the two middle ones of the four side distances, without a sort: the larger of the pair minima and the
    # smaller of the pair maxima (the extremes are the smaller minimum and the larger maximum)
    (d0, d1), (d2, d3) = dists[:2], dists[2:]
    mid_a = np.maximum(np.minimum(d0, d1), np.minimum(d2, d3))
    mid_b = np.minimum(np.maximum(d0, d1), np.maximum(d2, d3))
    dist = 0.5 * (mid_a + mid_b)
    return _normalise(cv2.GaussianBlur(dist, (0, 0), max(1.0, h / 64)))


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, 2), np.percentile(x, 99.5)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def centre_prior(n: int) -> np.ndarray:
    """A broad Gaussian centred slightly below the middle (subjects sit low in the frame), 0–1."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
    return np.exp(-(((xs - 0.5) / 0.35) ** 2 + ((ys - 0.55) / 0.4) ** 2) / 2).astype(np.float32)


def person_from_face(n: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Soft map (``n``², 0–1) of a head ellipse at the face box plus shoulders and torso below it.

    Only the middle of the face box is certain (1.0, GrabCut's definite foreground). The head ellipse around it
    (hair, ears) is probable (0.7): a detector box that already spans a whole head (a statue, a cartoon, a bald
    head) would otherwise make the sky above the head definite foreground.
    """
    out = np.zeros((n, n), np.float32)
    cx, cy = x + w / 2, y + h / 2
    cv2.ellipse(out, (int(cx), int(cy - 0.1 * h)), (int(0.75 * w), int(0.95 * h)), 0, 0, 360, 0.7, -1)
    cv2.ellipse(out, (int(cx), int(cy + 0.05 * h)), (int(0.32 * w), int(0.4 * h)), 0, 0, 360, 1.0, -1)
    neck = y + 1.1 * h
    body = np.array([[cx - 0.45 * w, neck], [cx + 0.45 * w, neck], [cx + 1.6 * w, neck + 1.2 * h],
                     [cx + 1.8 * w, n + 4 * h], [cx - 1.8 * w, n + 4 * h], [cx - 1.6 * w, neck + 1.2 * h]])
    cv2.fillPoly(out, [np.round(body).astype(np.int32)], 0.8)
    return cv2.GaussianBlur(out, (0, 0), max(1.0, w / 6))


def subject_prior(rgb_HW3: np.ndarray, *, work: int = 256,
                  cascades: tuple[str, ...] = ("frontal", "profile", "cat")) -> SubjectPrior:
    """Compute the subject prior of one sRGB uint8 image (any size) at ``work``² resolution.

    ``cascades`` picks the face detectors (``frontal``, ``profile``, ``cat``); SAM2 prompting uses the frontal one
    only (boxes need less than GrabCut's seeds, and the CPU prior must keep up with a GPU).
    """
    H, W = rgb_HW3.shape[:2]
    small = cv2.resize(rgb_HW3, (work, work), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    det = cv2.resize(rgb_HW3, (FACE_RESOLUTION, FACE_RESOLUTION), interpolation=cv2.INTER_AREA)
    fs = work / FACE_RESOLUTION
    det_gray = cv2.cvtColor(det, cv2.COLOR_RGB2GRAY)  # no histogram equalisation: flat backdrops skew it
    faces = [tuple(int(round(v * fs)) for v in f) for f in detect_faces(det_gray, cascades=cascades)]
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    spectral = cv2.resize(spectral_residual(gray), (work, work), interpolation=cv2.INTER_LINEAR)
    saliency = 0.35 * spectral + 0.65 * border_contrast(lab)
    centre = centre_prior(work)
    prob = saliency * (0.35 + 0.65 * centre)
    person_maps = [person_from_face(work, *f) for f in faces]
    if person_maps:
        # Faces dominate where they fire; saliency still adds objects the people hold or stand beside.
        prob = np.maximum(np.max(person_maps, axis=0), 0.6 * prob)
    prob = _normalise(prob) if prob.max() > 0 else prob
    sx, sy = W / work, H / work
    face_boxes = [[int(x * sx), int(y * sy), int((x + w) * sx), int((y + h) * sy)] for x, y, w, h in faces]
    boxes = [_box_of(pm > 0.3, sx, sy) for pm in person_maps]
    if not boxes:
        boxes = [_box_of(prob > 0.5, sx, sy)]
    boxes = [b for b in boxes if b]
    if boxes:
        arr = np.asarray(boxes)
        union = [int(arr[:, 0].min()), int(arr[:, 1].min()), int(arr[:, 2].max()), int(arr[:, 3].max())]
    else:
        union = [int(W * 0.2), int(H * 0.2), int(W * 0.8), int(H * 0.95)]
    cues = {"faces": float(len(faces)), "saliency_peak": float(saliency.max()), "centre": 1.0}
    return SubjectPrior(prob_hw=prob.astype(np.float32), faces=face_boxes, boxes=boxes or [union], box=union,
                        cues=cues)


def _box_of(region_hw: np.ndarray, sx: float, sy: float) -> list[int]:
    ys, xs = np.nonzero(region_hw)
    if len(xs) == 0:
        return []
    return [int(xs.min() * sx), int(ys.min() * sy), int((xs.max() + 1) * sx), int((ys.max() + 1) * sy)]


def fill_from_fragments(small_rgb: np.ndarray, fg_hw: np.ndarray, *, iters: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Second GrabCut pass for a subject that fills the frame (a close-up cat: only eyes and nose stand out).

    When the first pass returns scattered salient features with no main piece, they are read as parts of one
    subject: their convex hull is definite foreground, the hull grown by :data:`FILL_GROW` probable foreground and
    the rest probable background, so GrabCut extends the subject over the fur/skin/clothes that share its colours
    and stops at a background of other colours (none at all: the whole frame, which plausibility then rejects).

    Returns:
        The hard mask and the soft prior used to keep its components (both ``fg_hw``'s shape).
    """
    n = fg_hw.shape[0]
    hull = np.zeros(fg_hw.shape, np.uint8)
    pts = cv2.findNonZero(fg_hw.astype(np.uint8))
    if pts is None or len(pts) < 3:
        return fg_hw.astype(bool), fg_hw.astype(np.float32)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
    k = max(1, int(FILL_GROW * n))
    grown = cv2.dilate(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    gc = np.where(grown > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[hull > 0] = cv2.GC_FGD
    if (gc == cv2.GC_PR_BGD).sum() < 0.02 * gc.size:  # nothing left to learn a background from
        return grown.astype(bool), grown.astype(np.float32)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(small_rgb, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return fg, np.maximum(grown.astype(np.float32), 0.5 * fg)


def is_scattered(fg_hw: np.ndarray) -> bool:
    """Several pieces, no dominant one, filling little of their hull (the eyes and nose of a close-up face).

    Looser than the drop rule of :func:`plausibility`: it only decides whether :func:`fill_from_fragments` is tried.
    """
    hard = fg_hw.astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    if n <= 2:
        return False
    areas = stats[1:, cv2.CC_STAT_AREA]
    hull = cv2.contourArea(cv2.convexHull(cv2.findNonZero(hard)))
    return bool(areas.max() < SCATTERED_LARGEST * areas.sum() and hard.sum() < SCATTERED_SOLIDITY * max(hull, 1.0))
