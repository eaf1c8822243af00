"""Input discovery and the plan (RELIABILITY.md B1–B7, A15; ARCHITECTURE.md §4 keys)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fixtures_images as fx
from relight_stream.keys import KEY_RE
from relight_stream.pipeline.sources import discover, make_plan


def test_a15_ffhq_folder_keys_are_relative_paths_and_the_plan_is_sorted_and_chunked(tmp_path):
    fx.ffhq_tree(tmp_path, n=7, per_folder=4)
    plan = make_plan([str(tmp_path)], samples_per_shard=3)
    keys = [it.key for u in plan.units for it in u.items]
    assert keys[:2] == ["00000/00000", "00000/00001"] and keys[-1] == "01000/00006"
    assert keys == sorted(keys) and plan.num_inputs == 7
    assert [u.name for u in plan.units] == ["shard-000000", "shard-000001", "shard-000002"]
    assert [len(u.items) for u in plan.units] == [3, 3, 1]
    # shard k -> rank k mod world; every unit exactly once whatever the world size
    for world in (1, 2, 3):
        got = sorted(u.index for r in range(world) for u in plan.for_rank(r, world))
        assert got == [0, 1, 2]
    assert [u.index for u in plan.for_rank(1, 2)] == [1]


def test_b6_no_inputs_is_an_error_before_anything_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no inputs found"):
        discover([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="matches nothing"):
        discover([str(tmp_path / "*.tar")])
    fx.write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(ValueError, match="no inputs found"):
        discover([str(tmp_path / "empty.tar")])
    with pytest.raises(ValueError, match="input not found"):
        discover([str(tmp_path / "nope")])


def test_b7_hidden_files_and_symlinks_are_ignored_and_odd_names_get_stable_keys(tmp_path):
    png = fx.png_bytes()
    fx.write_tree(tmp_path, {"a.png": png, "._a.png": png, ".DS_Store": b"x", "my photo.v2.PNG": png,
                             "café/été.jpg": fx.jpeg_bytes(), "notes.txt": b"hi"})
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    items, ignored, _ = discover([str(tmp_path)])
    keys = [it.key for it in items]
    assert ignored == {"hidden": 2, "not_image": 1, "symlink": 1}
    assert len(keys) == 3 and all(KEY_RE.match(k) and "." not in k for k in keys)
    assert "a" in keys and any(k.startswith("my_photo_v2-") for k in keys)
    assert {it.ext for it in items} == {"png", "jpg"}  # extensions normalised to lowercase
    assert keys == [it.key for it in discover([str(tmp_path)])[0]]  # stable


def test_csv_and_parquet_lists_as_the_reference_pipeline_writes_them(tmp_path):
    fx.ffhq_tree(tmp_path / "ffhq", n=3)
    lst = tmp_path / "splits" / "train_images.csv"
    lst.parent.mkdir()
    paths = [str(tmp_path / "ffhq" / "00000" / f"{i:05d}.png") for i in range(3)]
    lst.write_text("image_path,lighting_score\n" + "".join(f"{p},{0.2 + i / 10}\n" for i, p in enumerate(paths))
                   + f"{tmp_path}/ffhq/00000/gone.png,0.1\n")
    items, _, _ = discover([str(lst)])
    assert [it.key for it in items] == ["00000/00000", "00000/00001", "00000/00002", "00000/gone"]
    assert items[1].extra == {"lighting_score": pytest.approx(0.3)} and items[3].missing == "missing_file"
    pq.write_table(pa.table({"image_path": ["ffhq/00000/00001.png"], "key": ["custom/k"]}), tmp_path / "l.parquet")
    (item,) = discover([str(tmp_path / "l.parquet")])[0]
    assert item.key == "custom/k" and item.read() == (tmp_path / "ffhq/00000/00001.png").read_bytes()
    (tmp_path / "bad.csv").write_text("path\nx.png\n")
    with pytest.raises(ValueError, match="image_path"):
        discover([str(tmp_path / "bad.csv")])


def _tar_members(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        out += [(f"{i:06d}.jpg", fx.jpeg_bytes(fx.noise(64, 64, seed=i))), (f"{i:06d}.json", b"{}")]
    return out


def test_tars_with_brace_patterns_and_fsspec_urls(tmp_path):
    import fsspec

    for s in range(2):
        fx.write_tar(tmp_path / f"in-{s:03d}.tar", _tar_members(3, start=3 * s))
    items, _, partial = discover([str(tmp_path / "in-{000..001}.tar")])
    assert [it.key for it in items] == [f"{i:06d}" for i in range(6)] and not partial
    assert items[4].read() == fx.jpeg_bytes(fx.noise(64, 64, seed=4)) and items[4].member == "000004.jpg"
    fs = fsspec.filesystem("memory")
    fs.pipe("/wds/in-000.tar", (tmp_path / "in-000.tar").read_bytes())
    (it0, *_), _, _ = discover(["memory://wds/in-{000..000}.tar"])
    assert it0.key == "000000" and it0.read() == items[0].read()


def test_b1_truncated_tar_keeps_the_samples_before_the_cut(tmp_path):
    data = open(fx.write_tar(tmp_path / "full.tar", _tar_members(8)), "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[: 1024 * 10])  # dd bs=1024 count=10
    items, _, partial = discover([str(tmp_path / "cut.tar")])
    assert partial == [str(tmp_path / "cut.tar")]
    assert 0 < len(items) < 8 and all(len(it.read()) == it.size for it in items)
    plan = make_plan([str(tmp_path / "cut.tar")], samples_per_shard=100)
    assert plan.units[0].partial_inputs == [str(tmp_path / "cut.tar")]


def test_b2_b3_non_adjacent_or_duplicate_members_are_errors_naming_the_tar(tmp_path):
    a, b = fx.jpeg_bytes(), b"{}"
    fx.write_tar(tmp_path / "split.tar", [("k1.jpg", a), ("k2.jpg", a), ("k1.json", b)])
    with pytest.raises(ValueError, match=r"split\.tar.*'k1'.*not adjacent"):
        discover([str(tmp_path / "split.tar")])
    fx.write_tar(tmp_path / "dup.tar", [("k1.jpg", a), ("k1.jpg", a)])
    with pytest.raises(ValueError, match=r"dup\.tar.*duplicate member 'k1\.jpg'"):
        discover([str(tmp_path / "dup.tar")])


def test_b4_b5_missing_image_member_dotted_keys_and_uppercase_extensions(tmp_path):
    a = fx.jpeg_bytes()
    fx.write_tar(tmp_path / "t.tar", [("dir/a.b.JPEG", a), ("dir/a.b.json", b"{}"), ("only.json", b"{}"),
                                      ("up.PNG", fx.png_bytes())])
    items, _, _ = discover([str(tmp_path / "t.tar")])
    by = {it.key: it for it in items}
    assert set(by) == {"dir/a", "only", "up"}  # webdataset's key: up to the first dot of the basename
    assert by["dir/a"].member == "dir/a.b.JPEG" and by["dir/a"].ext == "jpeg"
    assert by["only"].missing == "missing_component"
    assert by["up"].ext == "png"


def test_the_same_key_from_two_inputs_is_an_error(tmp_path):
    fx.write_tree(tmp_path / "a", {"x.png": fx.png_bytes()})
    fx.write_tree(tmp_path / "b", {"x.jpg": fx.jpeg_bytes()})
    with pytest.raises(ValueError, match="duplicate key 'x'"):
        discover([str(tmp_path / "a"), str(tmp_path / "b")])
