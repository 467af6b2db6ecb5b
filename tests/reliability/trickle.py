"""Test-side slow mirror: an HTTP server on 127.0.0.1 that answers every GET with 200 and a
Content-Length, then sends the body one byte every `period` seconds (a mirror that trickles, never quite
stalling a socket timeout), until the client goes away or the server stops."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TrickleServer:
    def __init__(self, length: int = 10_000, period: float = 0.2):
        self.length, self.period = length, period
        self.connected = threading.Event()
        self.requests: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                server.connected.set()
                self.send_response(200)
                self.send_header("Content-Length", str(server.length))
                self.end_headers()
                try:
                    for _ in range(server.length):
                        if server._stop.wait(server.period):
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()
                except OSError:   # the client went away
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        time.sleep(0.01)


class FolderServer:
    """A plain HTTP server on 127.0.0.1 serving the files of `folder` (a mirror that works)."""

    def __init__(self, folder) -> None:
        import functools
        from http.server import SimpleHTTPRequestHandler

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FolderServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
