"""A lesson content server for tests: pages whose script calls back once rendered."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

PAGE = """<!doctype html>
<html><head><title>Lesson {name}</title></head>
<body><h1>Lesson {name}</h1>
<script>fetch("/rendered/{name}?w=" + window.innerWidth).catch(() => {{}});</script>
</body></html>
"""

# A kiosk program for tests without a browser: fetches the page, as a browser would,
# then stays up until it is stopped; writes its pid first.
FAKE_KIOSK = """
import os, sys, time, urllib.request
open(sys.argv[2], "a").write(f"{os.getpid()}\\n")
urllib.request.urlopen(sys.argv[1], timeout=10).read()
time.sleep(3600)
"""


class LessonSite:
    """An HTTP server on 127.0.0.1 (port chosen by the kernel) that records requests."""

    def __init__(self) -> None:
        site = self
        self.requests: list[tuple[float, str]] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with site._lock:
                    site.requests.append((time.time(), self.path))
                if self.path.startswith("/lesson/"):
                    name = self.path.removeprefix("/lesson/").split("?")[0]
                    body = PAGE.format(name=name).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                else:
                    body = b"ok"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/lesson/{name}"

    def hits(self, prefix: str) -> list[float]:
        """When paths starting with ``prefix`` were requested."""
        with self._lock:
            return [at for at, path in self.requests if path.startswith(prefix)]

    def __enter__(self) -> LessonSite:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
