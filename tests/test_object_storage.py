"""Remotes on object storage: an S3 API server on 127.0.0.1 (moto), through tensorstore's s3."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest

import voxgate


def test_zarr_on_s3_round_trip(s3_bucket: str, s3_server: str) -> None:
    url = f"zarr://s3://{s3_bucket}/em.zarr"
    vol = voxgate.create(url, shape=(16, 32, 48), chunks=(8, 16, 16), dtype="uint8",
                         voxel_size=(40, 8, 8), num_scales=2)
    data = np.random.default_rng(0).integers(0, 255, (16, 32, 48), dtype=np.uint8)
    vol[:] = data
    vol[3:5, 7:9, 11:13] = 1
    data[3:5, 7:9, 11:13] = 1
    again = voxgate.open(f"s3://{s3_bucket}/em.zarr")  # format detected from zarr.json on S3
    assert again.url == url
    assert len(again.scales) == 2
    np.testing.assert_array_equal(again.read(), data)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket=s3_bucket)["Contents"]]
    assert "em.zarr/zarr.json" in keys
    assert any(k.startswith("em.zarr/0/c/") for k in keys)


def test_copy_local_to_s3_and_back(tmp_path: Path, s3_bucket: str) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=(16, 40, 40), chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")
    labels = np.random.default_rng(1).integers(0, 2**60, (16, 40, 40), dtype=np.uint64)
    src[:] = labels
    remote = f"zarr://s3://{s3_bucket}/seg.zarr"
    report = voxgate.copy(src, remote, progress=False)
    assert report.created
    np.testing.assert_array_equal(voxgate.open(remote).read(), labels)
    back = voxgate.copy(remote, f"zarr://{tmp_path}/back.zarr", progress=False)
    assert back.chunks_written > 0
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/back.zarr").read(), labels)


def test_missing_object_is_not_found(s3_bucket: str) -> None:
    import pytest

    with pytest.raises(voxgate.errors.RemoteNotFoundError):
        voxgate.open(f"zarr://s3://{s3_bucket}/nothing.zarr")


def test_webknossos_wkw_layer_on_s3_says_it_needs_a_local_disk(s3_bucket: str,
                                                              s3_server: str) -> None:
    """The wkw package reads WKW files from a local disk only: a WKW layer on S3 is refused
    with that reason (it said "the WKW mag ... has no header.wkw", which it has)."""
    import json

    from voxgate.errors import CapabilityNotSupportedError

    props = {"id": {"name": "ds", "team": ""}, "scale": {"factor": [8, 8, 40],
                                                          "unit": "nanometer"},
             "dataLayers": [{"name": "color", "category": "color", "elementClass": "uint8",
                             "dataFormat": "wkw", "numChannels": 1,
                             "boundingBox": {"topLeft": [0, 0, 0], "width": 64, "height": 64,
                                             "depth": 64},
                             "mags": [{"mag": [1, 1, 1], "path": "./color/1"}]}]}
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="ds/datasource-properties.json",
                  Body=json.dumps(props).encode())
    s3.put_object(Bucket=s3_bucket, Key="ds/color/1/header.wkw", Body=b"WKW\x01")
    with pytest.raises(CapabilityNotSupportedError, match=r"WKW layer on s3://.*local disk"):
        voxgate.open(f"webknossos://s3://{s3_bucket}/ds/color")
