"""Leftovers of the garbage-answering servers audit (tests/test_server_garbage_audit.py).

- A DVID repo info that is well-formed JSON but whose instance members have the wrong JSON
  types (every leaf a string, a BlockSize that is a string) is a CorruptChunkError naming the
  URL, not "a x instance" (CapabilityNotSupportedError) or a bad-BlockSize advice
  (InvalidRequestError).
- A chunk that tensorstore cannot decode, read over HTTP, is named by its URL in the error
  (and in ``CorruptChunkError.chunk``), not "chunk (unknown)".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import voxgate
from tests.garbage_proxy import CHUNK_GARBAGE, GarbageProxy, Rule, dvid_behind_proxy, garbage
from tests.static_http import serve_directory
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError, VoxgateError

SHAPE = (20, 30, 40)
REPO_INFO = r"/api/repo/[0-9a-f]+/info$"


@pytest.fixture(scope="module")
def dvid() -> Iterator[tuple[GarbageProxy, str]]:
    """The DVID test server with a uint8blk and a keyvalue instance, behind the proxy; also
    the root UUID's first 8 digits."""
    with dvid_behind_proxy("leftovers", gray="uint8blk", kv="keyvalue") as (proxy, repo):
        yield proxy, repo.root[:8]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GarbageProxy]:
    root = tmp_path_factory.mktemp("leftover_files")
    for url in (f"zarr://{root}/a.zarr", f"n5://{root}/a.n5"):
        voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint8",
                       voxel_size=(40, 8, 8))[:] = 1
    with serve_directory(root) as base:
        proxy = GarbageProxy(base)
        yield proxy
        proxy.close()


def _gray_extended(change: dict[str, object]) -> Rule:
    """A rule changing members of the repo info's ``gray`` instance's Extended."""

    def rule(status: int, headers: dict[str, str], body: bytes
             ) -> tuple[int, dict[str, str], bytes]:
        doc = json.loads(body)
        doc["DataInstances"]["gray"]["Extended"].update(change)
        return 200, {"content-type": "application/json"}, json.dumps(doc).encode()

    return rule


def _open_error(proxy: GarbageProxy, url: str, pattern: str, rule: Rule) -> VoxgateError:
    with proxy.answering(pattern, rule), pytest.raises(VoxgateError) as info:
        voxgate.open(url).read()
    return info.value


def test_dvid_repo_info_of_strings_is_corrupt(dvid: tuple[GarbageProxy, str]) -> None:
    # (before: CapabilityNotSupportedError "... is a x instance; dvid:// volumes are ...")
    proxy, node = dvid
    url = f"dvid://{proxy.url}/{node}/gray"
    exc = _open_error(proxy, url, REPO_INFO, garbage("strings"))
    assert isinstance(exc, CorruptChunkError), repr(exc)
    assert str(exc).startswith(url), str(exc)


@pytest.mark.parametrize("change", [{"BlockSize": "x"}, {"BlockSize": ["32", "32", "32"]},
                                    {"MinPoint": "x", "MaxPoint": "x"}],
                         ids=["blocksize-string", "blocksize-strings", "extents-strings"])
def test_dvid_extended_of_wrong_types_is_corrupt(dvid: tuple[GarbageProxy, str],
                                                 change: dict[str, object]) -> None:
    # (before: BlockSize "x" was InvalidRequestError "has BlockSize ['x'] ... make a new
    # instance"; ["32", "32", "32"] was taken as numbers; MinPoint "x" was an IndexError
    # made a CorruptChunkError without the member named)
    proxy, node = dvid
    url = f"dvid://{proxy.url}/{node}/gray"
    exc = _open_error(proxy, url, REPO_INFO, _gray_extended(change))
    assert isinstance(exc, CorruptChunkError), repr(exc)
    assert str(exc).startswith(url), str(exc)
    assert "not a list of 3 integers" in str(exc), str(exc)


def test_dvid_instance_of_another_type_is_still_not_supported(
        dvid: tuple[GarbageProxy, str]) -> None:
    # guard (passes on the old code too): a real instance of a type dvid:// does not read
    proxy, node = dvid
    with pytest.raises(CapabilityNotSupportedError, match="keyvalue"):
        voxgate.open(f"dvid://{proxy.url}/{node}/kv")


@pytest.mark.parametrize("kind", CHUNK_GARBAGE)
@pytest.mark.parametrize("scheme", ["zarr", "n5"])
def test_undecodable_chunk_over_http_is_named(files: GarbageProxy, scheme: str,
                                              kind: str) -> None:
    # (before: "...: chunk (unknown) could not be decoded: FAILED_PRECONDITION: Error reading
    # http://H/a.zarr/0/c/0/0/0: Invalid blosc-compressed data")
    path = {"zarr": "a.zarr/0/c/0/0/0", "n5": "a.n5/s0/0/0/0"}[scheme]
    vol = {"zarr": "a.zarr", "n5": "a.n5"}[scheme]
    chunk = f"{files.url}/{path}"
    exc = _open_error(files, f"{scheme}://{files.url}/{vol}", "/" + path + "$", garbage(kind))
    assert isinstance(exc, CorruptChunkError), repr(exc)
    assert exc.chunk == chunk, (exc.chunk, str(exc))
    assert f"chunk {chunk} could not be decoded" in str(exc), str(exc)
    assert "(unknown)" not in str(exc)


# -- an N5 group whose attributes.json is JSON but not an object ----------------------------------
@pytest.mark.parametrize("root", ["[1, 2]", "null", "3", '"n5"'])
def test_n5_group_attributes_not_an_object_are_corrupt(tmp_path: Path, root: str) -> None:
    """Old code took them for {} (a group written by another tool keeps its resolution and
    downsamplingFactors there, so its scales got voxgate's defaults) and then blamed s0's
    attributes.json ("'dimensions' must be a non-empty list")."""
    vol = voxgate.create(f"n5://{tmp_path}/g.n5/s0", shape=(8, 16, 16), dtype="uint8",
                         chunks=(8, 8, 8), voxel_size=(4, 4, 4))
    vol[:] = 1
    (tmp_path / "g.n5" / "attributes.json").write_text(root)
    with pytest.raises(CorruptChunkError) as info:
        voxgate.open(f"n5://{tmp_path}/g.n5")
    assert f"{tmp_path}/g.n5/attributes.json" in str(info.value)
    assert "not the JSON object" in str(info.value)
