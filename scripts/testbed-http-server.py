#!/usr/bin/env python3
"""Tiny serve-hostname style HTTP server for the limpet testbed.

Answers every GET (any path) with its NAME as the body, like Kubernetes'
serve-hostname. Listens dual-stack on [::] (IPv4-mapped too) on every port
given with --port (default 9376). One connection per request (HTTP/1.0,
Connection: close). Request logging is off.

    testbed-http-server.py NAME [--port 9376 --port 80] [--pidfile FILE]

The pid file is written (atomically) only after all sockets are listening,
so its appearance means "ready". It is removed on SIGTERM/SIGINT.
"""
import argparse
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096

    def server_bind(self):
        # Accept IPv4 too (as ::ffff:a.b.c.d).
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def make_handler(name: str):
    body = name.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        server_version = "limpet-testbed"
        sys_version = ""
        timeout = 10  # per-connection socket timeout

        def _reply(self, with_body: bool):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            self.close_connection = True

        def do_GET(self):
            self._reply(True)

        def do_HEAD(self):
            self._reply(False)

        def log_message(self, format, *args):  # noqa: A002 - logs off
            pass

        def log_error(self, format, *args):  # noqa: A002
            pass

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="body returned for every request (e.g. lp-be1)")
    ap.add_argument("--port", type=int, action="append",
                    help="TCP port to listen on (repeatable; default 9376)")
    ap.add_argument("--pidfile", help="write pid here once listening")
    args = ap.parse_args()
    ports = args.port or [9376]

    handler = make_handler(args.name)
    servers = [DualStackServer(("::", p), handler) for p in ports]

    def cleanup():
        if args.pidfile:
            try:
                with open(args.pidfile) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(args.pidfile)
            except OSError:
                pass

    def on_signal(signum, frame):
        cleanup()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    if args.pidfile:
        tmp = f"{args.pidfile}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(tmp, args.pidfile)

    try:
        servers[0].serve_forever()
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
