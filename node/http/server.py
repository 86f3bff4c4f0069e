"""Serving the HTTP API with uvicorn on a thread of the node process, started and stopped with it.

The listening socket is bound here, in the caller's thread, so a port that is taken
raises OSError from :meth:`HttpServer.start` (the service turns it into a StartupError
naming ``node.http_port``) instead of killing a background thread quietly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)

__all__ = ["HttpServer"]

_START_TIMEOUT = 10.0


class HttpServer:
    def __init__(self, app: ASGIApp, port: int, host: str = "127.0.0.1") -> None:
        self.app = app
        self.port = port
        self.host = host
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the port (OSError when it can't be), then serve on a thread until ``stop``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the node's own logging configuration stays in charge
            access_log=False,  # the page polls every 2 s; requests aren't worth a line each
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server on port {self.port} did not start")
            time.sleep(0.01)
        log.info(
            "HTTP on %s port %d: worklist page /, API /api/studies, DICOMweb /dicom-web "
            "(QIDO-RS, WADO-RS, STOW-RS), /healthz, /metrics",
            self.host,
            self.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None
