"""The relay's index page ``/``: the channels it serves, and URLs and snippets that work.

The URLs and snippets on the page are checked by using them: CloudVolume reads the
precomputed URL, the CloudVolume, intern and voxgate snippets run as printed, the Neuroglancer
link's state names that URL with the layer type of the channel's kind.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import blosc
import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume

from .conftest import RO, RelayProcess, Upstreams, free_port, start_relay, write_config

BROKEN = "/nonexistent/voxgate-index-test/gone.zarr"


@pytest.fixture(scope="module")
def open_relay(upstreams: Upstreams,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """No [auth]: what Neuroglancer and CloudVolume's precomputed source can read; one channel
    whose upstream is gone."""
    d = tmp_path_factory.mktemp("index-relay")
    extra = f'\n[[channel]]\nname = "lab/broken/gone"\nupstream = "zarr://{BROKEN}"\n'
    r = start_relay(write_config(d / "relay.toml", upstreams.root, auth=False, extra=extra,
                                 disk=False), free_port())
    yield r
    r.stop()


def index_json(relay: RelayProcess, **headers: str) -> dict[str, Any]:
    res = httpx.get(relay.url + "/?format=json", headers=headers, timeout=60)
    assert res.status_code == 200, res.text
    return dict(res.json())


def channel(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in doc["channels"] if "/".join(
        (c["collection"], c["experiment"], c["channel"])) == name]
    assert len(found) == 1, [c["channel"] for c in doc["channels"]]
    return found[0]


def ng_state(url: str) -> dict[str, Any]:
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    return dict(json.loads(unquote(url.split("#!", 1)[1])))


def test_json_lists_every_channel_with_its_geometry(open_relay: RelayProcess) -> None:
    doc = index_json(open_relay)
    names = sorted("/".join((c["collection"], c["experiment"], c["channel"]))
                   for c in doc["channels"])
    assert names == ["lab/broken/gone", "lab/em/em16", "lab/em/raw", "lab/em/seg"]
    raw = channel(doc, "lab/em/raw")
    assert raw["dtype"] == "uint8" and raw["kind"] == "image" and raw["num_channels"] == 1
    assert raw["shape_zyx"] == [40, 300, 260]
    assert [(s["key"], s["shape_zyx"], s["voxel_size_zyx"]) for s in raw["scales"]] == [
        ("s0", [40, 300, 260], [40.0, 8.0, 8.0]), ("s1", [40, 150, 130], [40.0, 16.0, 16.0])]
    seg = channel(doc, "lab/em/seg")
    assert seg["dtype"] == "uint64" and seg["kind"] == "segmentation"
    assert channel(doc, "lab/em/em16")["dtype"] == "uint16"
    assert doc["auth"] == {"open": True, "public_read": True}
    # Accept: application/json gives the same document
    res = httpx.get(open_relay.url + "/", headers={"Accept": "application/json"}, timeout=60)
    assert res.headers["content-type"].startswith("application/json")
    assert res.json() == doc
    res = httpx.get(open_relay.url + "/?format=xml", timeout=60)
    assert res.status_code == 400 and "'json' or 'html'" in res.json()["message"]


def test_a_dead_upstream_is_listed_without_its_path(open_relay: RelayProcess) -> None:
    gone = channel(index_json(open_relay), "lab/broken/gone")
    assert gone["error"] and "neuroglancer_url" not in gone
    assert BROKEN not in gone["error"] and "nonexistent" not in gone["error"]
    page = httpx.get(open_relay.url + "/", timeout=60).text
    assert "unavailable:" in page and "nonexistent" not in page


def test_precomputed_url_and_neuroglancer_link_work(open_relay: RelayProcess,
                                                    upstreams: Upstreams) -> None:
    doc = index_json(open_relay)
    for name, ref, layer_type in (("raw", upstreams.image, "image"),
                                  ("seg", upstreams.labels, "segmentation")):
        ch = channel(doc, f"lab/em/{name}")
        assert ch["precomputed_url"] == f"precomputed://{open_relay.url}/precomputed/lab/em/{name}"
        cv = CloudVolume(ch["precomputed_url"], mip=0, progress=False, fill_missing=False,
                         bounded=True, cache=False)
        got = np.asarray(cv[5:70, 9:40, 2:11])[..., 0].T  # x, y, z -> z, y, x
        np.testing.assert_array_equal(got, ref[2:11, 9:40, 5:70])
        state = ng_state(ch["neuroglancer_url"])
        assert state["layers"] == [{"type": layer_type, "source": ch["precomputed_url"],
                                    "name": name}]
    # one link per experiment with every channel as a layer
    both = ng_state(doc["experiments"]["lab/em"])
    assert {(layer["name"], layer["type"]) for layer in both["layers"]} == {
        ("raw", "image"), ("seg", "segmentation"), ("em16", "image")}


def test_snippets_run_as_printed(open_relay: RelayProcess, upstreams: Upstreams) -> None:
    snippets = channel(index_json(open_relay), "lab/em/raw")["snippets"]
    expected = upstreams.image[0:8, 0:64, 0:64]
    ns: dict[str, Any] = {}
    exec(snippets["cloudvolume"], ns)
    np.testing.assert_array_equal(np.asarray(ns["cutout"])[..., 0].T, expected)
    ns = {}
    exec(snippets["intern"], ns)
    np.testing.assert_array_equal(ns["cutout"], expected)
    ns = {}
    exec(snippets["voxgate"], ns)
    np.testing.assert_array_equal(ns["cutout"], expected)


def test_html_page_escapes_what_it_did_not_write(open_relay: RelayProcess) -> None:
    res = httpx.get(open_relay.url + "/", timeout=60)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    page = res.text
    doc = index_json(open_relay)
    for name in ("raw", "seg", "em16"):
        ch = channel(doc, f"lab/em/{name}")
        assert f"<h2>lab/em/{name}</h2>" in page
        assert f"href='{html.escape(ch['neuroglancer_url'])}'" in page
        assert html.escape(ch["snippets"]["cloudvolume"]) in page
    # the Host a client sent comes back in the URLs and snippets: escaped, never markup, and a
    # valid Python string in the snippets
    res = httpx.get(open_relay.url + "/", headers={"Host": "a&b'c:1"}, timeout=60)
    assert res.status_code == 200
    assert "relay at http://a&amp;b&#x27;c:1</h1>" in res.text and "a&b'c" not in res.text
    res = httpx.get(open_relay.url + "/?format=json", headers={"Host": "a&b'c:1"}, timeout=60)
    snippet = channel(res.json(), "lab/em/raw")["snippets"]["voxgate"]
    compile(snippet, "snippet", "exec")
    assert repr("bossdb://http://a&b'c:1/lab/em/raw") in snippet


def test_page_escapes_names_and_messages() -> None:
    from voxgate.relay.index import render_page

    evil = "<script>alert(1)</script>"
    page = render_page("http://h", "note", [{"collection": "c", "experiment": "e",
                                             "channel": evil, "error": evil}], {})
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_private_relay_asks_for_a_token_and_never_echoes_it(relay: RelayProcess) -> None:
    res = httpx.get(relay.url + "/", timeout=60)
    assert res.status_code == 401 and res.headers["content-type"].startswith("text/html")
    assert "public_read = false" in res.text and "CloudVolume cannot send it" in res.text
    assert "lab/em/raw" not in res.text  # nothing listed to anonymous clients
    res = httpx.get(relay.url + "/?format=json", timeout=60)
    assert res.status_code == 401 and "credentials" in res.text
    doc = index_json(relay, Authorization=f"Token {RO}")
    raw = channel(doc, "lab/em/raw")
    assert doc["auth"] == {"open": False, "public_read": False}
    text = json.dumps(doc)
    assert RO not in text and "YOUR_TOKEN" in text
    assert "token-free read-only relay" in raw["snippets"]["cloudvolume"]
    assert "token='YOUR_TOKEN'" in raw["snippets"]["voxgate"]
    page = httpx.get(relay.url + "/", headers={"Authorization": f"Token {RO}"}, timeout=60).text
    assert RO not in page and "lab/em/raw" in page


def test_token_free_read_only_relay_in_front_serves_cloudvolume(
        relay: RelayProcess, upstreams: Upstreams, tmp_path: Path) -> None:
    # docs/relay.md, "Tokens": CloudVolume and Neuroglancer cannot send the private relay's
    # token, so a second relay on 127.0.0.1 holds a read token and serves them without one
    cfg = tmp_path / "front.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
[[channel]]
name = "lab/em/raw"
upstream = "bossdb://{relay.url}/lab/em/raw"
options = {{ token = "{RO}" }}
writable = false
""")
    front = start_relay(cfg, free_port())
    try:
        doc = index_json(front)
        raw = channel(doc, "lab/em/raw")
        assert RO not in json.dumps(doc)
        cv = CloudVolume(raw["precomputed_url"], mip=0, progress=False, cache=False)
        got = np.asarray(cv[0:64, 0:64, 0:8])[..., 0].T
        np.testing.assert_array_equal(got, upstreams.image[0:8, 0:64, 0:64])
        # read-only: a write through the front relay is refused
        body = blosc.compress(np.zeros((1, 4, 4), np.uint8).tobytes(), typesize=1)
        res = httpx.post(front.url + "/v1/cutout/lab/em/raw/0/0:4/0:4/0:1/", content=body,
                         headers={"Content-Type": "application/blosc"}, timeout=60)
        assert res.status_code == 403, res.text
    finally:
        front.stop()
    assert RO not in front.log.read_text()
