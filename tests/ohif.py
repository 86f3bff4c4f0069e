"""The OHIF viewer as a peer: npm ``@ohif/app``'s built ``dist/``, served on a loopback port.

Its one data source is the node's DICOMweb root (``app-config.js`` is written per test).
OHIF is a single-page app: any path that is not a file gets ``index.html``, as its own
``_redirects`` asks of a server. ``make ohif`` unpacks the app under ``.cache/ohif``.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.peers import REPO, free_port

OHIF_VERSION = "3.13.2"
OHIF_DIST = REPO / ".cache" / "ohif" / "package" / "dist"


def app_config(dicomweb_root: str) -> str:
    """An ``app-config.js`` whose only data source is ``dicomweb_root``."""
    source: dict[str, Any] = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "node",
        "configuration": {
            "friendlyName": "medgemma-node",
            "name": "node",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "defaultDataSourceName": "node",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, config_js: bytes, **kwargs: Any) -> None:
        self._config_js = config_js
        super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(self._config_js)))
            self.end_headers()
            self.wfile.write(self._config_js)
            return
        if not (OHIF_DIST / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the test reads the browser, not this server's access log


class OhifViewer:
    """OHIF on a free port, its data source ``dicomweb_root`` (another origin: CORS)."""

    def __init__(self, dicomweb_root: str) -> None:
        if not (OHIF_DIST / "index.html").is_file():
            raise FileNotFoundError(
                f"the OHIF viewer is not unpacked at {OHIF_DIST}: `make ohif` fetches "
                f"@ohif/app@{OHIF_VERSION} from the npm registry"
            )
        self.port = free_port()
        handler = partial(_Handler, config_js=app_config(dicomweb_root).encode("utf-8"))
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifViewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
