"""The relay's index page, ``/``: what it serves and how to open each channel.

For every channel the request's token may read: dtype, kind, shape and scales, its
Neuroglancer precomputed source URL and a Neuroglancer link that shows it (an image or a
segmentation layer, from the channel's kind), and ready-to-paste CloudVolume, intern and voxgate
snippets.  HTML for a browser; the same as JSON with ``/?format=json`` or
``Accept: application/json``.  Every text from outside the code (channel names, the Host the
client used, error messages) is escaped; a client's token never appears in the page.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

import anyio
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .catalog import ChannelEntry
from .errors import BossHTTPError
from .precomputed import precomputed_info
from .state import Relay

__all__ = ["NEUROGLANCER", "index_routes", "neuroglancer_link", "render_page"]

#: the public Neuroglancer client the links open (any Neuroglancer takes the same state)
NEUROGLANCER = "https://neuroglancer-demo.appspot.com/"


def neuroglancer_link(layers: list[dict[str, Any]], viewer: str = NEUROGLANCER) -> str:
    """A Neuroglancer URL whose state shows ``layers`` (each ``{"type", "source", "name"}``)."""
    state = {"layers": layers, "layout": "4panel"}
    return viewer + "#!" + quote(json.dumps(state, separators=(",", ":")), safe="")


def _wants_json(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in ("json", "html"):
            raise BossHTTPError(400, 1005, f"format must be 'json' or 'html', got {fmt!r}")
        return fmt == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _snippets(base: str, c: str, e: str, ch: str, source: str, token: str,
              region: tuple[list[int], list[int]]) -> dict[str, str]:
    """Code that reads a small corner of the channel (``region``: scale-0 start and stop,
    z, y, x, dataset coordinates) with CloudVolume, intern and voxgate."""
    protocol, host = base.split("://", 1)
    (z0, y0, x0), (z1, y1, x1) = region
    xyz = f"{x0}:{x1}, {y0}:{y1}, {z0}:{z1}"
    cloudvolume = ("from cloudvolume import CloudVolume\n"
                   f"cv = CloudVolume({source!r}, mip=0, progress=False)\n"
                   f"cutout = cv[{xyz}]  # x, y, z, channel\n")
    if token != "public":
        cloudvolume = (
            "# this relay needs a token for reads, which CloudVolume cannot send (over HTTP it\n"
            "# sends only Basic credentials; its boss:// source fails in cloud-volume 12): read\n"
            "# through a token-free read-only relay in front of this one (docs/relay.md,\n"
            "# \"Tokens\"), whose URL replaces this one's, or use intern or voxgate below\n"
            + cloudvolume)
    intern = (
        "from intern.remote.boss import BossRemote\n"
        f"rmt = BossRemote({{'protocol': {protocol!r}, 'host': {host!r}, 'token': {token!r}}})\n"
        f"channel = rmt.get_channel({ch!r}, {c!r}, {e!r})\n"
        f"cutout = rmt.get_cutout(channel, 0, [{x0}, {x1}], [{y0}, {y1}], [{z0}, {z1}])"
        "  # a z, y, x array\n"
    )
    voxgate = (
        "import voxgate\n"
        f"vol = voxgate.open({f'bossdb://{base}/{c}/{e}/{ch}'!r}"
        + ("" if token == "public" else f", token={token!r}") + ")\n"
        f"cutout = vol[0:{z1 - z0}, 0:{y1 - y0}, 0:{x1 - x0}].read()  # z, y, x\n"
    )
    return {"cloudvolume": cloudvolume, "intern": intern, "voxgate": voxgate}


def _describe(relay: Relay, entry: ChannelEntry, token: str | None, base: str,
              snippet_token: str) -> dict[str, Any]:
    c, e, ch = entry.key
    source = f"precomputed://{base}/precomputed/{c}/{e}/{ch}"
    out: dict[str, Any] = {"collection": c, "experiment": e, "channel": ch,
                           "precomputed_url": source}
    try:
        remote = relay.remote(entry, token)
        meta = remote.meta
        info = precomputed_info(remote)
    except Exception as exc:  # one dead upstream must not take the page down
        out["error"] = relay.scrub(f"{type(exc).__name__}: {exc}")
        return out
    layer_type = "segmentation" if info["type"] == "segmentation" else "image"
    out.update({
        "dtype": meta.dtype.name,
        "precomputed_dtype": info["data_type"],
        "kind": meta.kind,
        "num_channels": meta.num_channels,
        "shape_zyx": list(meta.scale(0).shape),
        "scales": [{"index": s.index, "key": f"s{s.index}", "shape_zyx": list(s.shape),
                    "voxel_size_zyx": list(s.voxel_size.zyx()), "unit": s.voxel_size.unit}
                   for s in meta.scales],
        "neuroglancer_layer": {"type": layer_type, "source": source, "name": ch},
    })
    out["neuroglancer_url"] = neuroglancer_link([out["neuroglancer_layer"]])
    s0 = meta.scale(0)
    start = [int(v) for v in s0.offset]
    stop = [a + min(n, k) for a, n, k in zip(start, s0.shape, (8, 64, 64), strict=True)]
    out["snippets"] = _snippets(base, c, e, ch, source, snippet_token, (start, stop))
    return out


def render_page(base: str, auth: str, channels: list[dict[str, Any]],
                experiments: dict[str, str]) -> str:
    """The HTML of the index page: ``channels`` as the JSON form lists them, escaped."""
    esc = html.escape
    parts = [
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>voxgate relay</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"
        "td,th{padding:.2em .8em;text-align:left}</style></head><body>",
        f"<h1>voxgate relay at {esc(base)}</h1>",
        f"<p>{esc(auth)}</p>",
        f"<p>{len(channels)} channel(s). Also <a href='?format=json'>as JSON</a>. The bossDB "
        f"REST dialect is under <code>{esc(base)}/v1/</code>, the Neuroglancer precomputed one "
        f"under <code>{esc(base)}/precomputed/</code>.</p>",
    ]
    for name, link in experiments.items():
        parts.append(f"<p><a href='{esc(link)}'>Open every channel of {esc(name)} in "
                     f"Neuroglancer</a></p>")
    for ch in channels:
        title = f"{ch['collection']}/{ch['experiment']}/{ch['channel']}"
        parts.append(f"<h2>{esc(title)}</h2>")
        if "error" in ch:
            parts.append(f"<p>unavailable: {esc(ch['error'])}</p>")
            continue
        dtype = ch["dtype"] + (f" (served over precomputed as {ch['precomputed_dtype']})"
                               if ch["precomputed_dtype"] != ch["dtype"] else "")
        parts.append(f"<p>{esc(ch['kind'])}, {esc(dtype)}, {ch['num_channels']} channel(s), "
                     f"shape (z, y, x) {esc(' x '.join(map(str, ch['shape_zyx'])))}</p>")
        parts.append("<table><tr><th>scale</th><th>shape (z, y, x)</th>"
                     "<th>voxel size (z, y, x)</th></tr>")
        for s in ch["scales"]:
            vs = " x ".join(f"{v:g}" for v in s["voxel_size_zyx"])
            parts.append(f"<tr><td>{s['index']} ({esc(s['key'])})</td>"
                         f"<td>{esc(' x '.join(map(str, s['shape_zyx'])))}</td>"
                         f"<td>{esc(vs)} {esc(s['unit'])}</td></tr>")
        parts.append("</table>")
        parts.append(f"<p>Neuroglancer source: <code>{esc(ch['precomputed_url'])}</code> &middot; "
                     f"<a href='{esc(ch['neuroglancer_url'])}'>open in Neuroglancer</a> "
                     f"({esc(ch['neuroglancer_layer']['type'])} layer)</p>")
        for label, key in (("CloudVolume", "cloudvolume"), ("intern", "intern"),
                           ("voxgate", "voxgate")):
            parts.append(f"<p>{label}:</p><pre><code>{esc(ch['snippets'][key])}</code></pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def index_routes(relay: Relay) -> list[Route]:
    async def index(request: Request) -> Response:
        as_json = _wants_json(request)
        auth = relay.config.auth
        if auth.open:
            note = "Open relay: no token needed (any token or none may read and write)."
        elif auth.public_read:
            note = ("Anonymous reads are allowed; writes need a read-write token "
                    "(Authorization: Token ...).")
        else:
            note = ("This relay needs a token for every read (public_read = false): send "
                    "Authorization: Token ... (intern and voxgate do). Neuroglancer and "
                    "CloudVolume cannot send it: serve them through a token-free read-only "
                    "relay in front of this one (docs/relay.md, \"Tokens\").")
        try:
            collections = relay.readable_collections(request)
        except BossHTTPError as exc:
            if as_json or exc.status != 401:
                raise
            return HTMLResponse(render_page(str(request.base_url).rstrip("/"), note, [], {}),
                                status_code=401, headers={"WWW-Authenticate": 'Token realm="api"'})
        token = relay.token(request)
        base = str(request.base_url).rstrip("/")
        entries = [entry for key, entry in sorted(relay.catalog.channels.items())
                   if key[0] in collections and not relay.catalog.deleted(*key)]
        public = auth.open or auth.public_read
        snippet_token = "public" if public else "YOUR_TOKEN"  # never the caller's token
        described: list[dict[str, Any]] = [{} for _ in entries]

        async def one(i: int, entry: ChannelEntry) -> None:
            described[i] = await to_thread.run_sync(
                _describe, relay, entry, token, base, snippet_token, limiter=relay.limiter)

        async with anyio.create_task_group() as tg:
            for i, entry in enumerate(entries):
                tg.start_soon(one, i, entry)
        experiments: dict[str, str] = {}
        for c, e in sorted({(d["collection"], d["experiment"]) for d in described}):
            layers = [d["neuroglancer_layer"] for d in described
                      if (d["collection"], d["experiment"]) == (c, e) and "error" not in d]
            if len(layers) > 1:
                experiments[f"{c}/{e}"] = neuroglancer_link(layers)
        if as_json:
            return JSONResponse({"relay": base, "auth": {"open": auth.open,
                                                         "public_read": public},
                                 "note": note, "channels": described,
                                 "experiments": experiments},
                                headers={"Cache-Control": "no-cache"})
        return HTMLResponse(render_page(base, note, described, experiments),
                            headers={"Cache-Control": "no-cache"})

    return [Route("/", index)]
