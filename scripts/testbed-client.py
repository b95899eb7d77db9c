#!/usr/bin/env python3
"""Many-source-address HTTP client for the limpet testbed (run in lp-client).

For client i (0 <= i < --clients) the source address is FIRST+i (IPv4 or
IPv6, matching the VIP's family). Each client makes --requests sequential
requests, each on a NEW TCP connection (HTTP/1.0, Connection: close), and
records the body (the backend's name). Clients run concurrently in a
bounded thread pool (--parallel).

Output: one JSON document on stdout:
  {"vip": ..., "port": ...,
   "results": {"198.18.0.10": ["lp-be2", "lp-be2", null, ...], ...},
   "errors":  {"198.18.0.11": [{"request": 2, "error": "timeout"}], ...},
   "summary": {"requests": N, "ok": N, "failed": N,
               "by_backend": {"lp-be1": N, ...},
               "clients": N, "clients_all_ok": N,
               "clients_single_backend": N, "clients_multi_backend": N},
   "elapsed_s": 1.23}
results[client][k] is the body of request k, or null when it failed (the
reason is then in errors[client]). Every client appears in results; only
clients with failures appear in errors. Never raises on network errors.

Source addresses outside the lp-client AnyIP ranges are bound with
IP_FREEBIND, so binding never fails there; they just get no replies.
"""
import argparse
import ipaddress
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

IP_FREEBIND = 15            # SOL_IP
IPV6_FREEBIND = 78          # IPPROTO_IPV6
IP_BIND_ADDRESS_NO_PORT = 24  # SOL_IP, also honoured for IPv6 sockets


def one_request(family, src, vip, port, path, host, timeout):
    """Return backend name (str) or raise an exception describing the failure."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        # Pick the source port at connect() time (4-tuple aware).
        try:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass
        s.bind((src, 0))
        deadline = time.monotonic() + timeout
        s.connect((vip, port))
        req = (f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
               f"User-Agent: limpet-testbed-client\r\nConnection: close\r\n\r\n")
        s.sendall(req.encode())
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out reading response")
            s.settimeout(left)
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"malformed response ({len(data)} bytes)")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status.split()
    if len(parts) < 2 or parts[1] != "200":
        raise ValueError(f"bad status: {status!r}")
    return body.decode("utf-8", "replace").strip()


def describe(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (RST)"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, OSError) and e.errno is not None:
        return f"{type(e).__name__}: [errno {e.errno}] {e.strerror}"
    return f"{type(e).__name__}: {e}"


def run_client(args, family, src, host):
    out, errs = [], []
    for k in range(args.requests):
        try:
            out.append(one_request(family, src, args.vip, args.port, args.path,
                                   host, args.timeout))
        except Exception as e:  # never crash: record and carry on
            out.append(None)
            errs.append({"request": k, "error": describe(e)})
        if args.sleep > 0 and k + 1 < args.requests:
            time.sleep(args.sleep)
    return src, out, errs


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vip", default="192.0.2.10")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--first", default=None,
                    help="first source address (default 198.18.0.10 or 2001:db8:c1::10)")
    ap.add_argument("--requests", type=int, default=16, help="requests per client")
    ap.add_argument("--parallel", type=int, default=32, help="max concurrent clients")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    ap.add_argument("--sleep", type=float, default=0.0,
                    help="pause between one client's requests (s)")
    ap.add_argument("--path", default="/")
    ap.add_argument("--indent", type=int, default=None, help="pretty-print JSON")
    args = ap.parse_args()

    try:
        vip = ipaddress.ip_address(args.vip)
        if args.clients < 1 or args.requests < 1 or args.parallel < 1:
            raise ValueError("--clients, --requests and --parallel must be >= 1")
        if args.first is None:
            args.first = "198.18.0.10" if vip.version == 4 else "2001:db8:c1::10"
        first = ipaddress.ip_address(args.first)
        if first.version != vip.version:
            raise ValueError("--first and --vip must be the same address family")
        last = first + (args.clients - 1)  # raises if it overflows
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    del last

    family = socket.AF_INET if vip.version == 4 else socket.AF_INET6
    host = args.vip if vip.version == 4 else f"[{args.vip}]"
    if args.port != 80:
        host = f"{host}:{args.port}"
    sources = [str(first + i) for i in range(args.clients)]

    results, errors = {}, {}
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(args.parallel, len(sources))) as pool:
        for src, out, errs in pool.map(lambda s: run_client(args, family, s, host),
                                       sources):
            results[src] = out
            if errs:
                errors[src] = errs
    elapsed = time.monotonic() - t0

    by_backend = {}
    single = multi = all_ok = 0
    for out in results.values():
        names = [x for x in out if x is not None]
        for n in names:
            by_backend[n] = by_backend.get(n, 0) + 1
        distinct = len(set(names))
        single += distinct == 1
        multi += distinct > 1
        all_ok += len(names) == len(out)
    total = args.clients * args.requests
    ok = sum(by_backend.values())
    doc = {
        "vip": args.vip,
        "port": args.port,
        "results": results,
        "errors": errors,
        "summary": {
            "requests": total,
            "ok": ok,
            "failed": total - ok,
            "by_backend": dict(sorted(by_backend.items())),
            "clients": args.clients,
            "clients_all_ok": all_ok,
            "clients_single_backend": single,
            "clients_multi_backend": multi,
        },
        "elapsed_s": round(elapsed, 3),
    }
    json.dump(doc, sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
