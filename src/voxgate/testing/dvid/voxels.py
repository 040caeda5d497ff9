"""The voxel endpoints of the DVID test server (imageblk, labelmap, labelarray): instance
metadata, raw/isotropic subvolumes, and the dispatch to the label endpoints."""

from __future__ import annotations

import gzip
import json
import zlib

import lz4.block
import numpy as np

from .grid import _pt, _scale, _Vol, _xyz
from .labelindex import _body_list, _put_blocks
from .labels import _apply_mapping, _check_content_hash, _labels
from .model import DVIDError, Reply, _Ctx, _json, _q


def _voxels(ctx: _Ctx, method: str, parts: list[str], body: bytes,
            not_found: DVIDError) -> Reply:
    kw = parts[0]
    inst = ctx.inst
    if kw in _BLOCK_GEOMETRY:
        _check_block_size(ctx)
    if inst.typename == "labelblk" and kw in ("raw", "isotropic", "label", "labels", "blocks"):
        return _labelblk(ctx, method, parts, body)
    if kw == "raw" or kw == "isotropic":
        return _raw(ctx, method, parts, body)
    if kw == "metadata" and method == "GET":
        return _json({"Axes": [{"Label": a, "Resolution": r, "Units": u, "Size": 0}
                               for a, r, u in zip("XYZ", inst.voxel_size, inst.voxel_units,
                                                  strict=True)],
                      "Properties": {"Values": [{"DataType": inst.dtype.name,
                                                  "Label": inst.typename}]}})
    if kw == "extents" and method == "POST":
        cfg = ctx.state._body_json(body, "")
        try:
            inst.min_point = [int(v) for v in cfg["MinPoint"]]
            inst.max_point = [int(v) for v in cfg["MaxPoint"]]
        except (KeyError, TypeError, ValueError):
            raise DVIDError("extents must be JSON {\"MinPoint\": [x,y,z], \"MaxPoint\": "
                            "[x,y,z]}") from None
        with ctx.state.lock:
            ctx.state.save()
        return Reply(body=b"")
    if kw == "resolution" and method == "POST":
        try:
            res = [float(v) for v in json.loads(body)]
        except (ValueError, TypeError):
            raise DVIDError("resolution must be a JSON list of 3 numbers") from None
        if len(res) != 3:
            raise DVIDError("resolution must be a JSON list of 3 numbers")
        inst.voxel_size = res
        with ctx.state.lock:
            ctx.state.save()
        return Reply(body=b"")
    if not inst.is_label:
        raise not_found
    return _labels(ctx, method, parts, body, not_found)


#: the endpoints that cut voxel coordinates into blocks (dvid.Point3d.Chunk and the like)
_BLOCK_GEOMETRY = ("raw", "isotropic", "blocks", "specificblocks", "subvolblocks", "label",
                   "labels")


def _check_block_size(ctx: _Ctx) -> None:
    """DVID creates an instance of any BlockSize (imageblk setByConfig checks none; labelmap
    only multiples of 16, which 0 is).  With a 0 in it, every request that cuts coordinates
    into blocks divides by it (point.go Point3d.Chunk, the alignment checks' %): Go panics
    with "integer divide by zero", which server/web.go recoverHandler answers with 500."""
    bs = ctx.inst.block_size
    path = f"/api/node/{ctx.repo.nodes[ctx.version].uuid}/{ctx.inst.name}"
    if 0 in bs:
        raise DVIDError("Panic detected on request voxgate-test/1:\nruntime error: integer "
                        f"divide by zero\nIP: 127.0.0.1, URL: {path}", 500, raw=True)
    if any(v < 0 for v in bs):
        # DVID's block arithmetic then goes wrong in ways this server does not model
        raise DVIDError(f"voxgate DVID test server: BlockSize {bs} has a negative size; what "
                        "DVID does with it (block arithmetic that assumes positive sizes) is "
                        f"not modelled ({path})", 500, raw=True)


def _single_block_get(ctx: _Ctx, vol: _Vol, start: tuple[int, int, int],
                      compression: str) -> None:
    """labelmap blocks.go writeBlockToHTTP: a raw GET of exactly one aligned block skips the
    general path (which reads absent blocks as 0) for the block itself.  When that block was
    never written, sendCompressedBlock answers 400 "unable to get label block (x, y, z)" for a
    compressed GET, and streamRawBlock dereferences the nil block for an uncompressed one: a
    panic that server/web.go recoverHandler answers with 500."""
    bz, by, bx = (s // b for s, b in zip(start, vol.bs, strict=True))
    if vol.block(bz, by, bx) is not None:
        return
    if compression:
        raise DVIDError(f"unable to get label block ({bx}, {by}, {bz})")
    raise DVIDError("Panic detected on request voxgate-test/1:\nruntime error: invalid memory "
                    "address or nil pointer dereference\nIP: 127.0.0.1, URL: "
                    f"/api/node/{ctx.repo.nodes[ctx.version].uuid}/{ctx.inst.name}/raw", 500,
                    raw=True)


def _raw(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    if len(parts) < 4:
        raise DVIDError(f"'{parts[0]}' must be followed by shape/size/offset")
    dims, size_s, off_s = parts[1], parts[2], parts[3]
    if dims != "0_1_2":
        raise DVIDError(f"the voxgate DVID test server serves only 3-D raw requests (dims "
                        f"0_1_2), not {dims!r}")
    sx, sy, sz = _xyz(size_s, "size")
    ox, oy, oz = _xyz(off_s, "offset")
    if min(sx, sy, sz) <= 0:
        # imageblk.go NewVoxels / labelmap NewLabels: the geometry as dvid.Subvolume.String()
        raise DVIDError(f"Illegal geometry requested: 3d volume {_pt((sx, sy, sz))} at offset "
                        f"{_pt((ox, oy, oz))}")
    inst = ctx.inst
    # a labelmap/labelarray raw POST ignores ?scale=: it always stores scale 0 and recomputes
    # the coarser scales itself (labelmap handlers.go handleDataRequest -> write.go PutLabels)
    vol = _Vol(ctx, 0 if method == "POST" and inst.is_label else _scale(ctx))
    start, shape = (oz, oy, ox), (sz, sy, sx)
    compression = ctx.q.get("compression", "")
    nbytes = sx * sy * sz * inst.dtype.itemsize
    if method == "GET":
        if inst.typename == "labelmap" and shape == vol.bs and vol.aligned(start, shape):
            _single_block_get(ctx, vol, start, compression)
        data = vol.read(start, shape)
        # handlers.go handleDataRequest: supervoxels only when the value is exactly "true"
        if inst.is_label and ctx.q.get("supervoxels") != "true":
            data = _apply_mapping(ctx, data)
        raw = data.astype(inst.dtype.newbyteorder("<"), copy=False).tobytes()
        if not inst.is_label or compression == "":
            return Reply(body=raw, content_type="application/octet-stream")
        if compression == "lz4":
            return Reply(body=lz4.block.compress(raw, store_size=False),
                         content_type="application/octet-stream")
        if compression == "gzip":
            return Reply(body=gzip.compress(raw, 1), content_type="application/octet-stream")
        if compression in ("google", "googlegzip"):
            raise DVIDError(f"compression {compression!r} is not served by the voxgate DVID "
                            "test server (it serves lz4 and gzip)")
        # labelmap compression.go writeCompressedToHTTP: "uncompressed" is no option here
        raise DVIDError(f"unknown compression type {_q(compression)}")
    if method != "POST":
        raise DVIDError(f"DVID does not support {method} on the raw endpoint")
    if parts[0] == "isotropic":
        raise DVIDError("can only POST 'raw' not 'isotropic' images")
    end = (ox + sx - 1, oy + sy - 1, oz + sz - 1)
    if inst.is_label:
        # labelmap handlers.go handleDataRequest: uncompressReaderData first (only "", lz4 and
        # gzip), then write.go PutLabels checks the alignment, then the byte count
        raw = _uncompress(body, compression, nbytes)
        if not vol.aligned(start, shape):
            raise DVIDError(f"cannot store labels for data {_q(inst.name)} in non-block aligned "
                            f"geometry {_pt((ox, oy, oz))} -> {_pt(end)}")
        if len(raw) != nbytes:
            raise DVIDError(f"expected {nbytes} bytes for data {_q(inst.name)} label PUT but "
                            f"only received {len(raw)} bytes")
    else:
        # imageblk.go: the body is taken as is (no ?compression= on POST); NewVoxels checks
        # its length before write.go PutVoxels checks the alignment
        raw = body
        if len(raw) != nbytes:
            raise DVIDError(f"voxels data was {len(raw)} bytes, expected {nbytes} bytes for 3d "
                            f"volume {_pt((sx, sy, sz))} at offset {_pt((ox, oy, oz))}")
        if not vol.aligned(start, shape):
            raise DVIDError(f"cannot store voxels in non-block aligned geometry "
                            f"{_pt((ox, oy, oz))} -> {_pt(end)}")
    data = np.frombuffer(raw, dtype=inst.dtype.newbyteorder("<")).reshape(shape)
    with ctx.state.lock:
        if inst.is_label:
            bz, by, bx = vol.bs
            blocks = {(oz // bz + iz, oy // by + iy, ox // bx + ix):
                      np.array(data[iz * bz:(iz + 1) * bz, iy * by:(iy + 1) * by,
                                    ix * bx:(ix + 1) * bx])
                      for iz in range(sz // bz) for iy in range(sy // by)
                      for ix in range(sx // bx)}
            _put_blocks(ctx, blocks, mutate=ctx.q.get("mutate") == "true")
        else:
            vol.write(start, data)
        ctx.mutated()
        ctx.state.save()
    return Reply(body=b"")


def _uncompress(body: bytes, compression: str, nbytes: int) -> bytes:
    """labelmap compression.go uncompressReaderData."""
    if compression == "":
        return body
    if compression == "lz4":
        if not body:
            raise DVIDError("received 0 LZ4 compressed bytes")
        try:
            return bytes(lz4.block.decompress(body, uncompressed_size=nbytes))
        except (lz4.block.LZ4BlockError, ValueError) as exc:
            raise DVIDError(f"lz4 decompression of the POSTed labels failed: {exc}") from None
    if compression == "gzip":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise DVIDError(f"gzip decompression of the POSTed labels failed: {exc}") from None
    raise DVIDError(f"unknown compression type {_q(compression)}")


def _labelblk(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    """The voxel endpoints of a labelblk (labelblk.go ServeHTTP): ``raw`` GET and POST with
    ``?compression=`` "", lz4 or gzip both ways (sendBinaryData / getBinaryData; no scale,
    no supervoxels: query strings it does not know are not looked at), ``label/<x_y_z>``
    and ``GET labels``.  Absent blocks read as 0; a POST must be block aligned
    (imageblk PutVoxels) and indexes nothing."""
    kw = parts[0]
    vol = _Vol(ctx, 0)
    if kw == "label":
        if len(parts) < 2:
            raise DVIDError("DVID requires coord to follow 'label' command")
        x, y, z = _xyz(parts[1], "coordinate")
        v = int(vol.read((z, y, x), (1, 1, 1))[0, 0, 0])
        return Reply(body=f'{{"Label": {v}}}'.encode())
    if kw == "labels":
        if method != "GET":
            raise DVIDError("Batch labels query must be a GET request")
        _check_content_hash(ctx.q.get("hash", ""), body)
        try:
            pts = [(int(c[0]), int(c[1]), int(c[2])) for c in _body_list(body, "labels")]
        except (TypeError, ValueError, IndexError):
            raise DVIDError("Bad labels request JSON: expected [[x,y,z], ...]") from None
        vals = [int(vol.read((z, y, x), (1, 1, 1))[0, 0, 0]) for x, y, z in pts]
        return Reply(body=("[" + ",".join(map(str, vals)) + "]").encode())
    if kw == "blocks":
        raise DVIDError(f"{method} blocks of a labelblk is not served by the voxgate DVID test "
                        "server (DVID's labelblk.go ServeHTTP has this endpoint)")
    if len(parts) < 4:
        raise DVIDError(f"'{kw}' must be followed by shape/size/offset")
    if parts[1] != "0_1_2":
        raise DVIDError(f"the voxgate DVID test server serves only 3-D raw requests (dims "
                        f"0_1_2), not {parts[1]!r}")
    sx, sy, sz = _xyz(parts[2], "size")
    ox, oy, oz = _xyz(parts[3], "offset")
    geom = f"3d volume {_pt((sx, sy, sz))} at offset {_pt((ox, oy, oz))}"
    if min(sx, sy, sz) <= 0:
        raise DVIDError(f"Illegal geometry requested: {geom}")
    compression = ctx.q.get("compression", "")
    nbytes = sx * sy * sz * 8
    start, shape = (oz, oy, ox), (sz, sy, sx)
    if method == "GET":
        raw = vol.read(start, shape).astype("<u8", copy=False).tobytes()
        if compression == "":
            out = raw
        elif compression == "lz4":
            out = lz4.block.compress(raw, store_size=False)
        elif compression == "gzip":
            out = gzip.compress(raw, 1)
        elif compression in ("google", "googlegzip"):
            raise DVIDError(f"compression {compression!r} is not served by the voxgate DVID "
                            "test server (it serves lz4 and gzip)")
        else:
            raise DVIDError(f"unknown compression type {_q(compression)}")
        return Reply(body=out, content_type="application/octet-stream")
    if method != "POST":
        raise DVIDError(f"DVID does not support {method} on the raw endpoint")
    if kw == "isotropic":
        raise DVIDError("can only POST 'raw' not 'isotropic' images")
    data = _uncompress(body, compression, nbytes)  # (getBinaryData: the same three)
    if len(data) != nbytes:
        raise DVIDError(f"labels data was {len(data)} bytes, expected {nbytes} bytes for "
                        f"{geom}")
    if not vol.aligned(start, shape):
        raise DVIDError(f"cannot store voxels in non-block aligned geometry "
                        f"{_pt((ox, oy, oz))} -> {_pt((ox + sx - 1, oy + sy - 1, oz + sz - 1))}")
    with ctx.state.lock:
        vol.write(start, np.frombuffer(data, dtype="<u8").reshape(shape))
        ctx.mutated()
        ctx.state.save()
    return Reply(body=b"")
