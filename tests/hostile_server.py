"""A real HTTP server on 127.0.0.1 that misbehaves on purpose: redirects anywhere, never
answers, streams forever, lies about its length, answers 404 or HTML."""

from __future__ import annotations

import http.server
import threading
import time
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

from tests.support import LOOPBACK


def _handler(image: bytes, stop: threading.Event):
    class Hostile(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status, body=b"", content_type="image/jpeg", length=None, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            path = parts.path
            Hostile.seen_hosts.append(self.headers.get("Host"))
            if path == "/image.jpg":
                self._send(200, image)
            elif path == "/redirect":
                self._send(302, extra=[("Location", query["to"][0])])
            elif path == "/loop":
                self._send(302, extra=[("Location", "/loop")])
            elif path == "/silent":  # accepts the connection, never answers
                stop.wait(30)
            elif path == "/forever":  # a valid start, then bytes without end
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.wfile.write(image[:100])
                while not stop.is_set():
                    try:
                        self.wfile.write(b"\0" * 65536)
                    except OSError:
                        return
                    time.sleep(0.001)
            elif path == "/short-length":  # declares fewer bytes than the image has
                self._send(200, image, length=100)
            elif path == "/long-length":  # declares more than it sends, then closes
                self._send(200, image[:500], length=len(image) + 1000)
                self.close_connection = True
            elif path == "/huge-length":  # declares far past the cap
                self._send(200, b"", length=10**12)
            elif path == "/page.html":
                self._send(200, b"<html>not an image</html>", content_type="text/html")
            else:
                self._send(404, b"missing", content_type="text/plain")

    Hostile.seen_hosts = []
    return Hostile


@contextmanager
def hostile_server(image: bytes):
    stop = threading.Event()
    handler = _handler(image, stop)
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        httpd.base_url = f"http://{LOOPBACK}:{httpd.server_address[1]}"
        httpd.port = httpd.server_address[1]
        httpd.seen_hosts = handler.seen_hosts
        yield httpd
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
