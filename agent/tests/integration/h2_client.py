#!/usr/bin/env python3
"""A raw HTTP/2 client for tether's HTTP/2 tests (the Python `h2` package): requests with
cookie crumbs, streams past the concurrency limit, rapid reset, CONTINUATION floods, large
header lists and idle connections. Prints one JSON object; every loop is bounded in count and
time."""
import argparse
import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Client(h2.connection.H2Connection):
    """The h2 package takes any GOAWAY as the end of the connection, and refuses the frames
    after it; a graceful one (NO_ERROR) lets the streams it covers finish (RFC 9113 §6.8), so
    this client reports it and keeps reading them."""

    def _receive_goaway_frame(self, frame):
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Client(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def request_headers(port, path, extra, method="GET"):
    if method == "CONNECT":
        # RFC 9113 §8.5: :method and :authority only.
        return [(":method", "CONNECT"), (":authority", "example.com:443")] + extra
    return [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{port}"),
    ] + extra


class Streams:
    """What each stream got: status, headers, body, trailers, reset."""

    def __init__(self):
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.settings = {}
        # Whether received data is acknowledged (WINDOW_UPDATE): a starving client does not.
        self.ack = True
        self.received = 0

    def stream(self, sid):
        return self.streams.setdefault(
            sid, {"status": None, "headers": [], "body": "", "trailers": [], "reset": None, "ended": False}
        )

    def feed(self, conn, events):
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                s = self.stream(event.stream_id)
                for k, v in event.headers:
                    if k == ":status":
                        s["status"] = int(v)
                    else:
                        s["headers"].append([k, v])
            elif isinstance(event, h2.events.DataReceived):
                s = self.stream(event.stream_id)
                self.received += len(event.data)
                if len(s["body"]) < 65536:
                    s["body"] += event.data.decode("utf-8", "replace")
                if self.ack:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.stream(event.stream_id)["trailers"] = [[k, v] for k, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded):
                self.stream(event.stream_id)["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.stream(event.stream_id)["reset"] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for key, change in event.changed_settings.items():
                    self.settings[int(key)] = change.new_value

    def pump(self, sock, conn, done, limit):
        """Reads and answers frames until `done()` or the connection ends, at most `limit` s."""
        deadline = time.monotonic() + limit
        while not done() and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                self.feed(conn, conn.receive_data(data))
            except h2.exceptions.ProtocolError as error:
                self.closed = True
                self.error = str(error)
                break
            out = conn.data_to_send()
            if out:
                try:
                    sock.sendall(out)
                except OSError:
                    self.closed = True
                    break

    def done(self, ids):
        return lambda: all(
            self.stream(i)["ended"] or self.stream(i)["reset"] is not None for i in ids
        ) or self.goaway not in (None, 0)


def cmd_request(args):
    sock, conn = connect(args.port)
    got = Streams()
    results = []
    extra = [("cookie", c) for c in args.cookie]
    extra += [tuple(h.split("=", 1)) for h in args.header]
    for _ in range(args.count):
        sid = conn.get_next_available_stream_id()
        headers = request_headers(args.port, args.path, extra, args.method)
        conn.send_headers(sid, headers, end_stream=args.method != "CONNECT")
        sock.sendall(conn.data_to_send())
        got.pump(sock, conn, got.done([sid]), 10)
        results.append(got.stream(sid))
        if got.goaway not in (None, 0) or got.closed:
            break
    print(json.dumps({"responses": results, "goaway": got.goaway, "closed": got.closed}))


def cmd_streams(args):
    """Opens `open` streams at once, before the server's SETTINGS can limit the client."""
    sock, conn = connect(args.port)
    got = Streams()
    ids = []
    for _ in range(args.open):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers(args.port, args.path, []), end_stream=True)
        ids.append(sid)
    sock.sendall(conn.data_to_send())
    got.pump(sock, conn, got.done(ids), 20)
    print(json.dumps({
        "settings": {str(k): v for k, v in got.settings.items()},
        "statuses": [got.stream(i)["status"] for i in ids],
        "resets": [got.stream(i)["reset"] for i in ids],
        "goaway": got.goaway,
    }))


def cmd_rapid_reset(args):
    """HEADERS then RST_STREAM(CANCEL) for `streams` streams, in batches; then what came back."""
    sock, conn = connect(args.port)
    got = Streams()
    sent = 0
    broken = False
    deadline = time.monotonic() + 20
    while sent < args.streams and time.monotonic() < deadline:
        try:
            for _ in range(100):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, request_headers(args.port, args.path, []), end_stream=True)
                conn.reset_stream(sid, error_code=8)
                sent += 1
            sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            broken = True
            break
        # Read what is there without waiting, so a GOAWAY is seen.
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
            if not data:
                broken = True
            else:
                got.feed(conn, conn.receive_data(data))
        except BlockingIOError:
            pass
        except (OSError, h2.exceptions.ProtocolError):
            broken = True
        sock.setblocking(True)
        if broken or got.goaway is not None:
            break
    got.pump(sock, conn, lambda: got.goaway is not None, 5)
    print(json.dumps({"sent": sent, "goaway": got.goaway, "closed": got.closed or broken}))


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def goaway_code(data):
    """The error code of the first GOAWAY frame in `data`, if any."""
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        kind = data[at + 3]
        if kind == 7 and at + 9 + 8 <= len(data):
            return int.from_bytes(data[at + 13:at + 17], "big")
        at += 9 + length
    return None


def cmd_continuation(args):
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames (never ending) of `size`
    bytes each: literal header fields, so the block stays well formed as far as it goes."""
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    sock.sendall(PREFACE + frame(4, 0, 0, b""))
    # :method GET, :path /, :scheme http (static table), no END_HEADERS.
    sock.sendall(frame(1, 0x1, 1, bytes([0x82, 0x84, 0x86])))
    name = b"x-flood"
    value = b"a" * max(1, args.size - len(name) - 4)
    field = bytes([0x00, len(name)]) + name
    # A literal without indexing, value length on 7 bits with continuation bytes.
    length = len(value)
    encoded = bytearray()
    if length < 127:
        encoded.append(length)
    else:
        encoded.append(127)
        length -= 127
        while length >= 128:
            encoded.append((length % 128) + 128)
            length //= 128
        encoded.append(length)
    block = field + bytes(encoded) + value
    received = b""
    sent = 0
    closed = False
    deadline = time.monotonic() + 20
    sock.setblocking(False)
    while sent < args.frames and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            received += data
        except BlockingIOError:
            pass
        except OSError:
            closed = True
            break
        try:
            sock.setblocking(True)
            sock.settimeout(5)
            sock.sendall(frame(9, 0, 1, block))
            sent += 1
        except OSError:
            closed = True
            break
        finally:
            sock.setblocking(False)
    sock.setblocking(True)
    sock.settimeout(2)
    try:
        while len(received) < 1 << 20:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            received += data
    except socket.timeout:
        pass
    except OSError:
        closed = True
    print(json.dumps({"sent": sent, "bytes": sent * len(block), "closed": closed, "goaway": goaway_code(received)}))


def cmd_idle(args):
    """One request, then how long until the server ends the idle connection."""
    sock, conn = connect(args.port)
    got = Streams()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers(args.port, "/", []), end_stream=True)
    sock.sendall(conn.data_to_send())
    got.pump(sock, conn, got.done([sid]), 10)
    start = time.monotonic()
    got.pump(sock, conn, lambda: got.closed, args.seconds)
    print(json.dumps({
        "status": got.stream(sid)["status"],
        "goaway": got.goaway,
        "closed": got.closed,
        "after": time.monotonic() - start,
    }))


def cmd_starve(args):
    """Asks for a large response, reads the socket but never gives flow-control credit: how
    long until the server ends the connection."""
    sock, conn = connect(args.port)
    got = Streams()
    got.ack = False
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers(args.port, args.path, []), end_stream=True)
    sock.sendall(conn.data_to_send())
    start = time.monotonic()
    got.pump(sock, conn, lambda: got.closed, args.seconds)
    print(json.dumps({
        "status": got.stream(sid)["status"],
        "received": got.received,
        "closed": got.closed,
        "after": time.monotonic() - start,
    }))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("request")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/headers")
    p.add_argument("--cookie", action="append", default=[])
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--method", default="GET")
    p = sub.add_parser("streams")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--open", type=int, required=True)
    p = sub.add_parser("rapid-reset")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--streams", type=int, required=True)
    p = sub.add_parser("continuation")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--size", type=int, default=1024)
    p = sub.add_parser("starve")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("idle")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    {
        "request": cmd_request,
        "streams": cmd_streams,
        "rapid-reset": cmd_rapid_reset,
        "continuation": cmd_continuation,
        "idle": cmd_idle,
        "starve": cmd_starve,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
