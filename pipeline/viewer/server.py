"""A local HTTP server for the map: the page, vendored Leaflet, and the layers of one run.

The standard library's threading HTTP server is enough for one person's browser on 127.0.0.1;
everything it serves is rendered at start (pipeline.viewer.layers), so a request never touches
the products. Nothing is fetched from the network: Leaflet is vendored under static/leaflet
(leaflet 1.9.4 from the npm registry, BSD-2-Clause, its LICENSE beside it) and there is no basemap.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from pipeline.viewer.layers import MapLayers, build_layers

log = logging.getLogger(__name__)
STATIC = resources.files("pipeline.viewer") / "static"


def _static(path: str) -> bytes | None:
    """A file under static/ (no way out of it), or None."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in ("..", ".") for p in parts):
        return None
    node = STATIC.joinpath(*parts)
    return node.read_bytes() if node.is_file() else None


def make_handler(layers: MapLayers) -> type[BaseHTTPRequestHandler]:
    """A handler class serving the prepared layers from memory: everything is rendered once at
    start, so a request never touches the products."""
    routes: dict[str, tuple[bytes, str]] = {
        "/api/meta.json": (json.dumps(layers.meta()).encode(), "application/json"),
        "/api/polygons.geojson": (json.dumps(layers.polygons).encode(), "application/geo+json"),
        "/layers/change.png": (layers.change_png, "image/png"),
    }
    if layers.optical_png is not None:
        routes["/layers/optical.png"] = (layers.optical_png, "image/png")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/":
                path = "/static/index.html"
            if path in routes:
                body, ctype = routes[path]
            elif path.startswith("/static/") and (data := _static(path[len("/static/") :])):
                body = data
                ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            else:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class MapServer:
    """`with MapServer(layers) as server:` serves in a background thread at `server.url`."""

    def __init__(self, layers: MapLayers, host: str = "127.0.0.1", port: int = 0):
        self.httpd = ThreadingHTTPServer((host, port), make_handler(layers))
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The address to open in a browser (the port was picked free at start)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> MapServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def serve(out: Path, host: str, port: int, max_size: int) -> None:
    """Render the layers of `out` and serve them until interrupted."""

    layers = build_layers(out, max_size=max_size)
    httpd = ThreadingHTTPServer((host, port), make_handler(layers))
    host, port = httpd.server_address[:2]
    print(f"m2cd view: {out} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
