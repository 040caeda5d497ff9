"""Label queries on a DVID ``labelmap`` or ``labelarray``: points, sizes, mappings, merges,
sparse volumes.

A labelarray serves fewer endpoints than a labelmap (labelarray.go ServeHTTP: no size, sizes,
supervoxels, mapping(s), supervoxel-splits, cleave, renumber, POST nextlabel, and a
sparsevol-size without a voxel count; any other keyword answers 400 "Bad API call").  Each
query a labelarray lacks is computed here from what it has (sparse volumes: exact), or
refused naming the datatype.  A legacy ``labelblk`` has no label index at all (labelblk.go
ServeHTTP: help, metadata, resolution, info, sync, label, labels, blocks, pseudocolor, raw,
isotropic): only its point queries are sent, at its one scale; everything else is refused
before anything is sent."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    redact,
)
from ...formats.dvid_block import (
    DVIDFormatError,
    decode_rles,
    rles_to_coordinates,
)
from ...geometry import Box, Vec, whole_at_least
from .._http import HTTPClient, server_answer
from .client import LabelNotFoundError, _call, answered, answered_int


@dataclass(frozen=True)
class SparsevolSize:
    """``sparsevol-size``: voxel count, block count and a block-accurate bounding Box."""

    voxels: int
    blocks: int
    box: Box


#: the label types with a label index: sparse volumes, sizes, maxlabel, merges and splits
_INDEXED = ("labelmap", "labelarray")
#: the label types whose ``label`` / ``labels`` answer points
_POINTS = ("labelmap", "labelarray", "labelblk")
#: why a type lacks an endpoint, from its ServeHTTP switch
_NOT_SERVED = {
    "labelarray": "labelarray.go ServeHTTP has no such endpoint",
    "labelblk": "labelblk.go ServeHTTP has no label index and serves only help, metadata, "
                "resolution, info, sync, label, labels, blocks, pseudocolor, raw and isotropic",
}


def _zyx_point(p: Iterable[Any]) -> tuple[int, int, int]:
    v = Vec.of(p, "point")
    return (v.z, v.y, v.x)


class DVIDLabels:
    """Label queries on a labelmap / labelarray instance at one node (points are (z, y, x));
    on a labelblk, points only."""

    def __init__(self, client: HTTPClient, node: str, name: str,
                 typename: str | None = None) -> None:
        self.client, self.node, self.name = client, node, name
        self._base = f"/api/node/{node}/{name}"
        self._info: dict[str, Any] | None = None  # GET info, fetched for a merge
        self._typename = typename  # None: read from GET info when first needed

    def __repr__(self) -> str:
        return redact(f"<DVIDLabels {self.client.base_url}/{self.node}/{self.name}>")

    def _q(self, scale: int = 0, supervoxels: bool = False) -> str:
        parts = []
        if scale:
            parts.append(f"scale={int(scale)}")
        if supervoxels:
            parts.append("supervoxels=true")
        return "?" + "&".join(parts) if parts else ""

    @staticmethod
    def _label(label: Any) -> int:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 < int(label) < 2**64:
            raise InvalidRequestError(f"a label is an integer in 1..2^64-1, got {label!r}")
        return int(label)

    @property
    def typename(self) -> str:
        """The instance's DVID datatype (``labelmap``, ``labelarray``), from ``GET info``."""
        if self._typename is None:
            self._typename = str((self._instance_info().get("Base") or {}).get("TypeName", ""))
        return self._typename

    def _is_labelmap(self) -> bool:
        """Whether the instance serves a labelmap's endpoints (else a labelarray's subset)."""
        return self.typename == "labelmap"

    def _refuse(self, what: str, endpoint: str, instead: str = "",
                types: tuple[str, ...] = ("labelmap",)) -> CapabilityNotSupportedError:
        who = f"a {types[0]} serves" if len(types) == 1 else \
            f"{' and '.join(types)} instances serve"
        why = _NOT_SERVED.get(self.typename, "it is not a DVID label type")
        return CapabilityNotSupportedError(
            f"{self.client.base_url}/{self.node}/{self.name} is a DVID {self.typename}, which "
            f"cannot {what}: only {who} {endpoint} ({why}){instead}. Nothing was sent")

    def _need_index(self, what: str, endpoint: str, instead: str = "") -> None:
        """Refuse, before anything is sent, a call only a labelmap or labelarray answers (a
        labelblk answers it 400 "Bad API call", server/web.go BadAPIRequest)."""
        if self.typename not in _INDEXED:
            raise self._refuse(what, endpoint, instead, _INDEXED)

    def _runs_size(self, lab: int) -> int:
        """Voxel count of ``lab`` from its sparse volume (exact; a labelarray has no ``size``
        endpoint and its label index keeps blocks, not voxel counts)."""
        runs = self.sparsevol_runs(lab)
        return int(runs[:, 3].astype(np.int64).sum())

    def _json_list(self, resp: httpx.Response) -> np.ndarray:
        # parse integers exactly: ids above 2^53 must not pass through a float
        doc = answered(resp, "labels", list)
        with server_answer(f"labels: {resp.request.url} answered"):
            return np.array([int(v) for v in doc], dtype=np.uint64)

    def _check_points(self, scale: int) -> None:
        """``label`` / ``labels`` are answered by every label type, but a labelblk holds one
        scale: labelblk.go's handlers read no ``scale=`` and would answer scale 0."""
        if self.typename not in _POINTS:
            raise self._refuse("answer labels at points", "label and labels", types=_POINTS)
        if scale and self.typename == "labelblk":
            raise CapabilityNotSupportedError(
                f"{self.client.base_url}/{self.node}/{self.name} is a DVID labelblk, which "
                f"holds one scale: it cannot answer labels at scale {scale} (labelblk.go "
                "ServeHTTP label / labels read no scale= and answer scale 0; only labelmap and "
                "labelarray instances have coarser scales). Nothing was sent")

    def label_at(self, point: Iterable[Any], *, scale: int = 0,
                 supervoxels: bool = False) -> int:
        z, y, x = _zyx_point(point)
        self._check_points(scale)
        resp = _call(self.client, "GET", f"{self._base}/label/{x}_{y}_{z}"
                     + self._q(scale, supervoxels), what=f"label at (z, y, x) {(z, y, x)}")
        return answered_int(resp, f"label at (z, y, x) {(z, y, x)}", "Label")

    def labels_at(self, points: Iterable[Iterable[Any]], *, scale: int = 0,
                  supervoxels: bool = False) -> np.ndarray:
        pts = [_zyx_point(p) for p in points]
        self._check_points(scale)
        resp = _call(self.client, "GET", f"{self._base}/labels" + self._q(scale, supervoxels),
                     content=json.dumps([[x, y, z] for z, y, x in pts]),
                     what=f"labels at {len(pts)} points")
        return self._json_list(resp)

    def size(self, label: int, *, supervoxels: bool = False) -> int:
        """Voxel count; on a labelarray (no ``size`` endpoint, no supervoxels: each label is
        its own) summed from the label's sparse volume."""
        lab = self._label(label)
        self._need_index("count a label's voxels", "size (a labelarray: sparsevol)")
        if not self._is_labelmap():
            return self._runs_size(lab)
        try:
            resp = _call(self.client, "GET", f"{self._base}/size/{lab}"
                         + self._q(0, supervoxels), what=f"size of label {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}") from None
        return answered_int(resp, f"size of label {lab}", "voxels")

    def sizes(self, labels: Iterable[int], *, supervoxels: bool = False) -> np.ndarray:
        """Voxel counts (0 for labels that do not exist); on a labelarray one sparse volume
        per distinct label."""
        labs = [self._label(v) for v in labels]
        self._need_index("count labels' voxels", "sizes (a labelarray: sparsevol)")
        if not self._is_labelmap():
            got: dict[int, int] = {}
            for lab in dict.fromkeys(labs):
                try:
                    got[lab] = self._runs_size(lab)
                except LabelNotFoundError:
                    got[lab] = 0
            return np.array([got[lab] for lab in labs], dtype=np.uint64)
        resp = _call(self.client, "GET", f"{self._base}/sizes" + self._q(0, supervoxels),
                     content=json.dumps(labs), what=f"sizes of {len(labs)} labels")
        return self._json_list(resp)

    def supervoxels(self, body: int) -> np.ndarray:
        """The body's supervoxels, sorted; a labelarray agglomerates nothing, so a label with
        voxels is its only supervoxel."""
        lab = self._label(body)
        self._need_index("list a body's supervoxels", "supervoxels (a labelarray: sparsevol)")
        if not self._is_labelmap():
            if not self.has_label(lab):
                raise LabelNotFoundError(f"body {lab} has no voxels at node {self.node}")
            return np.array([lab], dtype=np.uint64)
        try:
            resp = _call(self.client, "GET", f"{self._base}/supervoxels/{lab}",
                         what=f"supervoxels of body {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"body {lab} has no voxels at node {self.node}") from None
        return np.sort(self._json_list(resp))

    def mapping(self, supervoxels: Iterable[int], *, nolookup: bool = False) -> np.ndarray:
        """Body of each supervoxel (0 where the supervoxel does not exist).

        ``nolookup=True`` (DVID's ``?nolookup=true``) answers from the mapping alone, without
        DVID's look-up of each unmapped id in the label index (labelidx.go verifyMappings):
        the id itself where the mapping has no entry for it (whether or not it has voxels), 0
        where it maps to 0 (a supervoxel a split retired, a cleaved body's or a renumber's new
        id), else its body.  A labelarray maps nothing: each id is its own body (0 where it has
        no voxels, one ``HEAD sparsevol`` per id; without them under ``nolookup``)."""
        svs = [self._label(v) for v in supervoxels]
        if not nolookup:
            self._need_index("look supervoxels up in a label index",
                             "mapping (a labelarray: sparsevol)",
                             "; nolookup=True answers each id itself, a labelblk mapping nothing")
        if not self._is_labelmap():
            if nolookup:
                return np.array(svs, dtype=np.uint64)
            found = {sv: self.has_label(sv) for sv in dict.fromkeys(svs)}
            return np.array([sv if found[sv] else 0 for sv in svs], dtype=np.uint64)
        resp = _call(self.client, "GET", f"{self._base}/mapping"
                     + ("?nolookup=true" if nolookup else ""), content=json.dumps(svs),
                     what=f"mapping of {len(svs)} supervoxels")
        return self._json_list(resp)

    def mappings(self) -> dict[int, int]:
        """Every non-identity supervoxel -> body mapping at this node (none on a
        labelarray or a labelblk)."""
        if not self._is_labelmap():
            return {}
        resp = _call(self.client, "GET", f"{self._base}/mappings?format=binary",
                     what="the label mapping")
        pairs = np.frombuffer(resp.content, "<u8").reshape(-1, 2)
        return {int(a): int(b) for a, b in pairs}

    def agglomerated(self) -> bool:
        """Whether any supervoxel at this node reads as another body: a mapping that is not
        the identity (merges, cleaves, renumbers) or a supervoxel DVID split (retired: it
        reads as 0, its voxels taken by two new supervoxels).  Never on a labelarray or a
        labelblk."""
        if not self._is_labelmap():
            return False
        if self.mappings():
            return True
        resp = _call(self.client, "GET", f"{self._base}/supervoxel-splits",
                     what="the supervoxel splits")
        # [uuid, [[mutid, supervoxel, remain, split], ...], uuid, [...], ...]
        doc = answered(resp, "the supervoxel splits", list)
        return any(isinstance(item, list) and item for item in doc)

    def merge(self, target: int, others: Iterable[int]) -> int:
        """Merge bodies ``others`` into ``target``; returns the mutation id (0 on a
        labelarray, whose ``POST merge`` answers an empty 200 and names none).

        A labelarray merges in the background after answering (mutate.go MergeLabels); raw
        reads see the merge at once (read.go GetLabels applies DVID's merge cache until the
        block rewrite and the downres are done), point queries (``label_at``) once the
        blocks are rewritten.  Refused before anything is sent: a target among ``others``
        (a labelarray turns those voxels into 0, labels/compressed.go Block.MergeLabels),
        and, on a labelarray with coarser scales, a merge that rewrites a block DVID's
        downres cannot take (its goroutine panics and the DVID server process exits)."""
        tgt = self._label(target)
        rest = [self._label(v) for v in others]
        if not rest:
            raise InvalidRequestError(f"a merge into {tgt} needs at least one other label")
        if tgt in rest:
            raise InvalidRequestError(
                f"cannot merge label {tgt} into itself (others {rest} include the target): "
                "a DVID labelarray would turn its voxels into 0, a labelmap refuses it. "
                "Nothing was merged")
        labs = [tgt, *rest]
        what = f"merging {rest} into {tgt}"
        self._need_index("merge labels", "POST merge")
        self._check_array_merge(labs, what)
        resp = _call(self.client, "POST", f"{self._base}/merge", content=json.dumps(labs),
                     what=what)
        if not resp.content.strip():
            return 0
        return answered_int(resp, what, "MutationID")

    def _instance_info(self) -> dict[str, Any]:
        if self._info is None:
            resp = _call(self.client, "GET", f"{self._base}/info",
                         what=f"the info of instance {self.name}")
            self._info = dict(answered(resp, f"the info of instance {self.name}"))
        return self._info

    def _array_levels(self) -> tuple[int, Vec] | None:
        """(MaxDownresLevel, block size (z, y, x)) of a labelarray with coarser scales, whose
        split and merge hand the blocks they rewrite to DVID's downres; else None."""
        info = self._instance_info()
        ext = info.get("Extended") or {}
        levels = int(ext.get("MaxDownresLevel") or 0)
        if (info.get("Base") or {}).get("TypeName") != "labelarray" or levels < 1:
            return None
        bx, by, bz = (int(v) for v in ext["BlockSize"])
        return levels, Vec(bz, by, bx)

    def _coarse_runs(self, lab: int) -> np.ndarray:
        """The label's blocks as ``sparsevol-coarse`` runs (x, y, z, length) (none: no
        voxels), from the label index."""
        try:
            resp = _call(self.client, "GET", f"{self._base}/sparsevol-coarse/{lab}",
                         what=f"the blocks of label {lab}")
        except RemoteNotFoundError:
            return np.zeros((0, 4), dtype=np.int64)  # no voxels: no blocks to rewrite
        try:
            return decode_rles(resp.content).astype(np.int64)
        except DVIDFormatError as exc:
            raise CorruptChunkError(f"the coarse sparse volume of {lab} does not decode: "
                                    f"{exc}", chunk=f"{self._base}/sparsevol-coarse/{lab}"
                                    ) from None

    def _check_array_merge(self, labs: list[int], what: str) -> None:
        """labelarray mutate.go processMerge hands every block of the target's and the merged
        labels' index to the downres, in a goroutine with no recover: with MaxDownresLevel
        >= 1 a block DVID's downres cannot take (a negative odd block coordinate at a scale
        it downsamples, remote._downres_breaks) panics there and the server process exits,
        after scale 0 was rewritten.  The blocks come from ``sparsevol-coarse`` (the label
        index): one request per label."""
        got = self._array_levels()
        if got is None:
            return
        levels, block = got
        from .remote import _downres_breaks, _downres_refusal

        for lab in labs:
            for x, y, z, n in self._coarse_runs(lab).tolist():
                breaks = _downres_breaks(Vec(z, y, x), Vec(z, y, x + n - 1), levels)
                if breaks is not None:
                    raise _downres_refusal(
                        f"{self.client.base_url}/{self.node}/{self.name}: {what} (label {lab} "
                        "has voxels there, and DVID's labelarray merge rewrites every block of "
                        "the target and the merged labels; its downres runs after the 200, "
                        "where a panic ends the DVID server)", "labelarray", levels,
                        block, breaks, "Nothing was merged")

    def _check_array_split(self, lab: int, rles: bytes, what: str) -> None:
        """labelarray mutate.go processSplit rewrites each block the posted runs touch that
        holds the label (splitBlock) and ends with the downres, in the request: with
        MaxDownresLevel >= 1 a block it cannot take (remote._downres_breaks) panics there
        (500) after scale 0 and the label index were rewritten, and the new label is taken.
        The blocks are those of the runs (cut at the block grid, as dvid.RLEs.Partition
        does) that the label's index (``sparsevol-coarse``) lists.  Runs that do not decode
        are left to DVID to refuse."""
        got = self._array_levels()
        if got is None:
            return
        levels, block = got
        try:
            runs = decode_rles(rles).astype(np.int64)
        except DVIDFormatError:
            return
        held = {(z, y, x + i) for x, y, z, n in self._coarse_runs(lab).tolist()
                for i in range(n)}
        touched: set[tuple[int, int, int]] = set()
        for x, y, z, n in runs.tolist():
            bz, by = z // block.z, y // block.y
            touched.update((bz, by, bx) for bx in range(x // block.x,
                                                        (x + n - 1) // block.x + 1))
        from .remote import _downres_breaks, _downres_refusal

        for bk in sorted(touched & held):
            breaks = _downres_breaks(Vec(*bk), Vec(*bk), levels)
            if breaks is not None:
                raise _downres_refusal(
                    f"{self.client.base_url}/{self.node}/{self.name}: {what} (label {lab} has "
                    "voxels in a block the split rewrites; DVID's labelarray split runs its "
                    "downres before it answers, where a panic answers 500 after the voxels "
                    "were relabeled)", "labelarray", levels, block, breaks,
                    "Nothing was split")

    def cleave(self, body: int, supervoxels: Iterable[int]) -> int:
        """Move ``supervoxels`` of ``body`` to a new body; returns its id (labelmap only)."""
        lab = self._label(body)
        svs = [self._label(v) for v in supervoxels]
        if not self._is_labelmap():
            raise self._refuse("cleave (it has no supervoxels)", "POST cleave",
                               "; split() moves voxels to a new label"
                               if self.typename == "labelarray" else "")
        resp = _call(self.client, "POST", f"{self._base}/cleave/{lab}", content=json.dumps(svs),
                     what=f"cleaving {len(svs)} supervoxels from {lab}")
        return answered_int(resp, f"cleaving {len(svs)} supervoxels from {lab}", "CleavedLabel")

    def split(self, body: int, rles: bytes, *, splitlabel: int | None = None
              ) -> tuple[int, int]:
        """Move the voxels of ``body`` in the sparse volume ``rles`` (DVID's ``rles`` encoding,
        :func:`voxgate.formats.dvid_block.encode_rles`) to a new body: ``POST split/<body>``.
        Returns (the new body, the mutation id).

        On a labelarray (labelarray.go handleSplit, mutate.go SplitLabels) the answer names
        no mutation id (0 is returned); only the label's voxels among the runs move, other
        voxels stay, and nothing checks that the label exists or keeps a voxel.  With coarser
        scales, a split that rewrites a block DVID's downres cannot take (a negative odd block
        coordinate) is refused before anything is sent.

        ``splitlabel`` (a labelarray's ``?splitlabel=``) names the label the voxels get
        instead of a new one; maxlabel moves up to it (updateMaxLabel).  DVID checks nothing
        else: a label that already has voxels takes the split voxels in (the chain DVID's
        help describes: a ``split-coarse`` to a new label, then a ``split`` at voxel level
        into that same label); keeping it clear of labels of other versions is the caller's
        part.  A labelmap has no such parameter (handlers.go handleSplit never reads it and
        mutate.go SplitLabels always takes a new label), so it is refused there."""
        lab = self._label(body)
        self._need_index("split a label", "POST split")
        query = ""
        if splitlabel is not None:
            to = self._label(splitlabel)
            if to == lab:
                raise InvalidRequestError(
                    f"cannot split label {lab} into itself (splitlabel={to}): the split voxels "
                    "would keep their label. Nothing was split")
            if self._is_labelmap():
                raise CapabilityNotSupportedError(
                    f"{self.client.base_url}/{self.node}/{self.name} is a DVID labelmap, which "
                    f"cannot split label {lab} into a chosen label (splitlabel={to}): its "
                    "POST split takes no splitlabel (handlers.go handleSplit never reads it, "
                    "mutate.go SplitLabels always takes a new label, so the label would be "
                    "ignored); only a labelarray's split takes one. Split without it, then "
                    "renumber({wanted: new}) gives the new body the id wanted. Nothing was sent")
            query = f"?splitlabel={to}"
        if not self._is_labelmap():
            self._check_array_split(lab, rles, f"splitting label {lab}")
        resp = _call(self.client, "POST", f"{self._base}/split/{lab}{query}", content=rles,
                     what=f"splitting label {lab}" + (f" into {splitlabel}" if query else ""))
        d = answered(resp, f"splitting label {lab}")
        with server_answer(f"splitting label {lab}: {resp.request.url} answered"):
            return int(d["label"]), int(d.get("MutationID", 0))

    def split_coarse(self, body: int, block_rles: bytes, *, splitlabel: int | None = None
                     ) -> int:
        """Move the voxels of ``body`` in whole blocks to a new label: ``POST
        split-coarse/<body>[?splitlabel=N]`` of a labelarray (labelarray.go handleSplitCoarse,
        mutate.go SplitCoarseLabels).  Returns the label they got (DVID answers
        ``{"label": N}`` and names no mutation id).

        ``block_rles`` is DVID's ``rles`` sparse volume (as for :meth:`split`) whose runs
        (x, y, z, length) are of **block** coordinates on the instance's block grid, e.g.
        ``encode_rles(rles_from_mask(block_mask, first_block))``.  In every listed block that
        exists, each voxel of ``body`` gets the new label (other labels stay; a block never
        written is skipped), and the label index moves every listed block from ``body`` to the
        new label.  ``splitlabel`` names the label instead of a new one (maxlabel follows it;
        DVID checks nothing else, so it may be a label in use: DVID's help chains a
        ``split-coarse`` into N with a voxel :meth:`split` into N).

        Only a labelarray serves it: a labelmap has no ``split-coarse`` (its ServeHTTP
        answers 400 "Bad API call"; use :meth:`split` with the voxels of those blocks), a
        labelblk no label index.  Refused before anything is sent: a body that is not bytes
        or does not decode, one that lists no block (DVID would take a new label and move
        nothing), a ``splitlabel`` equal to ``body``, and, on a labelarray with coarser
        scales, a listed block DVID's downres cannot take (DVID rewrites every listed block
        that exists, then its downres panics: 500, after scale 0 and the label index were
        changed and the label taken; a listed block that was never written is refused
        too)."""
        lab = self._label(body)
        if not isinstance(block_rles, (bytes, bytearray, memoryview)):
            raise InvalidRequestError(
                f"split_coarse takes the blocks as DVID rles bytes (encode_rles of (x, y, z, "
                f"length) runs of block coordinates), got {type(block_rles).__name__}")
        to = None if splitlabel is None else self._label(splitlabel)
        if to == lab:
            raise InvalidRequestError(
                f"cannot split label {lab} into itself (splitlabel={to}): the split voxels "
                "would keep their label. Nothing was split")
        try:
            runs = decode_rles(block_rles).astype(np.int64)
        except DVIDFormatError as exc:
            raise InvalidRequestError(
                f"the block runs of a coarse split of label {lab} do not decode as DVID rles "
                f"(a 12-byte header, then (x, y, z, length) int32 runs of length >= 1): {exc}. "
                "Nothing was sent") from None
        if not len(runs):
            raise InvalidRequestError(
                f"a coarse split of label {lab} lists no block: DVID would take a new label "
                "and move nothing. Nothing was sent")
        if self.typename != "labelarray":
            if self._is_labelmap():
                raise CapabilityNotSupportedError(
                    f"{self.client.base_url}/{self.node}/{self.name} is a DVID labelmap, which "
                    f"cannot split label {lab} by blocks: only a labelarray serves POST "
                    "split-coarse (labelmap.go ServeHTTP has no such endpoint); split() with "
                    "the label's voxels in those blocks (sparsevol_runs(label, box=...)) "
                    "moves them. Nothing was sent")
            raise self._refuse("split a label by blocks", "POST split-coarse",
                               types=("labelarray",))
        self._check_coarse_split(lab, runs)
        query = "" if to is None else f"?splitlabel={to}"
        resp = _call(self.client, "POST", f"{self._base}/split-coarse/{lab}{query}",
                     content=bytes(block_rles),
                     what=f"coarse split of label {lab}" + (f" into {to}" if query else ""))
        return answered_int(resp, f"coarse split of label {lab}", "label")

    def _check_coarse_split(self, lab: int, runs: np.ndarray) -> None:
        """The downres check of :meth:`split_coarse`: splitBlock (coarse: Block.ReplaceLabel)
        rewrites every listed block that exists, whatever it holds, and hands it to the
        downres, which panics on a block it cannot take (remote._downres_breaks).  Whether a
        block exists is not asked: every listed block is checked."""
        got = self._array_levels()
        if got is None:
            return
        levels, block = got
        from .remote import _downres_breaks, _downres_refusal

        for x, y, z, n in runs.tolist():
            breaks = _downres_breaks(Vec(z, y, x), Vec(z, y, x + n - 1), levels)
            if breaks is not None:
                raise _downres_refusal(
                    f"{self.client.base_url}/{self.node}/{self.name}: a coarse split of label "
                    f"{lab} (DVID's labelarray split-coarse rewrites every listed block and "
                    "runs its downres before it answers, where a panic answers 500 after the "
                    "voxels were relabeled)", "labelarray", levels, block, breaks,
                    "Nothing was split")

    def renumber(self, mapping: dict[int, int]) -> None:
        """Give body ``old`` the id ``new`` for each ``{new: old}``: ``POST renumber``
        (labelmap only)."""
        pairs: list[int] = []
        for new, old in mapping.items():
            pairs += [self._label(new), self._label(old)]
        if not self._is_labelmap():
            raise self._refuse("renumber", "POST renumber")
        _call(self.client, "POST", f"{self._base}/renumber", content=json.dumps(pairs),
              what=f"renumbering {mapping}")

    def post_mappings(self, ops: Iterable[tuple[int, Iterable[int]]]) -> None:
        """Map supervoxels to bodies: ``(body, [supervoxel, ...])`` each (``POST mappings``)."""
        from ...formats.dvid_proto import MappingOp, encode_mapping_ops

        items = [MappingOp(self._label(b), [self._label(s) for s in svs]) for b, svs in ops]
        if not items:
            return
        if not self._is_labelmap():
            raise self._refuse("map supervoxels to bodies", "POST mappings")
        _call(self.client, "POST", f"{self._base}/mappings", content=encode_mapping_ops(items),
              what=f"posting {len(items)} mapping(s)")

    def maxlabel(self) -> int:
        self._need_index("tell its largest label", "GET maxlabel")
        resp = _call(self.client, "GET", f"{self._base}/maxlabel", what="maxlabel")
        return answered_int(resp, "maxlabel", "maxlabel")

    def next_label(self) -> int:
        self._need_index("tell its next label", "GET nextlabel")
        resp = _call(self.client, "GET", f"{self._base}/nextlabel", what="nextlabel")
        return answered_int(resp, "nextlabel", "nextlabel")

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new label ids (``POST nextlabel``); returns the first (labelmap
        only: a labelarray's nextlabel is GET only, labelarray.go handleNextlabel)."""
        count = whole_at_least(count, 1, "the count of ids to reserve")
        if not self._is_labelmap():
            raise self._refuse("reserve ids", "POST nextlabel",
                               "; ids above maxlabel() are unused"
                               if self.typename == "labelarray" else "")
        resp = _call(self.client, "POST", f"{self._base}/nextlabel/{count}",
                     what=f"reserving {count} ids")
        return answered_int(resp, f"reserving {count} ids", "start")

    def _sv_query(self, scale: int, supervoxels: bool, box: Box | None) -> str:
        parts = [f"scale={int(scale)}"] if scale else []
        if supervoxels:
            parts.append("supervoxels=true")
        if box is not None:
            for axis, a, b in zip("zyx", box.start, box.stop, strict=True):
                parts += [f"min{axis}={a}", f"max{axis}={b - 1}"]
        return "?" + "&".join(parts) if parts else ""

    def sparsevol_runs(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                       box: Box | None = None) -> np.ndarray:
        """The label's voxels as runs along x: (n, 4) int32 ``x, y, z, length``."""
        lab = self._label(label)
        self._need_index("give a label's sparse volume", "sparsevol")
        try:
            resp = _call(self.client, "GET", f"{self._base}/sparsevol/{lab}"
                         + self._sv_query(scale, supervoxels, box),
                         what=f"sparse volume of {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}"
                                     + ("" if box is None else f" inside {box!r}")) from None
        try:
            return decode_rles(resp.content)
        except DVIDFormatError as exc:
            raise CorruptChunkError(f"the sparse volume of {lab} does not decode: {exc}",
                                    chunk=f"{self._base}/sparsevol/{lab}") from None

    def sparsevol(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                  box: Box | None = None) -> np.ndarray:
        """The label's voxel coordinates, (n, 3) int64 (z, y, x), sorted."""
        return rles_to_coordinates(self.sparsevol_runs(label, scale=scale,
                                                       supervoxels=supervoxels, box=box))

    def sparsevol_mask(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                       box: Box | None = None) -> tuple[Box, np.ndarray]:
        """The label as a boolean mask over its tight bounding Box."""
        runs = self.sparsevol_runs(label, scale=scale, supervoxels=supervoxels, box=box)
        r = runs.astype(np.int64)
        lo = Vec(int(r[:, 2].min()), int(r[:, 1].min()), int(r[:, 0].min()))
        hi = Vec(int(r[:, 2].max()) + 1, int(r[:, 1].max()) + 1, int((r[:, 0] + r[:, 3]).max()))
        tight = Box(lo, hi)
        mask = np.zeros(tuple(tight.shape), dtype=bool)
        for x, y, z, n in r.tolist():
            mask[z - lo.z, y - lo.y, x - lo.x:x - lo.x + n] = True
        return tight, mask

    def has_label(self, label: int, *, supervoxels: bool = False, box: Box | None = None
                  ) -> bool:
        lab = self._label(label)
        self._need_index("tell whether a label has voxels", "HEAD sparsevol")
        resp = _call(self.client, "HEAD", f"{self._base}/sparsevol/{lab}"
                     + self._sv_query(0, supervoxels, box), expect=(200, 204),
                     what=f"checking label {lab}")
        return resp.status_code == 200

    def sparsevol_size(self, label: int, *, supervoxels: bool = False) -> SparsevolSize:
        """Voxel count, block count and block-accurate box.  A labelarray's sparsevol-size
        has no voxel count (labelarray.go handleSparsevolSize): it is summed from the label's
        sparse volume."""
        lab = self._label(label)
        self._need_index("give a label's sparsevol-size", "sparsevol-size")
        try:
            resp = _call(self.client, "GET", f"{self._base}/sparsevol-size/{lab}"
                         + self._q(0, supervoxels), what=f"sparsevol-size of {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}") from None
        d = answered(resp, f"sparsevol-size of {lab}")
        with server_answer(f"sparsevol-size of {lab}: {resp.request.url} answered"):
            mn, mx = d["minvoxel"], d["maxvoxel"]
            voxels = d.get("voxels")
            if voxels is None:
                voxels = self._runs_size(lab)
            return SparsevolSize(int(voxels), int(d["numblocks"]),
                                 Box((mn[2], mn[1], mn[0]), (mx[2] + 1, mx[1] + 1, mx[0] + 1)))
