"""Neuroglancer precomputed annotation layers: write_annotations / read_annotations round trips
(points, lines, boxes, ellipsoids; unsharded and sharded; streamed in chunks), the spatial
index's levels and limit, the relationship index, Neuroglancer's own AnnotationWriter and
CloudVolume's reader as independent peers, Neuroglancer drawing our points over an image in
headless Chromium, bad input and damaged files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate import Box
from voxgate.errors import CorruptChunkError, InvalidRequestError, RemoteNotFoundError
from voxgate.formats.annotation import (
    compressed_morton_code,
    read_annotations,
    read_related,
    write_annotations,
)
from voxgate.formats.annotation.encoding import morton_to_cells
from voxgate.storage.sharding import ShardedStore, ShardingSpec

from ..static_http import serve_directory

VOXEL = (40.0, 8.0, 4.0)  # z, y, x nm
ALL_TYPES = {"u8": "uint8", "i8": "int8", "u16": "uint16", "i16": "int16", "u32": "uint32",
             "i32": "int32", "f32": "float32"}


def points_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Points with one property of every type and two relationships (a scalar segment id,
    0 meaning none, and a list of segment ids per row)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "z": rng.integers(0, 30, n), "y": rng.uniform(0, 120, n).round(2),
        "x": rng.uniform(5, 250, n).round(2),
        "id": rng.choice(2**40, n, replace=False).astype(np.uint64) + np.uint64(2**60),
    })
    for column, dtype in ALL_TYPES.items():
        info = np.iinfo(dtype) if dtype != "float32" else None
        table[column] = (rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
                         if info else rng.normal(size=n).astype(np.float32))
    table["colour"] = [f"#{v:06x}" for v in rng.integers(0, 2**24, n)]
    table["tint"] = [f"#{v:08x}" for v in rng.integers(0, 2**32, n)]
    table["pre_id"] = rng.integers(0, 12, n).astype(np.uint64)
    table["partners"] = pd.Series([list(map(int, rng.choice(50, k, replace=False) + 2**62))
                                   for k in rng.integers(0, 4, n)], dtype=object)
    return table


def expected(table: pd.DataFrame) -> pd.DataFrame:
    """What read_annotations gives back: sorted by id, coordinates as float32."""
    out = table.sort_values("id").reset_index(drop=True)
    for c in ("z", "y", "x", "z2", "y2", "x2", "rz", "ry", "rx"):
        if c in out:
            out[c] = out[c].astype(np.float32)
    return out


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert sorted(got.columns) == sorted(want.columns)
    assert len(got) == len(want)
    for c in want.columns:
        a, b = got[c].tolist(), want[c].tolist()
        assert a == b, (c, [(x, y) for x, y in zip(a, b, strict=True) if x != y][:5])


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_points_with_properties_and_relationships_round_trip(tmp_path: Path,
                                                             sharded: bool) -> None:
    table = points_table()
    url = f"precomputed://{tmp_path}/ann"
    write_annotations(url, table, voxel_size=VOXEL, sharded=sharded, limit=60)
    got = read_annotations(url)
    assert_same(got, expected(table))
    assert got["id"].dtype == np.uint64 and got["u16"].dtype == np.uint16
    assert got["pre_id"].dtype == np.uint64  # one id per row at most: a scalar column
    info = json.loads((tmp_path / "ann/info").read_text())
    assert info["@type"] == "neuroglancer_annotations_v1"
    assert info["annotation_type"] == "POINT"
    assert info["dimensions"] == {"x": [4e-9, "m"], "y": [8e-9, "m"], "z": [4e-8, "m"]}
    assert info["lower_bound"] == [float(np.floor(table[a].min())) for a in "xyz"]
    assert info["upper_bound"] == [float(np.floor(table[a].max())) + 1 for a in "xyz"]
    # stored by alignment: the 4-byte types, then 2-byte, then 1-byte (Neuroglancer's order)
    assert [p["id"] for p in info["properties"]] == \
        ["u32", "i32", "f32", "u16", "i16", "u8", "i8", "colour", "tint"]
    assert [(r["id"], r["key"]) for r in info["relationships"]] == \
        [("pre_id", "rel_pre_id"), ("partners", "rel_partners")]
    assert len(info["spatial"]) > 1
    for entry in (info["by_id"], *info["relationships"], *info["spatial"]):
        assert ("sharding" in entry) == sharded
        if sharded:
            assert not list((tmp_path / "ann" / entry["key"]).glob("[0-9]*_*"))
            assert list((tmp_path / "ann" / entry["key"]).glob("*.shard"))
    # a subset by id, absent ids left out
    some = [int(i) for i in table["id"][:5]] + [7]
    assert_same(read_annotations(url, ids=some), expected(table[:5]))


def geometry_table(kind: str, n: int = 150, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = np.stack([rng.uniform(0, 20, n), rng.uniform(0, 90, n), rng.uniform(0, 90, n)], 1)
    other = (rng.uniform(0.5, 4, (n, 3)) if kind == "ellipsoid"
             else start + rng.uniform(-15, 15, (n, 3)))
    if kind != "ellipsoid":
        other = np.clip(other, 0, None)
    names = ("rz", "ry", "rx") if kind == "ellipsoid" else ("z2", "y2", "x2")
    table = pd.DataFrame({"z": start[:, 0], "y": start[:, 1], "x": start[:, 2]})
    for i, c in enumerate(names):
        table[c] = other[:, i]
    table["score"] = rng.random(n).astype(np.float32)
    table["segment_id"] = rng.integers(1, 9, n)
    return table


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
@pytest.mark.parametrize("kind", ["line", "box", "ellipsoid"])
def test_lines_boxes_and_ellipsoids_round_trip(tmp_path: Path, kind: str,
                                               sharded: bool) -> None:
    table = geometry_table(kind)
    write_annotations(tmp_path, table, voxel_size=VOXEL, kind=kind, sharded=sharded, limit=20)
    want = expected(table.assign(id=np.arange(1, len(table) + 1, dtype=np.uint64)))
    want["segment_id"] = want["segment_id"].astype(np.uint64)
    got = read_annotations(tmp_path)
    assert_same(got, want)
    info = json.loads((tmp_path / "info").read_text())
    assert info["annotation_type"] == {"line": "LINE", "box": "AXIS_ALIGNED_BOUNDING_BOX",
                                       "ellipsoid": "ELLIPSOID"}[kind]
    # the spatial index: every annotation at exactly one level, in every cell it meets there
    levels = spatial_cells(tmp_path)
    level_of: dict[int, int] = {}
    for level, cells in enumerate(levels):
        for ids in cells.values():
            assert len(ids) <= 20
            for i in ids:
                assert level_of.setdefault(i, level) == level
    assert sorted(level_of) == list(range(1, len(table) + 1))
    lower = np.array(info["lower_bound"])
    for level, cells in enumerate(levels):
        chunk = np.array(info["spatial"][level]["chunk_size"])
        grid = np.array(info["spatial"][level]["grid_shape"])
        for _, row in got.iterrows():
            if level_of[int(row["id"])] != level:
                continue
            a = np.array([row["x"], row["y"], row["z"]])
            b = np.array([row[c] for c in (("rx", "ry", "rz") if kind == "ellipsoid"
                                           else ("x2", "y2", "z2"))])
            lo, hi = (a - np.abs(b), a + np.abs(b)) if kind == "ellipsoid" else \
                (np.minimum(a, b), np.maximum(a, b))
            first = np.clip(np.floor((lo - lower) / chunk), 0, grid - 1).astype(int)
            last = np.clip(np.floor((hi - lower) / chunk), 0, grid - 1).astype(int)
            holding = {c for c, ids in cells.items() if int(row["id"]) in ids}
            meets = {(x, y, z) for x in range(first[0], last[0] + 1)
                     for y in range(first[1], last[1] + 1) for z in range(first[2], last[2] + 1)}
            assert holding == meets


def spatial_cells(path: Path) -> list[dict[tuple[int, ...], list[int]]]:
    """Every cell of every spatial level: {cell (x, y, z): annotation ids}, read from the
    files directly (unsharded names, or shard keys decoded from the Morton code)."""
    info = json.loads((path / "info").read_text())
    out = []
    for entry in info["spatial"]:
        cells: dict[tuple[int, ...], list[int]] = {}
        directory = path / entry["key"]
        if "sharding" in entry:
            store = ShardedStore(str(directory), ShardingSpec.from_json(entry["sharding"], ""))
            keys = store.keys()
            values = store.get_values(keys)
            for key, cell in zip(keys, morton_to_cells(np.array(keys, np.uint64),
                                                       entry["grid_shape"]), strict=True):
                cells[tuple(int(v) for v in cell)] = decode_ids(values[key])
        elif directory.exists():
            for f in directory.iterdir():
                cells[tuple(int(v) for v in f.name.split("_"))] = decode_ids(f.read_bytes())
        out.append(cells)
    return out


def decode_ids(data: bytes | None) -> list[int]:
    assert data is not None
    count = int.from_bytes(data[:8], "little")
    return np.frombuffer(data[len(data) - 8 * count:], "<u8").astype(int).tolist()


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_spatial_index_cells_stay_within_their_limit(tmp_path: Path, sharded: bool) -> None:
    rng = np.random.default_rng(5)
    # a dense cluster and a sparse background: the cluster forces many levels
    n1, n2 = 6000, 2000
    table = pd.DataFrame({
        "z": np.concatenate([rng.normal(40, 2, n1), rng.uniform(0, 100, n2)]).clip(0, 99),
        "y": np.concatenate([rng.normal(300, 5, n1), rng.uniform(0, 1000, n2)]).clip(0, 999),
        "x": np.concatenate([rng.normal(700, 5, n1), rng.uniform(0, 1000, n2)]).clip(0, 999)})
    limit = 250
    write_annotations(tmp_path, table, voxel_size=VOXEL, sharded=sharded, limit=limit)
    info = json.loads((tmp_path / "info").read_text())
    levels = spatial_cells(tmp_path)
    assert len(levels) >= 4
    seen: list[int] = []
    lower, upper = np.array(info["lower_bound"]), np.array(info["upper_bound"])
    positions = table[["x", "y", "z"]].to_numpy(np.float32).astype(np.float64)
    previous = None
    for entry, cells in zip(info["spatial"], levels, strict=True):
        grid, chunk = np.array(entry["grid_shape"]), np.array(entry["chunk_size"])
        assert entry["limit"] == limit
        np.testing.assert_allclose(grid * chunk, upper - lower)  # the cells cover the bounds
        if previous is not None:  # each level's cells split the coarser ones evenly
            ratio = previous / chunk
            assert set(ratio.tolist()) <= {1.0, 2.0}, ratio
        previous = chunk
        for cell, ids in cells.items():
            assert len(ids) <= limit
            assert all(0 <= c < g for c, g in zip(cell, grid, strict=True))
            pos = positions[np.array(ids) - 1]
            lo = lower + np.array(cell) * chunk
            assert ((pos >= lo) & (pos <= lo + chunk)).all()
            seen += ids
    # every annotation in exactly one cell of one level
    assert sorted(seen) == list(range(1, len(table) + 1))
    # the coarse level is a uniform subsample: the fullest cell is filled to the limit
    assert max(len(v) for v in levels[0].values()) == limit


def test_streamed_chunks_write_the_same_files(tmp_path: Path) -> None:
    table = points_table(1000, seed=3)
    write_annotations(tmp_path / "whole", table, voxel_size=VOXEL, sharded=True, limit=100)
    chunks = (table[i:i + 130] for i in range(0, len(table), 130))  # a generator: streamed
    write_annotations(tmp_path / "chunks", chunks, voxel_size=VOXEL, sharded=True, limit=100)
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*")
                   if p.is_file())
    assert len(files) > 5
    for f in files:
        assert (tmp_path / "chunks" / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f
    # default ids count on across chunks
    plain = table[["z", "y", "x", "u8"]]
    write_annotations(tmp_path / "ids", (plain[i:i + 300] for i in range(0, 1000, 300)),
                      voxel_size=VOXEL)
    assert read_annotations(tmp_path / "ids")["id"].tolist() == list(range(1, 1001))


def test_relationship_index_maps_segments_to_their_annotations(tmp_path: Path) -> None:
    table = points_table(300, seed=7)
    for sharded in (False, True):
        url = str(tmp_path / f"s{sharded}")
        write_annotations(url, table, voxel_size=VOXEL, sharded=sharded)
        for seg in (1, 5, 11):
            got = read_related(url, "pre_id", seg)
            assert sorted(got["id"].tolist()) == sorted(table["id"][table["pre_id"] == seg])
            assert got.columns[:4].tolist() == ["id", "z", "y", "x"]
        for seg in (2**62 + 3, 2**62 + 40):
            rows = table[[seg in p for p in table["partners"]]]
            got = read_related(url, "partners", seg)
            assert got["id"].tolist() == sorted(rows["id"].tolist()) and len(rows)
            assert_same(got, expected(rows[got.columns.tolist()]))
        assert read_related(url, "pre_id", 0).empty  # 0 means "no segment": not indexed
        assert read_related(url, "pre_id", 999).empty
        with pytest.raises(InvalidRequestError, match="no relationship 'post_id'"):
            read_related(url, "post_id", 1)


def test_a_box_reads_only_the_cells_that_meet_it(tmp_path: Path) -> None:
    table = points_table(2000, seed=9)
    for sharded in (False, True):
        root = tmp_path / f"s{sharded}"
        write_annotations(root, table, voxel_size=VOXEL, sharded=sharded, limit=40)
        box = Box((5, 20, 60), (17, 70, 140))
        inside = table[(table.z >= 5) & (table.z < 17) & (table.y >= 20) & (table.y < 70)
                       & (table.x >= 60) & (table.x < 140)]
        assert 20 < len(inside) < len(table) / 4
        if not sharded:  # remove every cell that does not meet the box: it still reads
            info = json.loads((root / "info").read_text())
            lower = np.array(info["lower_bound"])
            removed = 0
            for entry in info["spatial"]:
                chunk = np.array(entry["chunk_size"])
                for f in (root / entry["key"]).iterdir():
                    lo = lower + np.array([int(v) for v in f.name.split("_")]) * chunk
                    hi = lo + chunk
                    if (hi < np.array(box.start[::-1])).any() or \
                            (lo > np.array(box.stop[::-1])).any():
                        f.unlink()
                        removed += 1
            assert removed > 10
        assert_same(read_annotations(root, box=box), expected(inside))
        assert read_annotations(root, box=Box((40, 0, 0), (50, 10, 10))).empty


def test_compressed_morton_code_matches_cloudvolume() -> None:
    from cloudvolume.datasource.precomputed.common import compressed_morton_code as cv_code

    rng = np.random.default_rng(2)
    for grid in ([1, 1, 1], [4, 1, 2], [8, 8, 8], [16, 3, 1], [1000, 5, 70]):
        cells = np.stack([rng.integers(0, g, 50) for g in grid], axis=1)
        ours = compressed_morton_code(cells, grid)
        theirs = np.asarray(cv_code(cells, grid), dtype=np.uint64).reshape(-1)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(morton_to_cells(ours, grid), cells)


# -- Neuroglancer's own writer, CloudVolume's reader ----------------------------------------------
def test_we_read_what_neuroglancers_annotation_writer_writes(tmp_path: Path) -> None:
    import neuroglancer
    from neuroglancer.write_annotations import AnnotationWriter

    space = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                         scales=list(VOXEL[::-1]))
    props = [neuroglancer.AnnotationPropertySpec(id="score", type="float32"),
             neuroglancer.AnnotationPropertySpec(id="kind", type="uint16"),
             neuroglancer.AnnotationPropertySpec(id="flag", type="uint8"),
             neuroglancer.AnnotationPropertySpec(id="colour", type="rgb")]
    table = points_table(120, seed=11)[["z", "y", "x", "f32", "u16", "u8", "colour", "pre_id",
                                        "partners"]]
    table = table.rename(columns={"f32": "score", "u16": "kind", "u8": "flag"})
    writer = AnnotationWriter(space, "point", relationships=["pre_id", "partners"],
                              properties=props)
    for i, row in enumerate(table.itertuples()):
        writer.add_point([row.x, row.y, row.z], id=i + 10, score=row.score, kind=row.kind,
                         flag=row.flag, colour=row.colour,
                         pre_id=[row.pre_id] if row.pre_id else [], partners=row.partners)
    writer.write(tmp_path / "ng")
    got = read_annotations(tmp_path / "ng")
    want = expected(table.assign(id=np.arange(10, 10 + len(table), dtype=np.uint64)))
    assert_same(got, want)
    assert read_related(tmp_path / "ng", "pre_id", 4)["id"].tolist() == \
        want["id"][want["pre_id"] == 4].tolist()
    # its one spatial cell, read by box
    box = Box((0, 0, 0), (15, 60, 300))
    assert_same(read_annotations(tmp_path / "ng", box=box),
                want[(want.z < 15) & (want.y < 60)].reset_index(drop=True))

    # lines and ellipsoids too
    for kind, add in (("line", "add_line"), ("ellipsoid", "add_ellipsoid")):
        t = geometry_table(kind, 40)
        w = AnnotationWriter(space, kind)
        other = ("x2", "y2", "z2") if kind == "line" else ("rx", "ry", "rz")
        for i, row in t.iterrows():
            getattr(w, add)([row.x, row.y, row.z], [row[c] for c in other], id=int(i) + 1)
        w.write(tmp_path / kind)
        want_k = expected(t.drop(columns=["score", "segment_id"]).assign(
            id=np.arange(1, 41, dtype=np.uint64)))
        assert_same(read_annotations(tmp_path / kind), want_k)


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_cloudvolume_reads_our_annotation_layers(tmp_path: Path, sharded: bool) -> None:
    from cloudvolume.cloudvolume import from_cloudpath

    table = points_table(500, seed=13)[["z", "y", "x", "id", "f32", "u16", "u8", "pre_id"]]
    write_annotations(tmp_path, table, voxel_size=VOXEL, sharded=sharded, limit=50)
    source = from_cloudpath(f"precomputed://file://{tmp_path}")
    assert source.meta.annotation_type == "POINT"
    # by id: geometry (x, y, z), properties, relationships
    ids = [int(i) for i in table["id"][:20]]
    by_id = source.get_by_id(ids)
    for i, row in zip(ids, table[:20].itertuples(), strict=True):
        np.testing.assert_array_equal(by_id[i].geometry[0],
                                      np.float32([row.x, row.y, row.z]))
        assert by_id[i].properties["f32"][0] == row.f32
        assert by_id[i].properties["u16"][0] == row.u16 and by_id[i].properties["u8"][0] == row.u8
        assert by_id[i].relationships["rel_pre_id"].tolist() == ([row.pre_id] if row.pre_id
                                                                 else [])
    # the spatial index: every level together holds every annotation once.  CloudVolume's
    # unsharded reader fails on a cell without a file (Neuroglancer takes it as empty, and
    # Neuroglancer refuses a list of 0 annotations, so empty cells have no file): there it
    # reads the levels whose every cell has annotations
    levels = json.loads((tmp_path / "info").read_text())["spatial"]
    cells = spatial_cells(tmp_path)
    readable = [m for m, entry in enumerate(levels)
                if sharded or len(cells[m]) == int(np.prod(entry["grid_shape"]))]
    assert 0 in readable and (len(readable) == len(levels) or not sharded)
    everything = slice(None), slice(None), slice(None)
    for m in readable:
        got_ids = source.get_by_bbox(everything, mip=m).ids.tolist()
        assert sorted(got_ids) == sorted(i for ids in cells[m].values() for i in ids)
    if sharded:
        found = [i for m in readable for i in source.get_by_bbox(everything, mip=m).ids.tolist()]
        assert sorted(found) == sorted(table["id"].tolist())
    # (CloudVolume's get_all reads only the finest level, which holds only part of them)
    # the relationship index
    got = source.get_by_relationship("pre_id", 3)
    assert sorted(got.ids.tolist()) == sorted(table["id"][table["pre_id"] == 3].tolist())


# -- over HTTP ------------------------------------------------------------------------------------
def test_read_over_http(tmp_path: Path) -> None:
    table = points_table(300, seed=17)
    write_annotations(tmp_path / "plain", table, voxel_size=VOXEL, limit=30)
    write_annotations(tmp_path / "sharded", table, voxel_size=VOXEL, limit=30, sharded=True)
    with serve_directory(tmp_path) as base:
        for name in ("plain", "sharded"):
            # an unsharded by-id index cannot be listed over HTTP: read from the spatial index
            assert_same(read_annotations(f"precomputed://{base}/{name}"), expected(table))
            box = Box((0, 0, 0), (10, 50, 100))
            assert_same(read_annotations(f"{base}/{name}", box=box),
                        expected(table[(table.z < 10) & (table.y < 50) & (table.x < 100)]))
        with pytest.raises(InvalidRequestError, match="read-only"):
            write_annotations(f"{base}/new", table, voxel_size=VOXEL)


# -- Neuroglancer draws them ----------------------------------------------------------------------
CYAN_POINTS = "void main() { setColor(vec3(0.0, 1.0, 1.0)); setPointMarkerSize(12.0); }"


@pytest.fixture(scope="module")
def drawn_layers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, pd.DataFrame]]:
    """A dark image layer with two annotation layers of the same points (unsharded and
    sharded) in sub-directories, served as plain files."""
    root = tmp_path_factory.mktemp("drawn")
    image = voxgate.create(f"precomputed://file://{root}/em", shape=(8, 128, 128),
                           chunks=(8, 64, 64), dtype="uint8", voxel_size=(8, 8, 8))
    image[:] = np.full((8, 128, 128), 40, np.uint8)
    rng = np.random.default_rng(21)
    n = 300
    table = pd.DataFrame({"z": np.full(n, 4), "y": rng.uniform(10, 118, n),
                          "x": rng.uniform(10, 60, n)})  # the left half only
    write_annotations(f"{root}/em/points", table, voxel_size=(8, 8, 8), limit=40)
    write_annotations(f"{root}/em/sharded", table, voxel_size=(8, 8, 8), limit=40,
                      sharded=True)
    with serve_directory(root) as base:
        yield f"{base}/em", table


@pytest.mark.parametrize("name", ["points", "sharded"])
def test_neuroglancer_draws_our_points_over_an_image(drawn_layers: tuple[str, pd.DataFrame],
                                                     name: str) -> None:
    import neuroglancer

    from ..relay.browser import neuroglancer_browser

    base, _ = drawn_layers
    with neuroglancer_browser() as browser:
        def draw(with_points: bool, save_as: str) -> np.ndarray:
            with browser.viewer.txn() as s:
                s.layers.clear()
                s.layers["em"] = neuroglancer.ImageLayer(source=f"precomputed://{base}")
                if with_points:
                    s.layers["syn"] = neuroglancer.AnnotationLayer(
                        source=f"precomputed://{base}/{name}", shader=CYAN_POINTS)
                s.layout = "xy"
                s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                            scales=[8, 8, 8])
                s.position = [64, 64, 4.5]
                s.cross_section_scale = 0.3
            img = browser.screenshot(save_as=save_as)
            return (img[..., 1] > 150) & (img[..., 2] > 150) & (img[..., 0] < 100)

        empty = draw(False, f"annotations-{name}-none.png")
        before = len(browser.responses)
        drawn = draw(True, f"annotations-{name}.png")
        mine = browser.responses_since(before, f"{base}/{name}/")
        assert any(u.endswith(f"/{name}/info") for u, _ in mine), mine
        assert any("/spatial" in u for u, _ in mine), mine
        assert all(st in (200, 206) for _, st in mine), mine
        new = drawn & ~empty
        assert empty.sum() == 0  # the grey image alone has no cyan
        assert new.sum() > 500, new.sum()
        # the points lie in the left half of the volume: so do the cyan pixels
        cols = np.flatnonzero(new.any(axis=0))
        assert cols.mean() < new.shape[1] / 2, cols.mean()
        assert not browser.errors, browser.errors


# -- bad input, damaged files ---------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.drop(columns=["y"]), "y missing"),
    (lambda t: t.assign(x=["a"] * len(t)), "'x' must hold numbers"),
    (lambda t: t.assign(z=[np.nan] + [1.0] * (len(t) - 1)), "finite"),
    (lambda t: t.assign(id=np.arange(len(t)) - 1), "negative id"),
    (lambda t: t.assign(id=np.zeros(len(t), np.uint64)), "unique"),
    (lambda t: t.assign(id=np.arange(len(t), dtype=float)), "'id' must hold integers"),
    (lambda t: t.assign(label=["soma"] * len(t)), "no property type stores"),
    (lambda t: t.assign(Score=np.ones(len(t))), "must match"),
    (lambda t: t.assign(pre_id=[-1] * len(t)), "negative segment id"),
    (lambda t: t.assign(partners=[[1, "x"]] * len(t)), "uint64 segment id"),
    (lambda t: t.assign(tint=["#ff0000", "red", "#00ff00"]), "'red' is not a colour"),
])
def test_bad_tables_are_refused(tmp_path: Path, change: Any, message: str) -> None:
    table = pd.DataFrame({"z": [1.0, 2.0, 3.0], "y": [4.0, 5.0, 6.0], "x": [7.0, 8.0, 9.0],
                          "tint": ["#ff0000"] * 3})
    with pytest.raises(InvalidRequestError, match=message):
        write_annotations(tmp_path, change(table), voxel_size=VOXEL)
    assert not (tmp_path / "info").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    table = pd.DataFrame({"z": [1], "y": [2], "x": [3], "v": [4]})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"properties": [{"id": "v", "type": "uint64"}]}, "has type 'uint64'"),
        ({"properties": [{"id": "v", "type": "complex"}]}, "the types are"),
        ({"properties": ["w"]}, "not a column"),
        ({"properties": [{"id": "v", "type": "uint8", "enum_values": [1]}]}, "go together"),
        ({"kind": "sphere"}, "kind must be one of"),
        ({"limit": 0}, "limit must be a positive integer"),
        ({"voxel_size": (4, 4)}, "3 entries"),
        ({"relationships": ["nope"]}, "not a column"),
        ({"sharded": "yes"}, "sharded must be True or False"),
        ({"bounds": Box((0, 0, 0), (2, 2, 2))}, "outside bounds"),
    ]
    for kwargs, message in cases:
        args = {"voxel_size": VOXEL, **kwargs}
        with pytest.raises(InvalidRequestError, match=message):
            write_annotations(tmp_path / "a", table, **args)
    with pytest.raises(InvalidRequestError, match=r"values 300\.\.300, outside uint8"):
        write_annotations(tmp_path / "a", table.assign(v=300), voxel_size=VOXEL,
                          properties=[{"id": "v", "type": "uint8"}])
    with pytest.raises(InvalidRequestError, match="DataFrame"):
        write_annotations(tmp_path / "a", {"z": [1]}, voxel_size=VOXEL)
    with pytest.raises(InvalidRequestError, match="zarr://"):
        write_annotations(f"zarr://{tmp_path}/a", table, voxel_size=VOXEL)
    with pytest.raises(InvalidRequestError, match="same columns as the first"):
        write_annotations(tmp_path / "a", [table, table.drop(columns=["v"])], voxel_size=VOXEL)


def test_not_an_annotation_directory(tmp_path: Path) -> None:
    voxgate.create(f"precomputed://{tmp_path}/em", shape=(4, 8, 8), dtype="uint8",
                   chunks=(4, 8, 8), voxel_size=VOXEL)
    table = pd.DataFrame({"z": [1], "y": [2], "x": [3]})
    with pytest.raises(InvalidRequestError, match="not an annotation layer"):
        read_annotations(f"precomputed://{tmp_path}/em")
    with pytest.raises(InvalidRequestError, match="not an annotation layer"):
        write_annotations(f"precomputed://{tmp_path}/em", table, voxel_size=VOXEL)
    with pytest.raises(RemoteNotFoundError):
        read_annotations(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/info").write_text("{not json")
    with pytest.raises(CorruptChunkError, match="not valid JSON"):
        read_annotations(tmp_path / "bad")


def test_rewriting_a_layer_replaces_its_indexes(tmp_path: Path) -> None:
    table = points_table(200, seed=23)
    write_annotations(tmp_path, table, voxel_size=VOXEL, limit=10)
    write_annotations(tmp_path, table[:50], voxel_size=VOXEL, limit=100, sharded=True)
    assert_same(read_annotations(tmp_path), expected(table[:50]))
    assert not list((tmp_path / "by_id").glob("[0-9]*[0-9]"))  # the old files are gone


def test_damaged_files_raise_corrupt_chunk_error(tmp_path: Path) -> None:
    table = points_table(100, seed=29)[["z", "y", "x", "id", "f32", "pre_id"]]
    write_annotations(tmp_path / "a", table, voxel_size=VOXEL, limit=1000)
    first = int(table["id"].min())
    path = tmp_path / "a/by_id" / str(first)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptChunkError, match=str(first)):
        read_annotations(tmp_path / "a")
    cell = tmp_path / "a/spatial0/0_0_0"
    cell.write_bytes(cell.read_bytes()[:-5])
    with pytest.raises(CorruptChunkError, match="spatial level 0"):
        read_annotations(tmp_path / "a", box=Box((0, 0, 0), (30, 120, 260)))
    write_annotations(tmp_path / "s", table, voxel_size=VOXEL, sharded=True)
    shard = next((tmp_path / "s/by_id").glob("*.shard"))
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(CorruptChunkError):
        read_annotations(tmp_path / "s")


def test_public_names() -> None:
    assert voxgate.write_annotations is write_annotations
    assert voxgate.read_annotations is read_annotations
    assert "write_annotations" in voxgate.__all__ and "read_annotations" in voxgate.__all__
    assert os.path.basename(voxgate.__file__) == "__init__.py"


def test_an_empty_table_and_given_bounds(tmp_path: Path) -> None:
    empty = pd.DataFrame({"z": np.zeros(0), "y": np.zeros(0), "x": np.zeros(0),
                          "score": np.zeros(0, np.float32)})
    bounds = Box((0, 0, 0), (10, 20, 30))
    write_annotations(tmp_path / "e", empty, voxel_size=VOXEL, bounds=bounds)
    info = json.loads((tmp_path / "e/info").read_text())
    assert info["lower_bound"] == [0, 0, 0] and info["upper_bound"] == [30, 20, 10]
    got = read_annotations(tmp_path / "e")
    assert got.empty and list(got.columns) == ["id", "z", "y", "x", "score"]
    assert read_annotations(tmp_path / "e", box=bounds).empty
    table = pd.DataFrame({"z": [1.5, 9.0], "y": [0.0, 19.5], "x": [29.0, 3.0]})
    write_annotations(tmp_path / "b", table, voxel_size=VOXEL, bounds=bounds, limit=1)
    info = json.loads((tmp_path / "b/info").read_text())
    assert info["upper_bound"] == [30, 20, 10] and len(info["spatial"]) >= 2
    assert_same(read_annotations(tmp_path / "b"),
                expected(table.assign(id=np.array([1, 2], np.uint64))))


def test_s3_round_trip_and_rewrite(s3_bucket: str) -> None:
    """On object storage (a local S3 server): both layouts round trip, and writing again
    removes the earlier layer's index objects."""
    table = points_table(150, seed=31)
    url = f"precomputed://s3://{s3_bucket}/syn"
    write_annotations(url, table, voxel_size=VOXEL, limit=20)
    assert_same(read_annotations(url), expected(table))
    box = Box((0, 0, 0), (15, 60, 130))
    assert_same(read_annotations(url, box=box),
                expected(table[(table.z < 15) & (table.y < 60) & (table.x < 130)]))
    write_annotations(url, table[:40], voxel_size=VOXEL, limit=20, sharded=True)
    assert_same(read_annotations(url), expected(table[:40]))
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                      region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if k.startswith("syn/") and not k.endswith((".shard", "info"))]


def test_many_annotations_in_a_box_read_whole_shards(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from voxgate.formats.annotation import reader

    table = points_table(300, seed=37)
    write_annotations(tmp_path, table, voxel_size=VOXEL, sharded=True, limit=30)
    box = Box((0, 0, 0), (20, 100, 200))
    want = expected(table[(table.z < 20) & (table.y < 100) & (table.x < 200)])
    monkeypatch.setattr(reader, "_WHOLE_SHARDS", 10)
    assert len(want) > 10
    assert_same(read_annotations(tmp_path, box=box), want)


def test_progress_bars_draw_and_write_the_same(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    table = points_table(200, seed=41)
    write_annotations(tmp_path / "p", table, voxel_size=VOXEL, sharded=True, limit=50,
                      progress=True)
    write_annotations(tmp_path / "q", table, voxel_size=VOXEL, sharded=True, limit=50)
    assert "spatial level 0" in capsys.readouterr().err  # (bars go to stderr)
    for f in (tmp_path / "q").rglob("*"):
        if f.is_file():
            assert (tmp_path / "p" / f.relative_to(tmp_path / "q")).read_bytes() == \
                f.read_bytes()
