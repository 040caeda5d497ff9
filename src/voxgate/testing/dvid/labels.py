"""The labelmap/labelarray endpoints of the DVID test server: label indexes, mappings,
sparse volumes, merges/splits, new labels and compressed blocks.

The bookkeeping they share (mappings, label indexes, runs, new labels) is in
:mod:`.labelindex`."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import lz4.block
import numpy as np

from ...formats.dvid_block import (
    DVIDFormatError,
    decode_label_block,
    decode_rles,
    encode_label_block,
    encode_rles,
    pack_block_records,
    unpack_block_records,
)
from ...formats.dvid_proto import (
    ProtobufError,
    decode_mapping_ops,
)
from .grid import _pt, _scale, _Vol, _xyz
from .labelindex import (
    _apply_mapping,
    _as_label,
    _body_list,
    _bounds,
    _coords,
    _downres,
    _index,
    _label_arg,
    _mapping,
    _new_labels,
    _note_labels,
    _points,
    _put_blocks,
    _runs,
    _supervoxels_of,
    _uint,
)
from .model import MAX_LABEL, DVIDError, Reply, _Ctx, _json, _q

#: The keywords each label type's ServeHTTP switch answers (labelmap.go and labelarray.go
#: ``(d *Data) ServeHTTP``); any other keyword reaches its ``default:``, server/web.go
#: BadAPIRequest.  A labelarray has no size, sizes, listlabels, lastmod, supervoxels, mapping,
#: mappings, cleave, renumber, set-nextlabel, extents or tags.
DVID_ENDPOINTS: dict[str, frozenset[str]] = {
    "labelarray": frozenset({
        "help", "metadata", "resolution", "info", "specificblocks", "sync", "label", "labels",
        "blocks", "pseudocolor", "raw", "isotropic", "sparsevol-size", "sparsevol",
        "sparsevol-by-point", "sparsevol-coarse", "sparsevols-coarse", "maxlabel", "nextlabel",
        "split", "split-coarse", "merge"}),
    "labelmap": frozenset({
        "help", "metadata", "extents", "resolution", "map-stats", "info", "tags",
        "specificblocks", "sync", "label", "labels", "existing-labels", "listlabels", "mapping",
        "supervoxel-splits", "blocks", "ingest-supervoxels", "pseudocolor", "raw", "isotropic",
        "lastmod", "supervoxels", "supervoxel-sizes", "size", "sizes", "sparsevol-size",
        "sparsevol", "sparsevol-by-point", "sparsevol-coarse", "sparsevols-coarse", "fvdb",
        "maxlabel", "nextlabel", "set-nextlabel", "split-supervoxel", "cleave", "split", "merge",
        "renumber", "proximity", "index-version", "index", "indices", "indices-compressed",
        "mappings", "history", "mutations", "mutations-range"}),
    # labelblk.go ServeHTTP
    "labelblk": frozenset({
        "help", "metadata", "resolution", "info", "sync", "label", "labels", "blocks",
        "pseudocolor", "raw", "isotropic"}),
}


def _bad_api_call(ctx: _Ctx) -> DVIDError:
    """server/web.go BadAPIRequest: 400, the path, the instance name (Go's %q) and the help
    URL of the type on DVID's configured host (here: the Host the request was sent to)."""
    host = ctx.headers.get("host", "localhost:8000")
    return DVIDError(f"Bad API call ({ctx.path}) for data {_q(ctx.inst.name)}.  See API help "
                     f"at http://{host}/api/help/{ctx.inst.typename}", raw=True)


def _labels(ctx: _Ctx, method: str, parts: list[str], body: bytes,
            not_found: DVIDError) -> Reply:
    kw = parts[0]
    inst = ctx.inst
    is_map = inst.typename == "labelmap"
    if not is_map and kw in ("maxlabel", "nextlabel") and method != "GET":
        # labelarray.go handleMaxlabel / handleNextlabel: GET only; labelarray ids are not
        # handed out (DVID's labelarray has no POST nextlabel, set-nextlabel or POST maxlabel)
        if kw == "nextlabel" and method == "POST":
            raise DVIDError("POST on maxlabel is not supported yet.\n")
        raise DVIDError(f"Unknown action {_q(method)} requested: {_go_url(ctx)}\n")
    if not is_map and kw == "nextlabel":
        return Reply(body=json.dumps({"nextlabel": inst.max_repo_label + 1}).encode())
    if kw == "label" and method == "GET":
        if len(parts) < 2:
            raise DVIDError("DVID requires coord to follow 'label' command")
        x, y, z = _xyz(parts[1], "coordinate")
        return Reply(body=json.dumps({"Label": _points(ctx, [(x, y, z)])[0]}).encode())
    if kw == "labels" and method == "GET":
        pts = _coords(body)
        return Reply(body=("[" + ",".join(str(v) for v in _points(ctx, pts)) + "]").encode())
    if kw == "maxlabel":
        if method == "GET":
            v = str(ctx.version)
            if v not in inst.max_label:
                raise DVIDError(f"No maximum label found for {inst.name} version {ctx.version}")
            return Reply(body=json.dumps({"maxlabel": inst.max_label[v]}).encode())
        if method == "POST" and len(parts) >= 2:
            n = _uint(parts[1])
            if n == 0 or n > MAX_LABEL:
                raise DVIDError(f"max label {n} must be between 1 and 2^48")
            with ctx.state.lock:
                _note_labels(ctx, n)
                ctx.state.save()
            return Reply(body=b"")
    if kw == "nextlabel":
        if method == "GET":
            n = inst.next_label + 1 if inst.next_label else inst.max_repo_label + 1
            return Reply(body=json.dumps({"nextlabel": n}).encode())
        if method == "POST":
            if len(parts) < 2:
                raise DVIDError("DVID requires number of requested labels to follow POST "
                                "/nextlabel")
            count = _uint(parts[1])
            if count < 1:
                raise DVIDError(f"cannot request {count} new labels, must be 1 or more")
            with ctx.state.lock:
                start, end = _new_labels(ctx, count)
                ctx.state.save()
            return Reply(body=json.dumps({"start": start, "end": end}).encode())
    if kw == "set-nextlabel" and method == "POST" and len(parts) >= 2:
        n = _uint(parts[1])
        if n == 0:
            raise DVIDError("Label 0 is protected background value and cannot be used as next "
                            "label.")
        with ctx.state.lock:
            inst.next_label = n
            ctx.state.save()
        return Reply(body=b"")
    if kw in ("blocks", "specificblocks"):
        return _blocks(ctx, method, parts, body)
    if kw == "size" and method == "GET":
        label = _label_arg(parts, "size")
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        idx = _index(ctx)
        n = sum(sum(idx[sv].values()) for sv in svs)
        if not n:
            return Reply(404, b"", "text/plain")
        return Reply(body=json.dumps({"voxels": n}).encode())
    if kw == "sizes" and method == "GET":
        labels = [_as_label(v) for v in _body_list(body, "sizes")]
        idx = _index(ctx)
        sv_mode = ctx.flag("supervoxels")
        m = {} if sv_mode else _mapping(ctx)
        totals: dict[int, int] = {}
        for sv, blocks in idx.items():
            b = sv if sv_mode else m.get(sv, sv)
            totals[b] = totals.get(b, 0) + sum(blocks.values())
        return Reply(body=("[" + ",".join(str(totals.get(lab, 0)) for lab in labels) + "]")
                     .encode())
    if kw == "supervoxels" and method == "GET" and is_map:
        label = _label_arg(parts, "supervoxels")
        sv_list = sorted(_supervoxels_of(ctx, label, False))
        if not sv_list:
            return Reply(404, b"", "text/plain")
        return Reply(body=("[" + ",".join(map(str, sv_list)) + "]").encode())
    if kw == "lastmod" and method == "GET":
        label = _label_arg(parts, "lastmod")
        if not _supervoxels_of(ctx, label, False):
            return Reply(404, b"", "text/plain")
        for anc in ctx.ancestry:
            if str(anc) in inst.last_mod:
                return _json(inst.last_mod[str(anc)])
        return _json({"mutation id": 0, "last mod user": "", "last mod app": "",
                      "last mod time": ""})
    if kw == "sparsevol-size" and method == "GET":
        label = _label_arg(parts, "sparsevol-size")
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        idx = _index(ctx)
        bset = {b for sv in svs for b in idx[sv]}
        if not bset:
            return Reply(404, b"", "text/plain")
        bz, by, bx = inst.block_size[2], inst.block_size[1], inst.block_size[0]
        lo = [min(b[i] for b in bset) for i in range(3)]
        hi = [max(b[i] for b in bset) for i in range(3)]
        text = (f'"numblocks": {len(bset)}, '
                f'"minvoxel": [{lo[2] * bx}, {lo[1] * by}, {lo[0] * bz}], '
                f'"maxvoxel": [{(hi[2] + 1) * bx - 1}, {(hi[1] + 1) * by - 1}, '
                f'{(hi[0] + 1) * bz - 1}]}}')
        if not is_map:
            # labelarray.go handleSparsevolSize: no voxel count (its label index, labelidx.go
            # Meta, keeps blocks only), and sent as application/octet-stream
            return Reply(body=("{" + text).encode(), content_type="application/octet-stream")
        n = sum(sum(idx[sv].values()) for sv in svs)
        return Reply(body=(f'{{"voxels": {n}, ' + text).encode())
    if kw == "sparsevol" and is_map and method == "POST":
        # handlers.go handleSparsevol: the label is parsed, then POST is refused (400)
        _label_arg(parts, kw)
        raise DVIDError("POST of sparsevol not currently implemented")
    if kw in ("sparsevol", "sparsevol-coarse") and method in ("GET", "HEAD"):
        label = _label_arg(parts, kw)
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        lo, hi = _bounds(ctx)
        if kw == "sparsevol-coarse":
            idx = _index(ctx)
            bs = (inst.block_size[2], inst.block_size[1], inst.block_size[0])
            blist = sorted({b for sv in svs for b in idx[sv]
                            if all(lo[i] // bs[i] <= b[i] <= hi[i] // bs[i] for i in range(3))})
            if not blist:
                return Reply(404, b"", "text/plain")
            runs: list[list[int]] = []
            for z, y, x in blist:
                if runs and runs[-1][1] == y and runs[-1][2] == z and \
                        runs[-1][0] + runs[-1][3] == x:
                    runs[-1][3] += 1
                else:
                    runs.append([x, y, z, 1])
            return Reply(body=encode_rles(np.array(runs)),
                         content_type="application/octet-stream")
        scale = _scale(ctx)
        if method == "HEAD":
            found = bool(svs) and len(_runs(ctx, svs, scale, lo, hi)) > 0
            return Reply(200 if found else 204, b"", "text/html")
        runs_arr = _runs(ctx, svs, scale, lo, hi) if svs else np.zeros((0, 4), np.int32)
        if not len(runs_arr):
            return Reply(404, b"", "text/plain")
        # labelmap.go svformatFromQueryString: "srles", "blocks", and any other value rles
        fmt = ctx.q.get("format", "rles")
        if fmt not in ("srles", "blocks"):
            fmt = "rles"
        if fmt == "blocks":
            raise DVIDError(f"sparsevol format {fmt!r} is not served by the voxgate DVID test "
                            "server (it serves rles and srles)")
        data = encode_rles(runs_arr, header=fmt == "rles")
        comp = ctx.q.get("compression", "")
        if comp == "gzip":
            data = gzip.compress(data, 1)
        elif comp:
            raise DVIDError(f"sparsevol compression {comp!r} is not served by the voxgate DVID "
                            "test server (it serves gzip)")
        return Reply(body=data, content_type="application/octet-stream")
    if kw == "listlabels" and method == "GET":
        idx = _index(ctx)
        m = _mapping(ctx)
        totals: dict[int, int] = {}  # type: ignore[no-redef]
        for sv, blocks in idx.items():
            b = m.get(sv, sv)
            totals[b] = totals.get(b, 0) + sum(blocks.values())
        # handlers.go handleListLabels: strconv.ParseUint of each (400), number capped at 10M
        start = _uint(ctx.q["start"]) if ctx.q.get("start") else 0
        number = min(_uint(ctx.q["number"]), 10_000_000) if ctx.q.get("number") else 10_000_000
        keys = [k for k in sorted(totals) if k >= start][:number]
        if ctx.flag("sizes"):
            arr = np.array([[k, totals[k]] for k in keys], dtype="<u8").reshape(-1)
        else:
            arr = np.array(keys, dtype="<u8")
        return Reply(body=arr.tobytes(), content_type="application/octet-stream")
    if is_map and kw == "mapping":
        # handlers.go handleMapping: vcache.go MappedLabels answers each id's entry in the
        # mapping (the newest along the node's ancestry; 0 for a supervoxel a split retired,
        # a cleaved body's id, a renumber's new id) and the id itself where it has none.
        # Unless ?nolookup=true (that exact string), labelidx.go verifyMappings then checks
        # each id without an entry against the label index: one with no voxels answers 0
        if method != "GET":
            raise DVIDError("Batch mapping query must be a GET request")
        _check_content_hash(ctx.q.get("hash", ""), body)
        asked = [_as_label(v) for v in _body_list(body, "mapping")]
        m = _mapping(ctx)
        if ctx.q.get("nolookup") == "true":
            out = [m.get(sv, sv) for sv in asked]
        else:
            idx = _index(ctx)
            out = [m.get(sv, sv if sv and sv in idx else 0) for sv in asked]
        return Reply(body=("[" + ",".join(map(str, out)) + "]").encode())
    if is_map and kw == "mappings":
        if method == "GET":
            m = _mapping(ctx)
            pairs = sorted((sv, b) for sv, b in m.items() if sv != b)
            if ctx.q.get("format") == "binary":
                return Reply(body=np.array(pairs, dtype="<u8").reshape(-1).tobytes(),
                             content_type="application/octet-stream")
            return Reply(body="".join(f"{a} {b}\n" for a, b in pairs).encode(),
                         content_type="text/plain")
        if method == "POST":
            try:
                ops = decode_mapping_ops(body)
            except ProtobufError as exc:
                raise DVIDError(f"unable to parse protobuf MappingOps: {exc}") from None
            with ctx.state.lock:
                store = ctx.store("mapping")
                for op in ops:
                    for sv in op.original:
                        store.put(str(sv), ctx.version, struct.pack("<Q", op.mapped))
                ctx.mutated()
            return Reply(body=b"")
    if not is_map and kw == "merge":
        return _array_merge(ctx, method, body)
    if is_map and kw == "merge" and method == "POST":
        labels = [_as_label(v) for v in _body_list(body, "merge")]
        if len(labels) < 2:
            raise DVIDError("Bad merge op JSON: need [target, label, ...] with at least two "
                            "labels")
        target, others = labels[0], labels[1:]
        with ctx.state.lock:
            if target in others:
                raise DVIDError(f"Error on merge: cannot merge label {target} into itself")
            if not _supervoxels_of(ctx, target, False):
                raise DVIDError(f"Error on merge: can't merge into a non-existent label "
                                f"{target}")
            store = ctx.store("mapping")
            for other in others:
                svs = _supervoxels_of(ctx, other, False)
                if not svs:
                    raise DVIDError(f"Error on merge: can't merge non-existent label {other}")
                for sv in svs:
                    store.put(str(sv), ctx.version, struct.pack("<Q", target))
            ctx.mutated()
            ctx.state.save()
            return _json({"MutationID": ctx.repo.mutation_id})
    if is_map and kw == "cleave" and method == "POST":
        label = _label_arg(parts, "cleave")
        svs = {_as_label(v) for v in _body_list(body, "cleave")}
        with ctx.state.lock:
            # mutate.go CleaveLabel takes the new label before it checks anything
            new, _ = _new_labels(ctx, 1)
            ctx.state.save()
            have = _supervoxels_of(ctx, label, False)
            if not have:
                raise DVIDError(f"cannot cleave non-existent label {label}")
            missing = sorted(svs - have)
            if missing:
                raise DVIDError(f"cannot cleave supervoxel {missing[0]}, which does not exist in "
                                f"label {label} ({ctx.inst.name})")
            if svs == have:
                raise DVIDError(f"cannot cleave all supervoxels from the label {label}")
            store = ctx.store("mapping")
            for sv in svs:
                store.put(str(sv), ctx.version, struct.pack("<Q", new))
            # equiv.go addCleaveToMapping: the cleaved body's own id maps to 0
            store.put(str(new), ctx.version, struct.pack("<Q", 0))
            ctx.mutated()
            ctx.state.save()
            return _json({"CleavedLabel": new, "MutationID": ctx.repo.mutation_id})
    if is_map and kw == "supervoxel-splits":
        # handlers.go handleSupervoxelSplits -> vcache.go SupervoxelSplitsJSON: for this node
        # and each ancestor (nearest first) that split supervoxels, its UUID then
        # [[mutid, supervoxel, remain, split], ...]
        if method != "GET":
            raise DVIDError("The /supervoxel-splits endpoint is GET only")
        uuids = {n.version: n.uuid for n in ctx.repo.nodes.values()}
        items = []
        for ver in ctx.ancestry:
            recs = inst.sv_splits.get(str(ver))
            if recs:
                items.append(f'"{uuids[ver]}",[' + ",".join(
                    "[" + ",".join(map(str, rec)) + "]" for rec in recs) + "]")
        return Reply(body=("[" + ",".join(items) + "]").encode())
    if not is_map and kw == "split":
        return _array_split(ctx, method, parts, body)
    if not is_map and kw == "split-coarse":
        return _array_split_coarse(ctx, method, parts, body)
    if is_map and kw == "split":
        # handlers.go handleSplit: the AllowLabelmapSplit check, then POST only
        if not getattr(ctx.state, "allow_labelmap_split", True):
            raise DVIDError("Split endpoint deactivated in this DVID server's configuration.")
        if method != "POST":
            raise DVIDError("Split requests must be POST actions.")
        return _split(ctx, parts, body)
    if is_map and kw == "renumber" and method == "POST":
        return _renumber(ctx, body)
    if not is_map:
        raise DVIDError(f"{method} {kw} of a labelarray is not served by the voxgate DVID test "
                        "server (DVID's labelarray.go ServeHTTP has this endpoint)")
    raise not_found


def _go_url(ctx: _Ctx) -> str:
    """Go's %s of the request's r.URL: the path, then ``?`` and the query if it has one."""
    return ctx.path + ("?" + urlencode(ctx.q) if ctx.q else "")


def _go_list(labels: list[int]) -> str:
    """Go's %v of a []uint64."""
    return "[" + " ".join(map(str, labels)) + "]"


def _array_merge(ctx: _Ctx, method: str, body: bytes) -> Reply:
    """``POST merge`` of a labelarray (labelarray.go handleMerge, mutate.go MergeLabels).

    The body is ``[target, merged, ...]`` (labels/events.go MergeTuple.Op: at least two
    labels, none of the merged 0; the target may be any id, one with no voxels too).  DVID
    answers 200 with an empty body and does the work afterwards in a goroutine (processMerge):
    every block of the target's and the merged labels' index is rewritten (mergeBlock,
    labels/compressed.go Block.MergeLabels), the target's index gets those blocks, the merged
    labels' indexes are deleted, and the downres recomputes the coarser scales.  maxlabel does
    not move.  Raw reads see the merge at once (read.go GetLabels applies the merge cache
    until the goroutine ends); this server does the work before it answers.

    Block.MergeLabels zeroes the merged labels' entries, then points their voxels at the
    target's entry, or, in a block without the target, at one of theirs renamed the target: a
    merge whose target is among the merged ids makes every merged voxel of a block that holds
    the target 0 (and the target's index is deleted).  A downres that panics (a negative odd
    block coordinate, labelindex._downres) runs in that goroutine, which has no recover: the
    process dies after answering 200, scale 0 and the indexes rewritten."""
    if method != "POST":
        raise DVIDError("Merge requests must be POST actions.")
    try:
        tup = json.loads(body, parse_int=int)
    except ValueError as exc:
        raise DVIDError(f"Bad merge op JSON: {exc}") from None
    if tup is not None and not isinstance(tup, list):
        raise DVIDError("Bad merge op JSON: json: cannot unmarshal into Go value of type "
                        "labels.MergeTuple")
    labels = [_as_label(v) for v in tup or []]
    if tup is not None and not labels:
        uuid = ctx.repo.nodes[ctx.version].uuid
        raise DVIDError("Panic detected on request voxgate-test/1:\nruntime error: index out "
                        "of range [0] with length 0\nIP: 127.0.0.1, URL: "
                        f"/api/node/{uuid}/{ctx.inst.name}/merge", 500, raw=True)
    if len(labels) < 2:
        raise DVIDError(f"invalid merge tuple {_go_list(labels)}, need at least target and "
                        "to-merge labels")
    if 0 in labels[1:]:
        raise DVIDError(f"invalid merge tuple {_go_list(labels)} -- cannot contain background "
                        "label 0")
    target, merged = labels[0], set(labels[1:])
    wanted = np.array(sorted(merged), dtype=np.uint64)
    with ctx.state.lock:
        idx = _index(ctx)
        vol = _Vol(ctx, 0)
        blocks = sorted({b for lab in (target, *merged) for b in idx.get(lab, {})})
        changed: dict[tuple[int, int, int], np.ndarray] = {}
        for bk in blocks:
            cur = vol.block(*bk)
            if cur is None:
                continue  # (mergeBlock: a nil block panics, recovered and logged)
            new = cur.copy()
            hit = np.isin(cur, wanted)
            new[hit] = 0 if target in merged and (cur == target).any() else target
            changed[bk] = new
            vol.store.put(vol.key(*bk), ctx.version, new)
        store = ctx.store("labelindex")
        for lab in merged:
            store.delete(str(lab), ctx.version, ctx.ancestry)
        if target not in merged and blocks:
            rows = [[*bk, int((changed[bk] == target).sum()) if bk in changed else 0]
                    for bk in blocks]
            store.put(str(target), ctx.version, np.array(rows, dtype=np.int64))
        ctx.mutated()
        ctx.state.save()
        if ctx.inst.max_downres and changed:
            try:
                _downres(ctx, set(changed))
            except DVIDError as exc:
                _die_after_reply(str(exc))
            ctx.mutated()
            ctx.state.save()
    return Reply(body=b"", content_type="text/plain")


def _die_after_reply(panic: str) -> None:
    """A Go panic outside any handler: the process exits (status 2), here just after the
    reply that preceded it has gone out."""
    import os
    import sys
    import threading

    print("panic: " + panic.split("\n")[1], file=sys.stderr, flush=True)
    threading.Timer(0.3, os._exit, args=(2,)).start()


def _check_content_hash(want: str, body: bytes) -> None:
    """labelmap.go checkContentHash: ``?hash=`` must be the MD5 (hex) of the request body."""
    if not want:
        return
    got = hashlib.md5(body).hexdigest()
    if got != want:
        raise DVIDError(f"content hash incorrect.  expected {want}, got {got}")


def _split(ctx: _Ctx, parts: list[str], body: bytes) -> Reply:
    """``POST split/<label>`` as DVID's labelmap does it (mutate.go SplitLabels): the voxels
    of the posted sparse volume get a new body; every supervoxel under it is replaced by two
    new supervoxels, the split part (mapped to the new body) and the remainder (mapped to the
    old body) in every block that holds it, and the old supervoxel maps to 0."""
    if not getattr(ctx.state, "allow_labelmap_split", True):
        raise DVIDError("Split endpoint deactivated in this DVID server's configuration.")
    label = _split_label_arg(parts)
    with ctx.state.lock:
        # mutate.go SplitLabels takes the new body's label before it reads the split, then
        # checks the split's size before the label index
        to_label, _ = _new_labels(ctx, 1)
        ctx.state.save()
        try:
            runs = decode_rles(body).astype(np.int64)
        except DVIDFormatError as exc:
            raise DVIDError(f"split label {label}: {exc}") from None
        size = int(runs[:, 3].sum()) if len(runs) else 0
        if size == 0:
            raise DVIDError(f"split label {label}: bad split since split volume was zero voxels")
        idx = _index(ctx)
        have = _supervoxels_of(ctx, label, False)
        if not have:
            raise DVIDError(f"split label {label}: unable to modify split index for data "
                            f"{_q(ctx.inst.name)}: missing label {label}")
        total = sum(sum(idx[sv].values()) for sv in have)
        if size >= total:
            raise DVIDError(f"split label {label}: split volume of {size} voxels >= {total} of "
                            f"label {label}")
        vol = _Vol(ctx, 0)
        masks = _partition(runs, vol.bs)
        splits: dict[int, tuple[int, int]] = {}
        for bk in sorted(masks):
            blk = vol.block(*bk)
            if blk is None:
                raise DVIDError(f"split label {label}: split on block {bk[::-1]} attempted but "
                                "block doesn't exist")
            for sv in np.unique(blk[masks[bk]]).tolist():
                if sv == 0:
                    continue
                if sv not in have:
                    raise DVIDError(f"split label {label}: supervoxel {sv} was part of split "
                                    f"volume yet was not part of body label {label}")
                if sv not in splits:
                    a, _ = _new_labels(ctx, 1)
                    b, _ = _new_labels(ctx, 1)
                    splits[sv] = (a, b)
        changed: dict[tuple[int, int, int], np.ndarray] = {}
        for bk in sorted({b for sv in splits for b in idx.get(sv, {})}):
            cur = vol.block(*bk)
            if cur is None:
                continue
            new = cur.copy()
            sel = masks.get(bk)
            for sv, (a, b) in splits.items():
                hit = cur == sv
                if sel is None:
                    new[hit] = b
                else:
                    new[hit & sel] = a
                    new[hit & ~sel] = b
            changed[bk] = new
        # splitPass2 rewrites the blocks, splitIndex keeps the index exact, and the mutation's
        # downres recomputes the coarser scales before the request returns
        _put_blocks(ctx, changed, mutate=True)
        store = ctx.store("mapping")
        mutid = ctx.repo.mutation_id + 1  # the id ctx.mutated() gives this split
        for sv, (a, b) in splits.items():
            store.put(str(a), ctx.version, struct.pack("<Q", to_label))
            store.put(str(b), ctx.version, struct.pack("<Q", label))
            store.put(str(sv), ctx.version, struct.pack("<Q", 0))
            ctx.inst.sv_splits.setdefault(str(ctx.version), []).append([mutid, sv, b, a])
        ctx.mutated()
        ctx.state.save()
        text = f'{{"label": {to_label}, "MutationID": {ctx.repo.mutation_id}}}'
        return Reply(body=text.encode(), content_type="application/json")


def _split_label_arg(parts: list[str]) -> int:
    """labelmap handlers.go / labelarray.go handleSplit: the label after ``split``."""
    if len(parts) < 2:
        raise DVIDError("ERROR: DVID requires label ID to follow 'split' command")
    label = _uint(parts[1])
    if label == 0:
        raise DVIDError("Label 0 is protected background value and cannot be used as sparse "
                        "volume.\n".rstrip())
    return label


def _read_rles(body: bytes) -> np.ndarray:
    """dvid/volumes.go ReadRLEs: an 8-byte header whose first byte must be 0 (the rest --
    dimensions, run axis, voxel count -- is not looked at), a uint32 span count, then that
    many int32 (x, y, z, length) runs; bytes after them are not read.  Go's io.ReadFull
    errors: ``EOF`` when nothing is left, ``unexpected EOF`` for a part.  (n, 4) int64."""
    def short(have: int) -> DVIDError:
        return DVIDError("EOF" if have == 0 else "unexpected EOF")

    if len(body) < 8:
        raise short(len(body))
    if body[0] != 0:
        raise DVIDError(f"sparse vol is not binary: {body[0]}")
    if len(body) < 12:
        raise short(len(body) - 8)
    (nspans,) = struct.unpack_from("<I", body, 8)
    need = 12 + 16 * nspans
    if len(body) < need:
        raise short((len(body) - 12) % 4)  # (binary.Read takes the int32s one by one)
    return np.frombuffer(body, "<i4", count=4 * nspans, offset=12).reshape(-1, 4).astype(
        np.int64)


def _array_split(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    """``POST split/<label>[?splitlabel=X]`` of a labelarray (labelarray.go handleSplit,
    mutate.go SplitLabels, processSplit, splitBlock, splitIndices).

    The new label is taken first (``NewLabel``: maxlabel and nextlabel move; or the given
    ``splitlabel``, which maxlabel follows), then the RLE body is read.  Nothing checks that
    the label exists, that the runs are its voxels or that they leave any: in each block the
    runs touch (``RLEs.Partition``, the grid through 0), the label's voxels among them get
    the new label (labels/compressed.go splitSlow), and other voxels stay; a block that was
    never written, or that does not hold the label, is left alone.  The label index then
    drops, for the old label, the blocks it no longer holds, and gets, for the new one, every
    block the runs touch (those left alone too).  The coarser scales are recomputed before
    the answer ``{"label": N}`` (a downres panic answers 500, scale 0 and the index
    rewritten).  A ``splitlabel`` that does not parse is answered 400 and the split still
    runs (see :func:`_with_splitlabel`)."""
    if method != "POST":
        raise DVIDError("Split requests must be POST actions.")
    return _with_splitlabel(ctx, _split_label_arg(parts), body, _array_split_run)


def _array_split_coarse(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    """``POST split-coarse/<label>[?splitlabel=X]`` of a labelarray (labelarray.go
    handleSplitCoarse, mutate.go SplitCoarseLabels, processSplit with ``delta.Split == nil``,
    splitBlock's ``ReplaceLabel`` branch, splitIndices).

    As :func:`_array_split`, but the runs are of **block** coordinates and whole blocks
    move: the label is taken (or ``splitlabel``), the runs read (an error answers 400
    ``split-coarse: <err>``), and in every listed block that exists each voxel of the label
    gets the new label (``Block.ReplaceLabel``; a block without the label is stored again
    unchanged, and both go to the downres); a block never written is skipped.  The old
    label's index loses every listed block and the new label's gets every listed block,
    whatever they hold (splitIndices with ``deleteBlks = SortedBlocks``).  The downres runs
    before the answer ``{"label": N}``.  A run of negative length makes Go's block slice
    (``make(dvid.IZYXSlice, numBlocks)``, ``numBlocks`` the uint64 sum of the lengths) too
    long or too short: a panic, answered 500, after the label was taken."""
    if method != "POST":
        raise DVIDError("Split-coarse requests must be POST actions.")
    return _with_splitlabel(ctx, _split_label_arg(parts), body, _array_split_coarse_run)


def _with_splitlabel(ctx: _Ctx, from_label: int, body: bytes,
                     run: Callable[[_Ctx, int, int, bytes], Reply]) -> Reply:
    """labelarray.go handleSplit / handleSplitCoarse: ``?splitlabel=`` by strconv.ParseUint
    (ASCII digits only; a syntax error gives 0, so a new label; an overflow gives 2^64-1,
    which is then used).  A value that does not parse is answered 400 with no ``return``
    after it: the split still runs, and its answer (or its error) follows the error text."""
    split_label, prefix = 0, ""
    text = ctx.q.get("splitlabel", "")
    if text:
        if text.isascii() and text.isdigit() and int(text) < 2**64:
            split_label = int(text)
        else:
            if text.isascii() and text.isdigit():
                split_label = 2**64 - 1  # strconv.ErrRange: the value is the maximum
            prefix = (f"Bad parameter for 'splitlabel' query string ({_q(text)}).  Must be "
                      f"uint64.\n ({ctx.path}).\n")
    try:
        reply = run(ctx, from_label, split_label, body)
    except DVIDError as exc:
        if not prefix:
            raise
        msg = str(exc) if exc.raw else f"{exc} ({ctx.path})."
        # (the status stays the first http.Error's 400; a panic's 500 comes too late)
        return Reply(400, (prefix + msg + "\n").encode(), "text/plain; charset=utf-8")
    if prefix:  # (http.Error wrote the status and its text; the JSON follows)
        return Reply(400, prefix.encode() + reply.body, "text/plain; charset=utf-8")
    return reply


def _take_split_label(ctx: _Ctx, split_label: int) -> int:
    """SplitLabels / SplitCoarseLabels: the given label (updateMaxLabel: maxlabel follows
    it; nothing else is checked) or ``NewLabel``."""
    if split_label:
        _note_labels(ctx, split_label)
        return split_label
    return _new_labels(ctx, 1)[0]


def _array_split_coarse_run(ctx: _Ctx, from_label: int, split_label: int, body: bytes
                            ) -> Reply:
    with ctx.state.lock:
        to_label = _take_split_label(ctx, split_label)
        ctx.state.save()
        try:
            runs = _read_rles(body)
        except DVIDError as exc:
            raise DVIDError(f"split-coarse: {exc}") from None
        lengths = [int(n) for n in runs[:, 3].tolist()]
        num_blocks = sum(n % 2**64 for n in lengths) % 2**64  # splits.Stats(), as uint64
        listed = sum(max(n, 0) for n in lengths)  # (a run of length <= 0 lists no block)
        if num_blocks != listed:
            ctx.mutated()  # (NewMutationID ran before the panic)
            ctx.state.save()
            uuid = ctx.repo.nodes[ctx.version].uuid
            why = ("makeslice: len out of range" if num_blocks >= 2**44 else
                   f"index out of range [{num_blocks}] with length {num_blocks}")
            raise DVIDError(f"Panic detected on request voxgate-test/1:\nruntime error: {why}"
                            f"\nIP: 127.0.0.1, URL: /api/node/{uuid}/{ctx.inst.name}/"
                            f"split-coarse/{from_label}", 500, raw=True)
        if listed > 1 << 20:
            raise DVIDError(f"a coarse split of {listed} blocks is not served by the voxgate "
                            "DVID test server (it takes up to 2^20)")
        blocks = sorted({(z, y, x + i) for x, y, z, n in runs.tolist() for i in range(n)})
        vol = _Vol(ctx, 0)
        changed: dict[tuple[int, int, int], np.ndarray] = {}
        for bk in blocks:  # splitBlock, coarse: ReplaceLabel
            cur = vol.block(*bk)
            if cur is None:
                continue  # "split on block ... attempted but block doesn't exist"
            new = cur.copy()
            new[cur == from_label] = to_label
            changed[bk] = new
            vol.store.put(vol.key(*bk), ctx.version, new)
        # splitIndices: every listed block leaves the old label's index, then joins the new
        # label's (counts kept where known: the voxels of the new label, 0 where none)
        idx = _index(ctx)
        store = ctx.store("labelindex")
        old_rows = {bk: c for bk, c in idx.get(from_label, {}).items() if bk not in blocks}
        _put_index(ctx, store, from_label, old_rows)
        new_rows = dict(old_rows) if to_label == from_label else dict(idx.get(to_label, {}))
        for bk in blocks:
            blk = changed.get(bk)
            new_rows[bk] = int((blk == to_label).sum()) if blk is not None else 0
        _put_index(ctx, store, to_label, new_rows)
        _saved_then_downres(ctx, changed)
    return Reply(body=f'{{"label": {to_label}}}'.encode(), content_type="application/json")


def _saved_then_downres(ctx: _Ctx, changed: Mapping[Any, Any]) -> None:
    """A labelarray split's end: the mutation saved, then the changed blocks' downres
    (downres.Mutation.Execute, in the handler), saved whatever it does."""
    ctx.mutated()
    ctx.state.save()
    if ctx.inst.max_downres and changed:
        try:
            _downres(ctx, set(changed))
        finally:
            ctx.mutated()
            ctx.state.save()


def _put_index(ctx: _Ctx, store: Any, label: int, rows: dict[tuple[int, int, int], int]
               ) -> None:
    """A labelarray label index: its (block, count) rows, deleted when none is left."""
    if rows:
        store.put(str(label), ctx.version, np.array(
            [[*bk, c] for bk, c in sorted(rows.items())], dtype=np.int64))
    else:
        store.delete(str(label), ctx.version, ctx.ancestry)


def _array_split_run(ctx: _Ctx, from_label: int, split_label: int, body: bytes) -> Reply:
    with ctx.state.lock:
        to_label = _take_split_label(ctx, split_label)
        ctx.state.save()
        try:
            runs = _read_rles(body)
        except DVIDError as exc:
            raise DVIDError(f"split label {from_label} -> {split_label}: {exc}") from None
        vol = _Vol(ctx, 0)
        masks = _partition(runs, vol.bs)  # dvid.RLEs.Partition
        idx = _index(ctx)
        old_rows = dict(idx.get(from_label, {}))
        new_rows = dict(idx.get(to_label, {}))
        changed: dict[tuple[int, int, int], np.ndarray] = {}
        for bk, sel in masks.items():  # splitBlock
            cur = vol.block(*bk)
            if cur is None:
                continue  # "split on block ... attempted but block doesn't exist"
            hold = cur == from_label
            if not hold.any():
                continue  # "Attempt to split missing label"
            new = cur.copy()
            new[hold & sel] = to_label
            changed[bk] = new
            vol.store.put(vol.key(*bk), ctx.version, new)
        # splitIndices: the old label loses the blocks it no longer holds, then the new label
        # gets every block of the split (the index keeps blocks; counts kept where known)
        for bk, new in changed.items():
            kept = int((new == from_label).sum())
            if kept:
                old_rows[bk] = kept
            else:
                old_rows.pop(bk, None)
        for bk in masks:
            blk = changed.get(bk)
            if blk is None:
                blk = vol.block(*bk)
            new_rows[bk] = int((blk == to_label).sum()) if blk is not None else 0
        store = ctx.store("labelindex")
        for lab, rows in ((from_label, old_rows), (to_label, new_rows)):
            if rows:
                store.put(str(lab), ctx.version, np.array(
                    [[*bk, c] for bk, c in sorted(rows.items())], dtype=np.int64))
            else:
                store.delete(str(lab), ctx.version, ctx.ancestry)
        _saved_then_downres(ctx, changed)
    return Reply(body=f'{{"label": {to_label}}}'.encode(), content_type="application/json")


def _renumber(ctx: _Ctx, body: bytes) -> Reply:
    """``POST renumber``: ``[new1, old1, new2, old2, ...]``, each old body gets the new id."""
    nums = [_as_label(v) for v in _body_list(body, "renumber")]
    if len(nums) % 2:
        raise DVIDError("renumber: expected an even number of labels [new1, old1, ...]")
    with ctx.state.lock:
        store = ctx.store("mapping")
        for new, old in zip(nums[::2], nums[1::2], strict=True):
            if new == 0 or old == 0:
                raise DVIDError("renumber: label 0 is protected background and cannot be used")
            if new == old:
                continue
            svs = _supervoxels_of(ctx, old, False)
            if not svs:
                raise DVIDError(f"renumber: label {old} does not exist")
            if _supervoxels_of(ctx, new, False):
                raise DVIDError(f"renumber: label {new} already exists")
            # equiv.go addRenumberToMapping: the new id, unless already mapped, maps to 0
            # first (a supervoxel of the body with that id then maps to itself); mutate.go
            # RenumberLabels does not touch maxlabel
            if store.get(str(new), ctx.ancestry) is None:
                store.put(str(new), ctx.version, struct.pack("<Q", 0))
            for sv in svs:
                store.put(str(sv), ctx.version, struct.pack("<Q", new))
            ctx.mutated()
        ctx.state.save()
    return Reply(body=b"")


def _blocks(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    vol = _Vol(ctx, _scale(ctx))
    bz, by, bx = vol.bs
    if method == "POST" and parts[0] == "blocks":
        # write.go storeBlocks
        downres = ctx.q.get("downres") == "true"
        if downres and vol.scale != 0:
            raise DVIDError("cannot downscale blocks of scale > 0")
        comp = ctx.q.get("compression", "")
        if comp not in ("", "blocks"):
            raise DVIDError('compression must be "blocks" (default) at this time')
        if ctx.inst.compression.split(":")[0] != "gzip":
            raise DVIDError(f"labelmap {_q(ctx.inst.name)} cannot accept GZIP /blocks POST "
                            f"since it internally uses {ctx.inst.compression}")
        items = []
        try:
            for (x, y, z), record in unpack_block_records(body):
                try:
                    raw = gzip.decompress(record)
                except (OSError, EOFError, zlib.error) as exc:
                    raise DVIDError(f"block ({x},{y},{z}) is not gzip data: {exc}") from None
                items.append(((z, y, x), decode_label_block(raw, vol.bs)))
        except DVIDFormatError as exc:
            raise DVIDError(f"bad block data: {exc}") from None
        with ctx.state.lock:
            if vol.scale == 0:  # indexed as an ingest (never against the previous blocks)
                _put_blocks(ctx, {zyx: blk for zyx, blk in items}, mutate=False,
                            index=ctx.q.get("noindexing") != "true", downres=downres)
            else:  # coarser scales are stored as given: no index, no max label
                for (z, y, x), blk in items:
                    vol.write((z * bz, y * by, x * bx), blk)
            ctx.mutated()
            ctx.state.save()
        return Reply(body=b"")
    if method != "GET":
        raise DVIDError(f"DVID does not accept the {method} action on the '{parts[0]}' endpoint")
    if parts[0] == "blocks":
        if len(parts) < 3:
            raise DVIDError("must specify size and offset with GET /blocks endpoint")
        sx, sy, sz = _xyz(parts[1], "size")
        ox, oy, oz = _xyz(parts[2], "offset")
        if not vol.aligned((oz, oy, ox), (sz, sy, sx)):
            raise DVIDError(f"cannot use labels via 'blocks' endpoint in non-block aligned "
                            f"geometry {_pt((ox, oy, oz))} -> "
                            f"{_pt((ox + sx - 1, oy + sy - 1, oz + sz - 1))}")
        coords = [(z, y, x) for z in range(oz // bz, (oz + sz) // bz)
                  for y in range(oy // by, (oy + sy) // by)
                  for x in range(ox // bx, (ox + sx) // bx)]
        default = "lz4"
    else:
        text = ctx.q.get("blocks", "")
        try:
            nums = [int(v) for v in text.split(",") if v]
        except ValueError:
            raise DVIDError(f"bad blocks list {text!r}") from None
        if len(nums) % 3:
            raise DVIDError("blocks= must list x,y,z block coordinates in threes")
        coords = [(nums[i + 2], nums[i + 1], nums[i]) for i in range(0, len(nums), 3)]
        default = "blocks"
    comp = ctx.q.get("compression", "") or default
    records = []
    for z, y, x in coords:
        stored = vol.block(z, y, x)
        if stored is None:
            continue
        blk = stored
        if not ctx.flag("supervoxels"):
            blk = _apply_mapping(ctx, blk)
        raw = blk.astype("<u8", copy=False).tobytes()
        if comp == "lz4":
            payload = lz4.block.compress(raw, store_size=False)
        elif comp == "gzip":
            payload = gzip.compress(raw, 1)
        elif comp == "uncompressed":
            payload = raw
        elif comp == "blocks":
            payload = gzip.compress(encode_label_block(blk), 1)
        else:
            raise DVIDError(f"unknown compression {comp!r} for blocks")
        records.append(((x, y, z), payload))
    return Reply(body=pack_block_records(records), content_type="application/octet-stream")


def _partition(runs: np.ndarray, bs: tuple[int, int, int]
               ) -> dict[tuple[int, int, int], np.ndarray]:
    """Runs (x, y, z, length) cut at the block grid (dvid.RLEs.Partition): each block
    (z, y, x) they touch, with a mask of the voxels they cover in it."""
    bz_, by_, bx_ = bs
    masks: dict[tuple[int, int, int], np.ndarray] = {}
    for x, y, z, n in runs.tolist():
        xx, end = x, x + n
        while xx < end:
            bk = (z // bz_, y // by_, xx // bx_)
            stop = min(end, (bk[2] + 1) * bx_)
            m = masks.setdefault(bk, np.zeros(bs, dtype=bool))
            m[z - bk[0] * bz_, y - bk[1] * by_, xx - bk[2] * bx_:stop - bk[2] * bx_] = True
            xx = stop
    return masks
