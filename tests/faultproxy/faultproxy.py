#!/usr/bin/python3
"""faultproxy: an HTTP proxy for the S3 tests that injects faults between a client and an S3 server.

It listens on 127.0.0.1:PORT (plain HTTP, or HTTPS with --tls-cert/--tls-key), forwards every
request unchanged (the Host header too, so SigV4 signatures stay valid) to the upstream server,
and, at the chosen rate, answers with a fault instead:

  500       HTTP 500 InternalError with an S3 XML error body
  503       HTTP 503 SlowDown with an S3 XML error body
  reset     the connection is reset (RST) without a response
  stall     nothing is sent for --stall seconds (longer than the client's request timeout), then
            the connection is closed
  truncate  the upstream response is sent with its full Content-Length but only part of its body,
            then the connection is closed
  corrupt   a 200 (or 206: a range) response body has one byte flipped (Content-Length and
            headers unchanged): the first byte of the first occurrence of the text given by
            flip=, or else the one at a third of the body
  html      HTTP 503 with a body that is not XML (an HTML page, as some load balancers send)

500, 503, reset and html happen either before the request reaches the server or after it was
served (the server did the work, the client never hears of it), chosen at random each time
unless when=before or when=after says which.

Faults are switched at run time through the control port (plain HTTP on 127.0.0.1:CONTROL_PORT):

  GET /set?kinds=500,503&rate=0.2[&stall=3][&methods=GET,PUT][&seed=1]   turn faults on
      [&paths=/lease,/meta]   only requests whose target contains one of these
      [&when=before|after]    500, 503, reset and html only before (or only after) serving
      [&status=200]           only once served, and only if the server answered with this status
      [&count=N]              N faults at most, then none until the next /set
      [&flip=TEXT]            where corrupt flips a byte (above)
  GET /off                                                               turn them off
  GET /stats     {"requests": N, "forwarded": N, "faults": {"500": N, ...}, "kinds": [...], "rate": R,
                  "payload": {"sha256": N, "unsigned": N, "other": N}}

"payload" counts the requests by their x-amz-content-sha256 header: a SHA-256 of the body (64 hex
digits), UNSIGNED-PAYLOAD, or anything else (absent included).

Python 3 standard library only. Start it with --ready-file FILE to know when it listens.
"""

import argparse
import http.client
import json
import random
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse

KINDS = ("500", "503", "reset", "stall", "truncate", "corrupt", "html")


class FaultState:
    """What to inject and what has been injected; shared by every connection thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = []
        self.rate = 0.0
        self.stall = 5.0
        self.methods = None  # None: every method
        self.paths = None  # None: every target
        self.when = None  # None: before or after serving, at random
        self.status = None  # None: any answer (or none yet)
        self.remaining = None  # None: no limit on the number of faults
        self.flip = None  # corrupt: flip the first byte of this text (bytes), or at a third
        self.rng = random.Random(1)
        self.requests = 0
        self.forwarded = 0
        self.faults = {k: 0 for k in KINDS}
        self.payload = {"sha256": 0, "unsigned": 0, "other": 0}

    def configure(self, kinds, rate, stall, methods, seed, paths=None, when=None, status=None,
                  count=None, flip=None):
        with self.lock:
            self.kinds = kinds
            self.rate = rate
            if stall is not None:
                self.stall = stall
            self.methods = methods
            self.paths = paths
            self.when = when
            self.status = status
            self.remaining = count
            self.flip = flip
            if seed is not None:
                self.rng = random.Random(seed)

    def choose(self, method, target, status=None):
        """Returns (kind, before) for a fault to inject on this request, or (None, False).

        Called before the request is forwarded (status None) and, where faults depend on the
        server's answer (status=), once more after it was served, with the answer's status."""
        with self.lock:
            if status is None:
                self.requests += 1
            if self.status != status:
                return None, False
            if not self.kinds or self.rate <= 0:
                return None, False
            if self.methods is not None and method not in self.methods:
                return None, False
            if self.paths is not None and not any(p in target for p in self.paths):
                return None, False
            if self.remaining is not None and self.remaining <= 0:
                return None, False
            if self.rng.random() >= self.rate:
                return None, False
            if self.remaining is not None:
                self.remaining -= 1
            kind = self.rng.choice(self.kinds)
            if status is not None:
                before = False
            elif self.when is not None:
                before = self.when == "before"
            else:
                before = self.rng.random() < 0.5
            return kind, before

    def count(self, kind):
        with self.lock:
            self.faults[kind] += 1

    def count_payload(self, headers):
        value = next((v for n, v in headers if n.lower() == "x-amz-content-sha256"), "")
        if value == "UNSIGNED-PAYLOAD":
            kind = "unsigned"
        elif len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            kind = "sha256"
        else:
            kind = "other"
        with self.lock:
            self.payload[kind] += 1

    def count_forwarded(self):
        with self.lock:
            self.forwarded += 1

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "forwarded": self.forwarded,
                    "faults": dict(self.faults), "kinds": list(self.kinds), "rate": self.rate,
                    "stall": self.stall, "payload": dict(self.payload),
                    "flip": self.flip.decode("latin-1") if self.flip else None}


STATE = FaultState()
UPSTREAM = ("127.0.0.1", 0)
UPSTREAM_TIMEOUT = 60.0


def s3_error_body(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            '<RequestId>faultproxy</RequestId></Error>' % (code, message)).encode()


class ClientGone(Exception):
    pass


class ProxyHandler(socketserver.BaseRequestHandler):
    """One client connection: HTTP/1.1 requests one after the other (keep-alive)."""

    def setup(self):
        self.sock = self.request
        self.sock.settimeout(300)
        self.buf = b""

    def read_until(self, marker):
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ClientGone()
            self.buf += data
            if len(self.buf) > 1 << 20 and marker not in self.buf:
                raise ClientGone()
        i = self.buf.index(marker) + len(marker)
        head, self.buf = self.buf[:i], self.buf[i:]
        return head

    def read_exact(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(max(65536, n - len(self.buf)))
            if not data:
                raise ClientGone()
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_request(self):
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        length = 0
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
            if name.lower() == "transfer-encoding" and value.lower() != "identity":
                raise ValueError("chunked request bodies are not supported")
        body = self.read_exact(length) if length else b""
        return method, target, headers, body

    def send_response(self, status, reason, headers, body, declared_length=None, head=False):
        out = ["HTTP/1.1 %d %s" % (status, reason)]
        for name, value in headers:
            if name.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            out.append("%s: %s" % (name, value))
        out.append("Content-Length: %d" % (len(body) if declared_length is None else declared_length))
        out.append("")
        out.append("")
        self.sock.sendall("\r\n".join(out).encode("latin-1") + (b"" if head else body))

    def send_s3_error(self, status, code, message):
        self.send_response(status, "Error", [("Content-Type", "application/xml")],
                           s3_error_body(code, message))

    def reset(self):
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def forward(self, method, target, headers, body):
        conn = http.client.HTTPConnection(UPSTREAM[0], UPSTREAM[1], timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() in ("connection", "content-length"):
                    continue
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            STATE.count_forwarded()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def handle(self):
        try:
            while True:
                try:
                    method, target, headers, body = self.read_request()
                except (ClientGone, ConnectionError, socket.timeout, OSError):
                    return
                STATE.count_payload(headers)
                head = method == "HEAD"
                kind, before = STATE.choose(method, target)
                if kind in ("500", "503", "reset", "html") and before:
                    self.inject_simple(kind)
                    if kind == "reset":
                        return
                    continue
                if kind == "stall":
                    STATE.count(kind)
                    time.sleep(STATE.snapshot()["stall"])
                    self.sock.close()
                    return
                try:
                    status, reason, rheaders, data = self.forward(method, target, headers, body)
                except (OSError, http.client.HTTPException) as e:
                    sys.stderr.write("faultproxy: upstream failed: %s\n" % e)
                    self.send_s3_error(502, "BadGateway", "upstream failed")
                    continue
                if kind is None:
                    kind, _ = STATE.choose(method, target, status)
                if kind in ("500", "503", "reset", "html"):
                    self.inject_simple(kind)
                    if kind == "reset":
                        return
                    continue
                if kind == "truncate" and len(data) > 1 and not head:
                    STATE.count(kind)
                    self.send_response(status, reason, rheaders, data[: len(data) // 2],
                                       declared_length=len(data))
                    self.sock.close()
                    return
                if kind == "corrupt" and status in (200, 206) and data and not head:
                    STATE.count(kind)
                    flip = STATE.flip
                    i = len(data) // 3
                    if flip and data.find(flip) >= 0:
                        i = data.find(flip)
                    data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
                declared = len(data)
                if head:  # no body: keep the length the server announced
                    declared = int(dict((k.lower(), v) for k, v in rheaders).get("content-length", "0"))
                self.send_response(status, reason, rheaders, data, declared_length=declared, head=head)
        except (ConnectionError, OSError):
            return

    def inject_simple(self, kind):
        STATE.count(kind)
        if kind == "500":
            self.send_s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
        elif kind == "503":
            self.send_s3_error(503, "SlowDown", "Please reduce your request rate.")
        elif kind == "html":
            self.send_response(503, "Service Unavailable", [("Content-Type", "text/html")],
                               b"<html><body><h1>503 Service Unavailable</h1>No server is available "
                               b"to handle this request.</body></html>\n")
        elif kind == "reset":
            self.reset()


class ControlHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        try:
            target = line.split(" ")[1]
        except IndexError:
            return
        url = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(url.query))
        status, body = 200, b""
        try:
            if url.path == "/set":
                kinds = [k for k in q.get("kinds", "").split(",") if k]
                for k in kinds:
                    if k not in KINDS:
                        raise ValueError("unknown fault kind %r (known: %s)" % (k, ", ".join(KINDS)))
                rate = float(q.get("rate", "0.1"))
                if not 0 <= rate <= 1:
                    raise ValueError("rate must be from 0 to 1")
                stall = float(q["stall"]) if "stall" in q else None
                methods = set(q["methods"].split(",")) if q.get("methods") else None
                seed = int(q["seed"]) if "seed" in q else None
                paths = [p for p in q["paths"].split(",") if p] if q.get("paths") else None
                when = q.get("when") or None
                if when not in (None, "before", "after"):
                    raise ValueError("when must be before or after")
                status_filter = int(q["status"]) if "status" in q else None
                count = int(q["count"]) if "count" in q else None
                flip = q["flip"].encode() if q.get("flip") else None
                STATE.configure(kinds, rate, stall, methods, seed, paths, when, status_filter, count,
                                flip)
                body = json.dumps(STATE.snapshot()).encode()
            elif url.path == "/off":
                STATE.configure([], 0.0, None, None, None)
                body = json.dumps(STATE.snapshot()).encode()
            elif url.path == "/stats":
                body = json.dumps(STATE.snapshot()).encode()
            else:
                status, body = 404, b"unknown path\n"
        except (ValueError, KeyError) as e:
            status, body = 400, (str(e) + "\n").encode()
        self.wfile.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (status, len(body)) + body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class TlsServer(Server):
    ssl_context = None

    def get_request(self):
        sock, addr = self.socket.accept()
        try:
            return self.ssl_context.wrap_socket(sock, server_side=True), addr
        except (ssl.SSLError, OSError):
            sock.close()
            raise


def main():
    global UPSTREAM, UPSTREAM_TIMEOUT
    p = argparse.ArgumentParser(description="Fault-injecting HTTP proxy for the S3 tests.")
    p.add_argument("--listen", type=int, required=True, help="port for clients (127.0.0.1)")
    p.add_argument("--control", type=int, required=True, help="control port (127.0.0.1)")
    p.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--ready-file", help="written once both ports listen")
    args = p.parse_args()
    up = urllib.parse.urlsplit(args.upstream)
    UPSTREAM = (up.hostname, up.port or 80)

    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server = TlsServer(("127.0.0.1", args.listen), ProxyHandler)
        server.ssl_context = ctx
    else:
        server = Server(("127.0.0.1", args.listen), ProxyHandler)
    control = Server(("127.0.0.1", args.control), ControlHandler)
    for s in (server, control):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("%d\n" % args.listen)
    sys.stderr.write("faultproxy: 127.0.0.1:%d -> %s, control on 127.0.0.1:%d%s\n" %
                     (args.listen, args.upstream, args.control, " (TLS)" if args.tls_cert else ""))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
