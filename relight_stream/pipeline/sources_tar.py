"""WebDataset tar inputs: the samples of one tar from its headers only (RELIABILITY.md B1–B5).

Reads tar headers (local path or fsspec URL); returns :class:`~relight_stream.pipeline.sources.InputItem` s whose
bytes are read later by offset. Keys are parsed exactly as webdataset does (path up to the first dot of the
basename); a truncated tar keeps the samples before the cut and is appended to ``partial`` (B1); non-adjacent
members of one key (B2) and a duplicate ``key.ext`` (B3) raise ``ValueError``; a sample with no image member becomes
a ``missing_component`` item (B4).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter

from relight_stream.keys import sanitize_key
from relight_stream.pipeline.sources import IMAGE_EXTS, InputItem, _open, stat_times

log = logging.getLogger(__name__)


def _wds_split(name: str) -> tuple[str | None, str | None]:
    """webdataset's ``base_plus_ext``: key = path up to the first dot of the basename."""
    head, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None, None
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext


def _pick_image(members: dict[str, tarfile.TarInfo]) -> str | None:
    for ext in IMAGE_EXTS:  # a plain image extension first, then a dotted one ending in an image extension
        if ext in members:
            return ext
    cands = sorted(s for s in members if s.rsplit(".", 1)[-1] in IMAGE_EXTS)
    return cands[0] if cands else None


def scan_tar(url: str, ignored: Counter, partial: list[str]) -> list[InputItem]:
    """Items of one WebDataset tar, from its headers only (data is read later by offset)."""
    if "://" in url:
        import fsspec

        fs, p = fsspec.core.url_to_fs(url)
        total, times = int(fs.size(p)), {}
    else:
        st = os.stat(url)
        total, times = st.st_size, stat_times(st)
    items: list[InputItem] = []
    if total == 0:
        log.warning("input tar %s is empty", url)
        return items
    done: set[str] = set()
    cur_key: str | None = None
    cur: dict[str, tarfile.TarInfo] = {}

    def flush() -> None:
        if cur_key is None:
            return
        done.add(cur_key)
        key = sanitize_key(cur_key)
        suffix = _pick_image(cur)
        if suffix is None:
            items.append(InputItem(key, url, member=f"{cur_key}.*", **times, missing="missing_component"))
            return
        ti = cur[suffix]
        items.append(InputItem(key, url, member=ti.name, offset=ti.offset_data, size=ti.size, **times,
                               ext=suffix.rsplit(".", 1)[-1]))

    with _open(url) as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
            for ti in tf:
                if not ti.isreg():
                    continue
                if ti.offset_data + ti.size > total:
                    raise tarfile.ReadError(f"member {ti.name} is cut short")
                if ti.name.rsplit("/", 1)[-1].startswith("."):
                    ignored["hidden"] += 1
                    continue
                prefix, suffix = _wds_split(ti.name)
                if prefix is None:
                    ignored["no_extension"] += 1
                    continue
                suffix = suffix.lower()
                if prefix != cur_key:
                    flush()
                    if prefix in done:
                        raise ValueError(f"{url}: the members of key {prefix!r} are not adjacent ({ti.name})")
                    cur_key, cur = prefix, {}
                if suffix in cur:
                    raise ValueError(f"{url}: duplicate member {ti.name!r} in the tar")
                cur[suffix] = ti
            if total - tf.offset < 512:  # tarfile stops silently at a cut header: no end-of-archive block
                raise tarfile.ReadError(f"no end-of-archive marker after byte {tf.offset} of {total}")
        except (tarfile.ReadError, EOFError, OSError) as exc:
            log.error("input tar %s is truncated or unreadable (%s); keeping the samples before the cut", url, exc)
            partial.append(url)
            cur = {}  # the sample at the cut may be incomplete: drop it
            cur_key = None
    flush()
    return items
