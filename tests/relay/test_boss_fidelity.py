"""The relay's bossDB dialect answers as bossDB itself does, route by route.

Each test names the bossDB source it follows (github.com/jhuapl-boss/boss at db9628b, and
jhuapl-boss/spdb for the spatial database behind it), and drives the relay with raw HTTP and,
where intern exposes the call, with the real intern client.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator

import blosc
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import CollectionResource
from intern.service.boss.httperrorlist import HTTPErrorList
from requests import HTTPError

from .conftest import (
    RO,
    RW,
    RelayProcess,
    Upstreams,
    free_port,
    make_upstreams,
    start_relay,
    write_config,
)

#: a read-write token limited to one collection: not bossDB's staff (admin) user here
LIMITED = "s3cret-limited"
#: small, so a modest region is over the cutout limit
LIMIT = 64 * 2**10
SEG = "lab/em/seg"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Upstreams]]:
    root = tmp_path_factory.mktemp("fidelity")
    ups = make_upstreams(root)
    cfg = write_config(root / "relay.toml", ups.root, auth=False, disk=False)
    limit = f'max_cutout_bytes = "{LIMIT // 1024} KiB"'
    text = cfg.read_text().replace("[server]", f"[server]\n{limit}", 1)
    limited = f'"{LIMITED}" = {{ role = "read-write", collections = ["lab"] }}'
    cfg.write_text(text + f"""
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read", {limited} }}
""")
    r = start_relay(cfg, free_port())
    yield r, ups
    r.stop()


@pytest.fixture
def relay(setup: tuple[RelayProcess, Upstreams]) -> RelayProcess:
    return setup[0]


@pytest.fixture
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client(RW) as c:
        yield c


def intern(relay: RelayProcess, token: str = RW) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": token})


def boss_error(res: httpx.Response, status: int, code: int, message: str | None = None) -> None:
    assert res.status_code == status, res.text
    body = res.json()
    assert (body["status"], body["code"]) == (status, code), body
    if message is not None:
        assert body["message"] == message, body


def refused(call: object, status: int) -> None:
    """An intern call fails with ``status`` (intern raises HTTPError naming it)."""
    with pytest.raises(HTTPError, match=f"\\({status}\\)"):
        call()  # type: ignore[operator]


# -- project service ------------------------------------------------------------------------------
def test_creating_a_resource_that_exists_is_400_1003(http: httpx.Client,
                                                      relay: RelayProcess) -> None:
    # bosscore/views/views_resource.py post(): a taken name fails the serializer's unique
    # validator (bosscore/models.py unique / unique_together), answered with
    # BossHTTPError(serializer.errors, INVALID_POST_ARGUMENT): 400, code 1003 (not 6002)
    frame = http.get("/v1/collection/lab/experiment/em").json()["coord_frame"]
    boss_error(http.post("/v1/collection/lab", json={}), 400, 1003)
    boss_error(http.post("/v1/collection/lab/experiment/em", json={"coord_frame": frame}),
               400, 1003)
    boss_error(http.post("/v1/collection/lab/experiment/em/channel/raw",
                         json={"datatype": "uint8"}), 400, 1003)
    boss_error(http.post(f"/v1/coord/{frame}", json={}), 400, 1003)
    refused(lambda: intern(relay).create_project(CollectionResource("lab")), 400)


def test_unknown_resources_say_does_not_exist(http: httpx.Client, relay: RelayProcess) -> None:
    # bosscore/views/views_resource.py: DoesNotExist -> BossResourceNotFoundError(name),
    # bosscore/error.py: 404, code 4000, "<name> does not exist."
    boss_error(http.get("/v1/collection/nope"), 404, 4000, "nope does not exist.")
    boss_error(http.get("/v1/collection/lab/experiment/nope"), 404, 4000,
               "nope does not exist.")
    boss_error(http.get("/v1/collection/lab/experiment/em/channel/nope"), 404, 4000,
               "nope does not exist.")
    boss_error(http.get("/v1/collection/nope/experiment/em/channel/raw"), 404, 4000,
               "nope does not exist.")
    refused(lambda: intern(relay).get_channel("nope", "lab", "em"), 404)


def test_an_experiment_on_an_unknown_frame_is_404(http: httpx.Client) -> None:
    # bosscore/views/views_resource.py ExperimentDetail.post: CoordinateFrame.objects.get raises
    # DoesNotExist -> BossResourceNotFoundError(coord_frame); no coord_frame at all is 400/1003
    boss_error(http.post("/v1/collection/lab/experiment/newexp",
                         json={"coord_frame": "no-such-frame"}), 404, 4000,
               "no-such-frame does not exist.")
    boss_error(http.post("/v1/collection/lab/experiment/newexp", json={}), 400, 1003,
               "This request requires a valid coordinate frame")


def test_deleting_a_non_empty_resource_is_400_4003(http: httpx.Client) -> None:
    # bosscore/views/views_resource.py delete(): INTEGRITY_ERROR with these words
    boss_error(http.delete("/v1/collection/lab"), 400, 4003,
               "Collection lab has experiments that reference it and cannot be deleted."
               "Please delete the experiments first.")
    boss_error(http.delete("/v1/collection/lab/experiment/em"), 400, 4003,
               " Experiment em has channels that reference it and cannot be deleted."
               "Please delete the channels first.")


def test_bad_tokens_get_drf_401s_with_bossdbs_challenge(relay: RelayProcess) -> None:
    # rest_framework TokenAuthentication's messages; the challenge comes from the first
    # authentication class, mozilla-django-oidc's OIDCAuthentication (boss/settings/production.py)
    res = httpx.get(relay.url + "/v1/collection/", headers={"Authorization": "Token wrong"})
    assert res.status_code == 401 and res.json() == {"detail": "Invalid token."}
    assert res.headers["www-authenticate"] == 'Bearer realm="api"'
    res = httpx.get(relay.url + "/v1/collection/", headers={"Authorization": "Token"})
    assert res.status_code == 401
    assert res.json() == {"detail": "Invalid token header. No credentials provided."}
    refused(lambda: intern(relay, "wrong").list_collections(), 401)


# -- cutouts --------------------------------------------------------------------------------------
def test_resolution_and_filter_errors(http: httpx.Client) -> None:
    # bosscore/request.py validate_resolution: "within {base} and {base + levels}", code 1002
    boss_error(http.get("/v1/cutout/lab/em/raw/2/0:8/0:8/0:1/"), 400, 1002,
               "Invalid resolution 2. The resolution has to be within 0 and 2")
    # validate_cutout_service: a filter on an image channel is refused before the resolution
    boss_error(http.get("/v1/cutout/lab/em/raw/9/0:8/0:8/0:1/?filter=1"), 400, 2003,
               "The channel in request has type image. Filter is only valid for annotation "
               "channels")


# What Django REST framework 3.18's DefaultContentNegotiation.select_renderer picks for each
# Accept header among bossDB's cutout renderers (blosc, blosc-python, npygz, jpeg, json, html;
# run against the real DRF while writing this test): the most specific group of the header's
# types first, and in it the view's renderer order; neither header order nor q-values count.
DRF_CUTOUT_MEDIA = {
    "application/npygz": "application/npygz",
    "application/npygz, application/blosc": "application/blosc",
    "application/blosc, application/npygz": "application/blosc",
    "application/npygz;q=1.0, application/blosc;q=0.1": "application/blosc",
    "application/npygz;v=1, application/blosc": "application/npygz",
    "application/*": "application/blosc",
    "*/*": "application/blosc",
    "application/npygz, */*": "application/npygz",
    "*/*;q=0.8, application/npygz": "application/npygz",
    "application/*, application/npygz": "application/npygz",
    "image/jpeg, application/npygz": "application/npygz",
    "APPLICATION/NPYGZ": "application/npygz",
    "application/blosc-python, application/npygz": "application/blosc-python",
}


def test_cutout_content_negotiation_as_django_rest_framework_does_it(
        http: httpx.Client, setup: tuple[RelayProcess, Upstreams]) -> None:
    """The relay preferred npygz whenever the header named it; bossDB (DRF) answers in blosc
    when both are named alike.  blosc-python is refused (406): it needs pickle."""
    _, ups = setup
    url = "/v1/cutout/lab/em/raw/0/0:16/0:8/0:2/"
    want = ups.image[0:2, 0:8, 0:16]
    etags: dict[str, set[str]] = {}
    for accept, media in DRF_CUTOUT_MEDIA.items():
        res = http.get(url, headers={"Accept": accept})
        if media == "application/blosc-python":
            assert res.status_code == 406, accept
            continue
        assert res.status_code == 200, (accept, res.text)
        assert res.headers["content-type"] == media, accept
        if media == "application/npygz":
            got = np.load(io.BytesIO(zlib.decompress(res.content)), allow_pickle=False)
        else:
            got = np.frombuffer(blosc.decompress(res.content), want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=accept)
        etags.setdefault(media, set()).add(res.headers["etag"])
    # one response per body: the ETag names the media type chosen, not the header's spelling
    assert all(len(tags) == 1 for tags in etags.values()), etags


def test_access_mode_and_no_cache_as_bossdb_reads_them(http: httpx.Client,
                                                       setup: tuple[RelayProcess, Upstreams]
                                                       ) -> None:
    # boss/utils.py get_access_mode: values case-insensitive, no-cache true/false only, and
    # not both parameters; each refusal is 400, code 1001, with these words
    relay, ups = setup
    url = "/v1/cutout/lab/em/raw/0/0:16/0:8/0:2/"
    blosc_hdr = {"Accept": "application/blosc"}
    for query in ("access-mode=No-Cache", "access-mode=RAW", "no-cache=True", "no-cache=false"):
        assert http.get(f"{url}?{query}", headers=blosc_hdr).status_code == 200, query
    boss_error(http.get(f"{url}?no-cache=yes"), 400, 1001,
               "Incorrect no-cache value. Must be True or False.")
    boss_error(http.get(f"{url}?access-mode=bogus"), 400, 1001,
               "Incorrect access_mode, possible values are [raw, no-cache, cache]")
    boss_error(http.get(f"{url}?access-mode=raw&no-cache=true"), 400, 1001,
               "access_mode and no-cache specified  in URL, please specify access_mode. "
               "no-cache will be deprecated.")
    # intern sends access-mode=no-cache on every cutout
    rmt = intern(relay, RO)
    got = rmt.get_cutout(rmt.get_channel("raw", "lab", "em"), 0, [0, 16], [0, 8], [0, 2])
    np.testing.assert_array_equal(got, ups.image[0:2, 0:8, 0:16])


# -- ids, bounding boxes, reserve -----------------------------------------------------------------
def test_ids_have_no_size_limit_and_check_the_type_first(http: httpx.Client,
                                                         setup: tuple[RelayProcess, Upstreams]
                                                         ) -> None:
    # bossobject/views.py Ids and bosscore/request.py validate_ids_service: no is_too_large
    # check (bossspatialdb/views.py applies it to cutouts only), and the channel type is
    # checked before the resolution and ranges
    relay, ups = setup
    whole = "0/0:260/0:300/0:40/"
    boss_error(http.get(f"/v1/cutout/{SEG}/{whole}"), 413, 2000)
    res = http.get(f"/v1/ids/{SEG}/{whole}")
    assert res.status_code == 200, res.text
    want = [str(i) for i in np.unique(ups.labels) if i != 0]
    assert res.json() == {"ids": want}
    rmt = intern(relay, RO)
    seg = rmt.get_channel("seg", "lab", "em")
    got = rmt.get_ids_in_region(seg, 0, [0, 260], [0, 300], [0, 40])
    assert got == [int(i) for i in want]
    boss_error(http.get("/v1/ids/lab/em/raw/9/0:8/0:8/0:1/"), 400, 2003,
               "The channel in request has type image. Can only reserve IDs for annotation "
               "channels")


def test_bounding_boxes_as_bossdb_answers_them(http: httpx.Client,
                                               setup: tuple[RelayProcess, Upstreams]) -> None:
    relay, ups = setup
    # bossobject/views.py BoundingBox: ``type`` is checked before the resource is looked up
    boss_error(http.get("/v1/boundingbox/nope/em/seg/0/5/?type=bad"), 400, 1005,
               "Invalid option for bounding box type bad. The valid options are : loose or tight")
    boss_error(http.get(f"/v1/boundingbox/{SEG}/0/12345/"), 404, 4004,
               "The id does not exist. 12345")
    # spdb object_indices.py get_loose_bounding_box: whole 512x512x16 cuboids, not clipped
    # to the coordinate frame (260 x 300 x 40 here); tight is exact
    ident = int(ups.labels[39, 299, 259])
    zz, yy, xx = np.nonzero(ups.labels == ident)
    loose = http.get(f"/v1/boundingbox/{SEG}/0/{ident}/").json()
    assert loose["x_range"] == [xx.min() // 512 * 512, 512]
    assert loose["y_range"] == [yy.min() // 512 * 512, 512]
    assert loose["z_range"] == [zz.min() // 16 * 16, 48]
    assert loose["t_range"] == [0, 1]
    rmt = intern(relay, RO)
    seg = rmt.get_channel("seg", "lab", "em")
    assert rmt.get_bounding_box(seg, 0, ident, "loose") == loose
    tight = rmt.get_bounding_box(seg, 0, ident, "tight")
    assert tight["x_range"] == [int(xx.min()), 260] and tight["z_range"][1] == 40


def test_reserve_answers_the_count_as_the_url_gave_it(http: httpx.Client,
                                                      relay: RelayProcess) -> None:
    # bossobject/views.py Reserve: {'start_id': start_id[0], 'count': num_ids}, num_ids being
    # the URL's string; start_id a number (a numpy uint64 through DRF's encoder)
    body = http.get(f"/v1/reserve/{SEG}/10").json()
    assert body["count"] == "10" and isinstance(body["start_id"], int)
    nxt = intern(relay).reserve_ids(intern(relay).get_channel("seg", "lab", "em"), 5)
    assert nxt == body["start_id"] + 10


# -- downsample -----------------------------------------------------------------------------------
def test_downsample_status_fields(http: httpx.Client) -> None:
    # bossspatialdb/views.py Downsample.get: extent from the frame's stops halved per level
    # (spdb project/resource.py get_downsampled_extent_dims), cuboid_size CUBOIDSIZE[res]
    # = [512, 512, 16] (spdb c_lib/ndtype.py) at every level
    body = http.get("/v1/downsample/lab/em/raw/").json()
    assert body["status"] == "DOWNSAMPLED" and body["num_hierarchy_levels"] == 2
    assert body["cuboid_size"] == {"0": [512, 512, 16], "1": [512, 512, 16]}
    assert body["extent"] == {"0": [260, 300, 40], "1": [130, 150, 40]}
    assert body["voxel_size"] == {"0": [8.0, 8.0, 40.0], "1": [16.0, 16.0, 40.0]}


def test_downsample_requests_refused_as_bossdb_refuses_them(relay: RelayProcess) -> None:
    # bossspatialdb/downsample.py start: a DOWNSAMPLED channel is not downsampled again by
    # a user who is not staff (409, 2006); Downsample.delete cancels only queued or
    # in-progress jobs
    with relay.client(LIMITED) as limited:
        boss_error(limited.post("/v1/downsample/lab/em/raw/"), 409, 2006,
                   "Channel is already downsampled. Invalid Request.")
        boss_error(limited.delete("/v1/downsample/lab/em/raw/"), 409, 2006,
                   "You can only cancel a queued or in-progress downsample operation.")
        assert limited.get("/v1/downsample/lab/em/raw/").json()["status"] == "DOWNSAMPLED"
    # voxgate.downsample through bossdb:// with that token: the server's refusal of a
    # DOWNSAMPLED channel is not a failure, but a warning that says why nothing ran
    import voxgate
    from voxgate.errors import VoxgateWarning

    vol = voxgate.open(f"bossdb://{relay.url}/lab/em/raw", mode="r+", token=LIMITED)
    with pytest.warns(VoxgateWarning, match="already downsampled"):
        voxgate.downsample(vol)


# -- metadata -------------------------------------------------------------------------------------
def test_metadata_errors(http: httpx.Client, relay: RelayProcess) -> None:
    # bossmeta/views.py BossMeta: a write's missing key/value is refused before the resource
    # is looked up; each refusal is 400, code 1003, with these words
    boss_error(http.post("/v1/meta/nope/?value=x"), 400, 1003,
               "Missing optional argument key/value in the request")
    boss_error(http.post("/v1/meta/lab/?key=k"), 400, 1003,
               "Missing optional argument key/value in the request")
    boss_error(http.delete("/v1/meta/lab/"), 400, 1003,
               "Missing optional argument key in the request")
    boss_error(http.put("/v1/meta/lab/?key=fid-absent&value=x"), 400, 1003,
               "Invalid request. The key fid-absent does not exists")
    boss_error(http.delete("/v1/meta/lab/?key=fid-absent"), 400, 1003,
               "[ERROR]- Key fid-absent not found ")
    boss_error(http.get("/v1/meta/lab/?key=fid-absent"), 400, 1003,
               "Invalid request. Key fid-absent Not found in the database")
    rmt = intern(relay)
    coll = CollectionResource("lab")
    def fails(call: Callable[[], object]) -> None:
        with pytest.raises(HTTPErrorList) as info:  # (one HTTPError per key)
            call()
        assert "(400)" in str(info.value.http_errors[0])

    fails(lambda: rmt.update_metadata(coll, {"fid-absent": "v"}))
    fails(lambda: rmt.delete_metadata(coll, ["fid-absent"]))
    rmt.create_metadata(coll, {"fid-key": "v1"})
    fails(lambda: rmt.create_metadata(coll, {"fid-key": "v2"}))
    assert rmt.get_metadata(coll, ["fid-key"]) == {"fid-key": "v1"}
    rmt.delete_metadata(coll, ["fid-key"])
