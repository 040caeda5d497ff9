"""Looking at data: :func:`view` (``voxgate view URL ...``, ``vol.view()``).

Any Volumes, from any Remote, are served through an in-process relay on 127.0.0.1 (so
Neuroglancer reads them in the precomputed dialect, meshes and skeletons of precomputed layers
included) and shown in Neuroglancer, whose client comes from the ``neuroglancer`` PyPI package
and is served by its own Python server on 127.0.0.1: nothing is fetched from the internet.
Image layers and segmentation layers are chosen from each Volume's ``kind``, annotation layers
kept in sub-directories of a local precomputed layer are shown beside it, and a segmentation
starts with the largest segments of the middle slice of its region (a view's, not the whole
volume's) selected, so their meshes and skeletons show in the 3-D panel.  An image of any type
but uint8 gets its shader's contrast range from the same bounded sample.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import threading
import time
import webbrowser
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from .api import open as open_volume
from .errors import (
    InvalidRequestError,
    MissingDependencyError,
    VoxgateError,
    refuses_unknown_keywords,
)
from .geometry import Box, whole
from .meta import check_ids
from .relay.config import ChannelConfig, RelayConfig
from .relay.layer_files import ANNOTATION_TYPE
from .storage import is_local, length_unit_nm, local_path
from .volume import Volume

__all__ = ["ViewerSession", "view"]

COLLECTION, EXPERIMENT = "view", "data"
#: segments selected at the start in each segmentation layer (largest first)
SELECTED = 12
#: at most this many voxels along y and x of the slice segments and image ranges are drawn from
SAMPLE = 512
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class ViewerSession:
    """A running view: ``url`` is the Neuroglancer link; ``stop()`` ends both servers."""

    url: str
    relay_url: str
    layers: dict[str, str]  # layer name -> Neuroglancer source URL
    viewer: Any = field(repr=False)  # neuroglancer.Viewer
    _server: Any = field(repr=False)  # uvicorn.Server
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """End the relay and Neuroglancer's server, waiting at most about ``timeout`` s for
        open connections to finish (a browser tab holds some open for as long as it lives)."""
        import neuroglancer

        self._server.should_exit = True
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self._server.force_exit = True  # do not wait for the browser's keep-alives
            self._thread.join(timeout / 2)
        # neuroglancer.stop() waits for every connection to close: run it on a thread that
        # is given up (it is a daemon) if a client keeps one open
        stopper = threading.Thread(target=neuroglancer.stop, name="voxgate-view-stop",
                                   daemon=True)
        stopper.start()
        stopper.join(timeout / 2)

    def _repr_html_(self) -> str:
        link = escape(self.url, quote=True)
        return (f'<iframe src="{link}" width="100%" height="600" style="border:0"></iframe>'
                f'<p><a href="{link}" target="_blank">open in a new tab</a></p>')

    def __enter__(self) -> ViewerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (0: a port the kernel picks), handed to the relay's
    server as it is.  The port was once found by binding port 0 and closing that socket, and
    the server bound the number again: in between another process (a second notebook, a
    second test process) could take it, and the viewer then failed to start, or pointed the
    browser at that process's server.  SO_REUSEADDR as uvicorn binds (a port in TIME_WAIT
    from a stopped view can be taken again; a port something listens on cannot)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidRequestError(
                f"the viewer's relay cannot listen on {host}:{port}: the port is already in "
                "use; pass another port (or port=0 for a free one)") from None
        raise VoxgateError(f"the viewer's relay cannot listen on {host}:{port}: "
                           f"{exc.strerror}") from None
    return sock


def _layer_name(vol: Volume, taken: set[str]) -> str:
    tail = vol.url.rstrip("/").rsplit("/", 1)[-1] or "layer"
    base = _NAME.sub("-", tail.rsplit(".", 1)[0] if "." in tail else tail).strip("-_")
    base = (base or "layer")[:60]
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _channel_names(layer_names: list[str]) -> list[str]:
    """The relay channel (a URL path segment) of each layer: its name with what a path would
    not take replaced by ``-``, made unique (``my cells`` and ``my-cells`` are two layers)."""
    taken: set[str] = set()
    out = []
    for name in layer_names:
        base = (_NAME.sub("-", name).strip("-_") or "layer")[:60]
        channel, n = base, 2
        while channel in taken:
            channel, n = f"{base}-{n}", n + 1
        taken.add(channel)
        out.append(channel)
    return out


def _check_names(names: object, count: int) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise InvalidRequestError(
            f"names must be a list of layer names, one per volume (names=['cells'] for one "
            f"volume), got {names!r}")
    if len(names) != count:
        raise InvalidRequestError(f"names has {len(names)} entries for {count} volumes")
    for n in names:
        if not isinstance(n, str) or not n:
            raise InvalidRequestError(f"layer names must be non-empty strings, got {n!r}")
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"layer names must differ, got {list(names)}")
    return list(names)


def _nm(voxel_size: Any) -> list[float]:
    """A voxel size as x, y, z nanometres, as the relay's precomputed info gives it (a unit
    voxgate does not know counts as nm there too)."""
    factor = length_unit_nm(voxel_size.unit) or 1.0
    return [float(v) * factor for v in voxel_size.xyz()]


def _centre(vol: Volume) -> list[float]:
    """The centre of ``vol``'s region (a view's, not its whole volume's) in voxels of scale 0,
    x, y, z: the coordinates of Neuroglancer's global space, whose unit is a voxel of the first
    volume's scale 0 (a precomputed scale's voxel ``i`` spans ``i * ratio`` to
    ``(i + 1) * ratio`` there, ``ratio`` its voxel size over scale 0's)."""
    b = vol.bounds
    ratio = [a / z for a, z in zip(_nm(vol.scale_meta.voxel_size), _nm(vol.scales[0].voxel_size),
                                   strict=True)]
    return [(lo + hi) / 2 * r for lo, hi, r in zip(b.start.xyz(), b.stop.xyz(), ratio,
                                                   strict=True)]


def _sample(vol: Volume) -> np.ndarray | None:
    """The middle z-slice of ``vol``'s region (a view's, not the whole volume's), channel 0,
    read with a stride so at most ``SAMPLE`` x ``SAMPLE`` voxels come back: at the finest
    scale, not finer than ``vol``'s, where the region is at most ``SAMPLE`` voxels across
    (so few chunks are read), else at the coarsest.  None when the region is empty there or
    cannot be read."""
    here = _nm(vol.scale_meta.voxel_size)
    region = vol.bounds
    chosen = None
    for sc in vol.scales[vol.scale:]:
        ratio = [a / b for a, b in zip(here, _nm(sc.voxel_size), strict=True)]  # x, y, z
        start = [math.floor(v * r) for v, r in zip(region.start.xyz(), ratio, strict=True)]
        stop = [math.ceil(v * r) for v, r in zip(region.stop.xyz(), ratio, strict=True)]
        box = Box(start[::-1], stop[::-1]).intersect(sc.bounds)
        if box.is_empty():
            continue
        chosen = sc, box
        if max(box.shape.y, box.shape.x) <= SAMPLE:
            break
    if chosen is None:
        return None
    sc, box = chosen
    lo, hi = box.start - sc.offset, box.stop - sc.offset
    step = max(1, -(-max(box.shape.y, box.shape.x) // SAMPLE))
    key = ((0,) if vol.meta.num_channels > 1 else ()) + (
        (lo.z + hi.z) // 2, slice(lo.y, hi.y, step), slice(lo.x, hi.x, step))
    try:
        return np.asarray(vol.at_scale(sc.index)[key].read())
    except VoxgateError:
        return None


def _middle_ids(vol: Volume, limit: int) -> list[int]:
    """The ``limit`` largest segments of the middle z-slice of ``vol``'s region (bounded)."""
    data = _sample(vol)
    if data is None:
        return []
    data = data.ravel()
    ids, counts = np.unique(data[data != 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:limit]
    return [int(i) for i in ids[order]]


def _image_range(vol: Volume) -> list[int] | list[float] | None:
    """The range the image layer's default shader (``#uicontrol invlerp normalized``) maps
    to black..white: percentiles 0.5 and 99.5 of the middle slice of ``vol``'s region (zeros,
    which absent chunks read as, left out unless all is zero).  Neuroglancer's default is the
    whole range of the type ([0, 65535] for uint16, [0, 1] for float32), in which most
    images look black.  None for uint8 (whose default suits it) and when nothing was read."""
    dtype = vol.dtype
    if dtype == np.uint8 or dtype.kind not in "iuf":
        return None
    data = _sample(vol)
    if data is None:
        return None
    values = data.ravel()
    if dtype.kind == "f":
        values = values[np.isfinite(values)]
    nonzero = values[values != 0]
    if nonzero.size:
        values = nonzero
    if not values.size:
        return None
    lo, hi = (float(v) for v in np.percentile(values.astype(np.float64), [0.5, 99.5]))
    if dtype.kind == "f":
        return [lo, hi] if lo < hi else [lo - 1.0, hi + 1.0]
    info = np.iinfo(dtype)
    ilo, ihi = math.floor(lo), math.ceil(hi)
    if ilo == ihi:  # one value: show it grey, not black
        ilo, ihi = max(ilo - 1, int(info.min)), min(ihi + 1, int(info.max))
    return [ilo, ihi]


def _annotation_dirs(vol: Volume) -> list[str]:
    """The annotation layers kept in sub-directories of a precomputed layer on a local disk
    (the relay serves them beside the layer); other stores are not searched."""
    location = getattr(vol.remote, "location", None)
    if not isinstance(location, str) or not vol.url.startswith("precomputed://") \
            or not is_local(location):
        return []
    found = []
    try:
        entries = sorted(os.scandir(local_path(location)), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            with open(os.path.join(entry.path, "info"), "rb") as f:
                kind = json.loads(f.read()).get("@type")
        except (OSError, ValueError, AttributeError):
            continue
        if kind == ANNOTATION_TYPE:
            found.append(entry.name)
    return found


def _start_relay(channels: list[ChannelConfig], port: int) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from .relay.app import build_app, uvicorn_log_config

    host = "127.0.0.1"
    sock = _listen(host, port)
    try:
        port = int(sock.getsockname()[1])  # (the one bound: port 0 asks for a free one)
        app = build_app(RelayConfig(host=host, port=port, channels=channels))
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               access_log=False, lifespan="off",
                                               log_config=uvicorn_log_config()))

        def run() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()  # (uvicorn closes it only if it started)

        thread = threading.Thread(target=run, name="voxgate-view-relay", daemon=True)
        thread.start()
    except BaseException:
        sock.close()
        raise
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise VoxgateError(f"the viewer's relay could not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{port}"


@refuses_unknown_keywords
def view(*volumes: Volume | str, names: Sequence[str] | None = None, open_browser: bool = False,
         port: int = 0, segments: dict[str, list[int]] | None = None) -> ViewerSession:
    """Show ``volumes`` (Volumes or URLs) in Neuroglancer; returns the running session.

    ``names``: layer names (default: from the URLs).  ``open_browser``: open the link in the
    system's browser.  ``port``: the relay's port (default: a free one).  ``segments``: {layer
    name: ids} to select instead of the largest segments of the middle slice.  In Jupyter the
    session shows the viewer inline.  Both servers listen on 127.0.0.1 only; ``stop()`` ends
    them.
    """
    if not volumes:
        raise InvalidRequestError("view needs at least one Volume or URL")
    try:
        import neuroglancer
    except ImportError:
        raise MissingDependencyError(
            "voxgate view needs the neuroglancer package (its offline client): "
            "pip install 'voxgate[view]'") from None
    vols = [v if isinstance(v, Volume) else open_volume(v) for v in volumes]
    taken: set[str] = set()
    layer_names = (_check_names(names, len(vols)) if names is not None
                   else [_layer_name(v, taken) for v in vols])
    channel_names = _channel_names(layer_names)
    port_n = whole(port)
    if port_n is None or not 0 <= port_n <= 65535:
        raise InvalidRequestError(f"port must be an integer 0..65535 (0: a free one), got "
                                  f"{port!r}")
    port = port_n
    if segments is not None:
        if not isinstance(segments, Mapping):
            raise InvalidRequestError(
                f"segments must be a dict {{layer name: [ids]}}, got {segments!r}")
        seg_layers = [n for v, n in zip(vols, layer_names, strict=True)
                      if v.kind == "segmentation"]
        unknown = sorted(str(k) for k in segments if k not in seg_layers)
        if unknown:
            raise InvalidRequestError(
                f"segments names layer(s) {unknown}, which are not segmentation layers here; "
                f"the segmentation layers are {seg_layers}")
        # (the checked lists: an iterator given here is consumed by the check)
        segments = {key: check_ids(given, f"segments[{key!r}]") or []
                    for key, given in segments.items()}
    channels = []
    for v, channel in zip(vols, channel_names, strict=True):
        spec = v.remote.spec()
        channels.append(ChannelConfig(COLLECTION, EXPERIMENT, channel, spec["url"],
                                      options=dict(spec.get("options", {})), writable=False))
    server, thread, relay_url = _start_relay(channels, port)
    try:
        neuroglancer.set_server_bind_address("127.0.0.1")
        viewer = neuroglancer.Viewer()
        sources: dict[str, str] = {}
        with viewer.txn() as s:
            # the global space explicitly: x, y, z in voxels of the first volume's scale 0.
            # Left to Neuroglancer, it is taken from whichever layer's info arrives first, and
            # the position below (in the first volume's voxels) may then land outside the data
            s.dimensions = neuroglancer.CoordinateSpace(
                names=["x", "y", "z"], units="nm", scales=_nm(vols[0].scales[0].voxel_size))
            for v, name, channel in zip(vols, layer_names, channel_names, strict=True):
                source = (f"precomputed://{relay_url}/precomputed/{COLLECTION}/{EXPERIMENT}/"
                          f"{channel}")
                sources[name] = source
                if v.kind == "segmentation":
                    ids = (segments or {}).get(name)
                    if ids is None:
                        ids = _middle_ids(v, SELECTED)
                    s.layers[name] = neuroglancer.SegmentationLayer(source=source,
                                                                    segments=ids)
                else:
                    rng = _image_range(v)
                    s.layers[name] = (
                        neuroglancer.ImageLayer(source=source) if rng is None else
                        neuroglancer.ImageLayer(source=source,
                                                shader_controls={"normalized": {"range": rng}}))
                for sub in _annotation_dirs(v):
                    sources[f"{name}/{sub}"] = f"{source}/{sub}"
                    s.layers[f"{name}/{sub}"] = neuroglancer.AnnotationLayer(
                        source=f"{source}/{sub}")
            s.position = _centre(vols[0])
            s.layout = "4panel"
    except BaseException:
        server.should_exit = True
        thread.join(10)
        raise
    session = ViewerSession(str(viewer.get_viewer_url()), relay_url, sources, viewer, server,
                            thread)
    if open_browser:
        webbrowser.open(session.url)
    return session
