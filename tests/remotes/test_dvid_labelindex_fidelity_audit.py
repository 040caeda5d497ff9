"""The DVID test server's label bookkeeping and keyvalue routes against DVID's source
(janelia-flyem/dvid, datatype/labelmap/handlers.go, labelmap.go, dvid/point.go,
datatype/keyvalue/keyvalue.go): bad input answered 400 as DVID does it (not a traceback),
query flags read as DVID reads them, and JSON bodies decoded as Go decodes them.

The server state is driven in-process (DVIDState.handle), so an exception escaping a handler,
which the ASGI server would answer 500, fails the test."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from voxgate.testing.dvid.state import DVIDState


class _Srv:
    def __init__(self) -> None:
        self.state = DVIDState()
        r = self.state.handle("POST", "/api/repos", {}, b'{"alias": "a"}', {})
        self.uuid = json.loads(r.body)["root"]
        self.node = f"/api/node/{self.uuid}"

    def __call__(self, method: str, path: str, q: dict[str, str] | None = None,
                 body: bytes = b"") -> tuple[int, bytes]:
        r = self.state.handle(method, self.node + path, q or {}, body, {})
        return r.status, r.body


@pytest.fixture(scope="module")
def srv() -> _Srv:
    s = _Srv()
    cfg = {"typename": "labelmap", "dataname": "seg", "BlockSize": "16,16,16"}
    assert s.state.handle("POST", f"/api/repo/{s.uuid}/instance", {},
                          json.dumps(cfg).encode(), {}).status == 200
    vol = np.zeros((16, 16, 16), "<u8")
    vol[:8] = 5      # z 0..7
    vol[8:, :4] = 7  # z 8..15, y 0..3
    vol[8:, 4:] = 9  # z 8..15, y 4..15
    assert s("POST", "/seg/raw/0_1_2/16_16_16/0_0_0", body=vol.tobytes())[0] == 200
    assert s("POST", "/seg/merge", body=b"[5, 7]")[0] == 200  # supervoxel 7 -> body 5
    cfg = {"typename": "keyvalue", "dataname": "kv"}
    assert s.state.handle("POST", f"/api/repo/{s.uuid}/instance", {},
                          json.dumps(cfg).encode(), {}).status == 200
    assert s("POST", "/kv/key/a", body=b'{"v": 1}')[0] == 200
    return s


# -- strconv.ParseUint / Atoi / ParseInt take ASCII digits only ---------------------------------
@pytest.mark.parametrize("path,q", [
    ("/seg/size/\u00b2", {}),                      # handleSize: strconv.ParseUint
    ("/seg/sparsevol/\u00b2", {}),                 # handleSparsevol
    ("/seg/supervoxels/\u00b2", {}),               # handleSupervoxels
    ("/seg/label/1_2_3", {"scale": "\u00b2"}),     # getScale: strconv.Atoi
    ("/seg/label/\u0663_2_3", {}),                 # StringToPoint3d: ParseInt(.., 10, 32)
    ("/seg/label/3000000000_0_0", {}),             # ... past int32
    ("/seg/listlabels", {"start": "x"}),           # handleListLabels: strconv.ParseUint
    ("/seg/listlabels", {"number": "-1"}),
])
def test_malformed_numbers_are_400(srv: _Srv, path: str, q: dict[str, str]) -> None:
    status, _ = srv("GET", path, q)
    assert status == 400


def test_label_overflow_is_value_out_of_range(srv: _Srv) -> None:
    status, body = srv("GET", "/seg/size/18446744073709551616")
    assert status == 400 and b"value out of range" in body


def test_label_zero_refusal_names_the_endpoints_use(srv: _Srv) -> None:
    # handleSize / handleSupervoxels / handleLabelmod: "cannot be queried as body"
    for ep in ("size", "supervoxels", "lastmod"):
        status, body = srv("GET", f"/seg/{ep}/0")
        assert status == 400 and b"cannot be queried as body." in body, ep
    status, body = srv("GET", "/seg/sparsevol/0")
    assert status == 400 and b"cannot be used as sparse volume." in body


# -- GET labels: json.Unmarshal into []dvid.Point3d ([3]int32) ----------------------------------
@pytest.mark.parametrize("payload", [b'[{"x": 1}]', b"[[1.5, 2, 3]]", b'[["1", 2, 3]]',
                                     b"[[2147483648, 0, 0]]"])
def test_labels_refuses_what_go_cannot_decode(srv: _Srv, payload: bytes) -> None:
    status, body = srv("GET", "/seg/labels", body=payload)
    assert status == 400 and b"Bad labels request JSON" in body


def test_labels_pads_short_points_and_takes_null(srv: _Srv) -> None:
    # [1, 12] is (1, 12, 0); null is (0, 0, 0); a null body is an empty list
    status, body = srv("GET", "/seg/labels", {"supervoxels": "true"},
                       b"[[1, 12], null, [0, 0, 9, 99]]")
    assert status == 200 and json.loads(body) == [5, 5, 7]
    assert srv("GET", "/seg/labels", body=b"null") == (200, b"[]")


@pytest.mark.parametrize("ep", ["sizes", "mapping"])
def test_null_label_list_is_empty(srv: _Srv, ep: str) -> None:
    # handleSizes / handleMapping: json.Unmarshal of null into []uint64 is a nil slice
    assert srv("GET", f"/seg/{ep}", body=b"null") == (200, b"[]")


# -- query flags: queryStrings.Get(name) == "true" ----------------------------------------------
@pytest.mark.parametrize("value", ["1", "on", "True"])
def test_supervoxels_flag_is_exactly_true(srv: _Srv, value: str) -> None:
    q = {"supervoxels": value}
    assert json.loads(srv("GET", "/seg/label/0_0_9", q)[1]) == {"Label": 5}
    assert json.loads(srv("GET", "/seg/label/0_0_9", {"supervoxels": "true"})[1]) == {
        "Label": 7}
    assert json.loads(srv("GET", "/seg/labels", q, b"[[0, 0, 9]]")[1]) == [5]
    # size/7 is a supervoxel's size only with supervoxels=true; as a body 7 is gone (404)
    assert srv("GET", "/seg/size/7", q)[0] == 404
    assert srv("GET", "/seg/size/7", {"supervoxels": "true"})[0] == 200
    assert json.loads(srv("GET", "/seg/sizes", q, b"[7, 5]")[1]) == [0, 16 * 16 * 8 + 16 * 4 * 8]


# -- sparsevol ----------------------------------------------------------------------------------
def test_sparsevol_unknown_format_is_rles(srv: _Srv) -> None:
    # labelmap.go svformatFromQueryString: anything but "srles" and "blocks" is legacy rles
    want = srv("GET", "/seg/sparsevol/9")
    assert want[0] == 200
    assert srv("GET", "/seg/sparsevol/9", {"format": "RLES"}) == want
    assert srv("GET", "/seg/sparsevol/9", {"format": "bogus"}) == want


def test_post_sparsevol_is_400(srv: _Srv) -> None:
    status, body = srv("POST", "/seg/sparsevol/9", body=b"")
    assert status == 400 and b"POST of sparsevol not currently implemented" in body


# -- keyvalue -----------------------------------------------------------------------------------
def test_keyvalues_tar_reads_a_json_key_list(srv: _Srv) -> None:
    # keyvalue.go handleKeyValues: tar=true reads keyReadRequestsFromJSON, as jsontar does
    status, body = srv("GET", "/kv/keyvalues", {"tar": "true"}, b'["a"]')
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = tar.extractfile("a")
        assert member is not None and member.read() == b'{"v": 1}'


@pytest.mark.parametrize("path,body", [("/kv/keyvalues", b'["a"]'),
                                       ("/kv/keyrangevalues/a/z", b"")])
def test_keyvalue_tar_and_json_together_are_400(srv: _Srv, path: str, body: bytes) -> None:
    status, text = srv("GET", path, {"tar": "true", "json": "true"}, body)
    assert status == 400 and b"can only specify tar or json output, not both" in text
