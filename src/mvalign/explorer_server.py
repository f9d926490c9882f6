"""`mvalign view --serve`: the explorer page and its labels API on 127.0.0.1, nothing else.

  GET  /  or /<page name>   the page
  GET  /labels              {"runs": [[label, ...] per run, in the page's order]}: each run's effective labels
  POST /labels              {"run": index, "labels": [record, ...]}: validated against that run's fronts and appended
                            to RUN/labels.jsonl (`mvalign.labels.append_labels`); answers {"saved": [record, ...]}
Anything else is 404: the run directory, its store and its files are never served, there is no listing, and no
path reaches the file system. Requests whose Host header is not this server's address (127.0.0.1 or localhost with
its port) are refused (403), so a web page elsewhere cannot read or write through DNS rebinding. Bodies over 1 MB
are refused (413). Requests are handled on threads; appends are serialised by a file lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .config import ConfigError
from .errors import MvalignError
from .rundir import RunDir

MAX_BODY = 1 << 20


def make_server(page: Path, port: int, runs: list[RunDir]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the CLI prints the address once
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the browser hung up: no traceback
                self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._send(code, json.dumps({"error": message}).encode())

        def _host_ok(self) -> bool:
            port = self.server.server_address[1]
            return self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}")

        def do_GET(self) -> None:
            if not self._host_ok():
                return self._error(403, "Host header is not this server's address")
            path = urlsplit(self.path).path
            if path in ("/", f"/{page.name}"):
                return self._send(200, page.read_bytes(), "text/html; charset=utf-8")
            if path == "/labels":
                from .labels import run_labels

                return self._send(200, json.dumps({"runs": [run_labels(r) for r in runs]}).encode())
            return self._error(404, "not found")

        def do_POST(self) -> None:
            if not self._host_ok():
                return self._error(403, "Host header is not this server's address")
            if urlsplit(self.path).path != "/labels":
                return self._error(404, "not found")
            size = int(self.headers.get("Content-Length") or 0)
            if size > MAX_BODY:
                return self._error(413, "body too large")
            try:
                body = json.loads(self.rfile.read(size) or b"{}")
                run = runs[int(body["run"])]
                records = body["labels"]
                if not isinstance(records, list):
                    raise TypeError("labels must be a list")
            except (ValueError, KeyError, TypeError, IndexError) as e:
                return self._error(400, f"expected {{'run': index, 'labels': [...]}} ({type(e).__name__}: {e})")
            from .labels import append_labels

            try:
                saved = append_labels(run, records)
            except MvalignError as e:
                return self._error(400, str(e))
            return self._send(200, json.dumps({"saved": saved}).encode())

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port (0-65535; 0 picks a free one)")
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as e:
        why = ("in use" if e.errno == errno.EADDRINUSE else "not allowed (ports below 1024 need privileges)"
               if e.errno == errno.EACCES else e.strerror)
        raise ConfigError(f"--port {port}: {why}; choose another port, or 0 for a free one") from None
