"""Who may see and change what on the relay: coordinate frames and ``/metrics``.

The rule for coordinate frames (docs/relay.md, "Security"): a frame is visible to the token that
created it, to admin tokens (read-write and not limited to collections), and to every token that
may read a collection with an experiment that uses it; only its creator or an admin token may
change or delete it.  Tokens here: RW is an admin, RO reads everything, ALICE writes only the
collection "other" and BOB only "lab".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import CoordinateFrameResource
from requests import HTTPError

from .conftest import RO, RW, RelayProcess, Upstreams, free_port, start_relay, write_config

ALICE = "alice-token"
BOB = "bob-token"


def frame(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {"x_start": 0, "x_stop": 100, "y_start": 0, "y_stop": 50,
                               "z_start": 0, "z_stop": 10, "x_voxel_size": 4.0,
                               "y_voxel_size": 4.0, "z_voxel_size": 40.0,
                               "voxel_unit": "nanometers"}
    body.update(extra)
    return body


def config(path: Path, root: Path, *, public_read: bool = False) -> Path:
    write_config(path, root, auth=False, extra=f"""
[[channel]]
name = "other/em/raw"
upstream = "precomputed://file://{root}/raw"
""")
    path.write_text(path.read_text() + f"""
[auth]
public_read = {str(public_read).lower()}
[auth.tokens]
"{RW}" = "read-write"
"{RO}" = "read"
"{ALICE}" = {{ role = "read-write", collections = ["other"] }}
"{BOB}" = {{ role = "read-write", collections = ["lab"] }}
""")
    return path


@pytest.fixture(scope="module")
def relay(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("auth")
    r = start_relay(config(d / "relay.toml", upstreams.root), free_port(),
                    "--data-root", str(d / "data"))
    yield r
    r.stop()


def forbidden(res: httpx.Response) -> str:
    assert res.status_code == 403, (res.status_code, res.text)
    body = res.json()
    assert body["status"] == 403 and body["code"] == 3001, body
    return str(body["message"])


def coords(http: httpx.Client) -> set[str]:
    res = http.get("/v1/coord/")
    assert res.status_code == 200, res.text
    return set(res.json()["coords"])


def test_frames_follow_their_owner_and_the_collections_that_use_them(
        relay: RelayProcess) -> None:
    with relay.client(RW) as admin, relay.client(RO) as ro, relay.client(ALICE) as alice, \
            relay.client(BOB) as bob:
        assert admin.post("/v1/coord/adminframe", json=frame()).status_code == 201
        # derived frames: one per experiment of configured channels
        assert {"lab_em_frame", "other_em_frame", "adminframe"} <= coords(admin)
        # alice reads "other" only: she sees its frame, not lab's, not admin's unused frame
        assert coords(alice) == {"other_em_frame"}
        assert coords(bob) == {"lab_em_frame"}
        assert coords(ro) == {"lab_em_frame", "other_em_frame"}
        assert alice.get("/v1/coord/other_em_frame").status_code == 200
        forbidden(alice.get("/v1/coord/lab_em_frame"))
        forbidden(alice.get("/v1/coord/adminframe"))
        # and she cannot change or delete a frame another token made
        forbidden(alice.put("/v1/coord/adminframe", json={"description": "mine now"}))
        forbidden(alice.delete("/v1/coord/adminframe"))
        assert admin.get("/v1/coord/adminframe").json()["description"] == ""
        # a frame she creates is hers: she sees and changes it, others neither
        res = alice.post("/v1/coord/aliceframe", json=frame(description="alice's"))
        assert res.status_code == 201, res.text
        assert set(res.json()) == {"name", "description", "x_start", "x_stop", "y_start",
                                   "y_stop", "z_start", "z_stop", "x_voxel_size",
                                   "y_voxel_size", "z_voxel_size", "voxel_unit"}
        assert coords(alice) == {"other_em_frame", "aliceframe"}
        assert "aliceframe" not in coords(bob) and "aliceframe" not in coords(ro)
        assert alice.put("/v1/coord/aliceframe", json={"description": "v2"}).status_code == 200
        forbidden(bob.get("/v1/coord/aliceframe"))
        forbidden(bob.put("/v1/coord/aliceframe", json={"description": "bob's"}))
        forbidden(bob.delete("/v1/coord/aliceframe"))
        # bob cannot build on a frame he cannot see (and is not told it exists)
        res = bob.post("/v1/collection/lab/experiment/bobexp", json={"coord_frame": "aliceframe"})
        assert res.status_code == 404 and "does not exist" in res.json()["message"]
        # once an experiment of "other" uses it, whoever reads "other" sees it
        res = alice.post("/v1/collection/other/experiment/aexp",
                         json={"coord_frame": "aliceframe"})
        assert res.status_code == 201, res.text
        assert "aliceframe" in coords(ro) and "aliceframe" not in coords(bob)
        assert ro.get("/v1/coord/aliceframe").json()["description"] == "v2"
        # reading is not changing: the read-only token is refused, an admin is not
        forbidden(ro.put("/v1/coord/aliceframe", json={"description": "ro's"}))
        assert admin.put("/v1/coord/aliceframe", json={"description": "v3"}).status_code == 200
        # alice cannot delete it while it is used, and can once it is not
        assert alice.delete("/v1/coord/aliceframe").status_code == 400
        assert alice.delete("/v1/collection/other/experiment/aexp").status_code == 204
        assert alice.delete("/v1/coord/aliceframe").status_code == 204
        assert "aliceframe" not in coords(admin)
        # a frame from the upstream volumes cannot be changed by anyone
        forbidden(admin.put("/v1/coord/lab_em_frame", json={"description": "x"}))
        forbidden(bob.delete("/v1/coord/lab_em_frame"))


def test_frames_through_the_intern_client(relay: RelayProcess) -> None:
    """The same rule as the real intern BossRemote sees it."""
    def rmt(token: str) -> BossRemote:
        return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}",
                           "token": token})

    admin, alice = rmt(RW), rmt(ALICE)
    admin.create_project(CoordinateFrameResource(
        "internframe", description="admin's", x_start=0, x_stop=64, y_start=0, y_stop=64,
        z_start=0, z_stop=8, x_voxel_size=4, y_voxel_size=4, z_voxel_size=40,
        voxel_unit="nanometers"))
    assert "internframe" in admin.list_coordinate_frames()
    assert "internframe" not in alice.list_coordinate_frames()
    with pytest.raises(HTTPError, match="403"):
        alice.get_coordinate_frame("internframe")
    with pytest.raises(HTTPError, match="403"):
        alice.update_project("internframe", CoordinateFrameResource(
            "internframe", description="alice's now"))
    with pytest.raises(HTTPError, match="403"):
        alice.delete_project(CoordinateFrameResource("internframe"))
    assert admin.get_coordinate_frame("internframe").description == "admin's"
    mine = alice.create_project(CoordinateFrameResource(
        "aliceintern", x_start=0, x_stop=64, y_start=0, y_stop=64, z_start=0, z_stop=8,
        x_voxel_size=4, y_voxel_size=4, z_voxel_size=40, voxel_unit="nanometers"))
    assert mine.x_stop == 64
    alice.update_project("aliceintern", CoordinateFrameResource("aliceintern",
                                                                description="changed"))
    assert alice.get_coordinate_frame("aliceintern").description == "changed"
    alice.delete_project(CoordinateFrameResource("aliceintern"))
    admin.delete_project(CoordinateFrameResource("internframe"))


def test_metrics_need_a_token_when_reads_do(relay: RelayProcess, upstreams: Upstreams,
                                            tmp_path: Path) -> None:
    res = httpx.get(relay.url + "/metrics")
    assert res.status_code == 401 and set(res.json()) == {"detail"}
    assert "WWW-Authenticate" in res.headers
    assert httpx.get(relay.url + "/metrics",
                     headers={"Authorization": "Token not-a-token"}).status_code == 401
    assert httpx.get(relay.url + "/metrics",
                     headers={"Authorization": "Token public"}).status_code == 401
    for token in (RW, RO, ALICE):
        with relay.client(token) as http:
            res = http.get("/metrics")
            assert res.status_code == 200 and "cache" in res.json()
    # a relay whose data anyone may read shows its metrics to anyone too
    open_relay = start_relay(config(tmp_path / "open.toml", upstreams.root, public_read=True),
                             free_port())
    try:
        res = httpx.get(open_relay.url + "/metrics")
        assert res.status_code == 200 and "cache" in res.json()
        # Basic credentials are no bossDB token: read as anonymous (as DRF's authenticators
        # leave a scheme they do not know), where the relay answered 401 "Invalid token
        # header"; a write stays refused
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        assert httpx.get(open_relay.url + "/v1/collection/", headers=basic).status_code == 200
        res = httpx.post(open_relay.url + "/v1/collection/basiccoll/", headers=basic,
                         json={"description": ""})
        assert res.status_code == 401
        assert res.json() == {"detail": "Authentication credentials were not provided."}
    finally:
        open_relay.stop()
