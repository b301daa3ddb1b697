"""A static file server for the benchmark's image URLs: `python -m bench.static_server DIR PORT`.
http.server's own has a listen backlog of 5, which drops connections under 64 clients."""

from __future__ import annotations

import functools
import http.server
import sys


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image stores answer
    # Headers and body go out in separate writes: with Nagle's algorithm on, each response
    # on a kept-alive connection waits for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    Server(("127.0.0.1", port), functools.partial(QuietHandler, directory=folder)).serve_forever()


if __name__ == "__main__":
    main()
