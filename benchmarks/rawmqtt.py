"""A minimal MQTT 3.1.1 QoS 1 publisher on a raw socket.

The load generator has to offer tens of thousands of messages a second from one process on a
2-core machine that also runs the broker and the gateway. A paho client spends most of a core
on that; pre-encoded PUBLISH packets written in batches cost a few percent.
"""

from __future__ import annotations

import socket
import struct
import threading


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, clean: bool = True, keepalive: int = 0) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", keepalive)
    body += _utf8(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, pid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", pid) + payload
    return b"\x32" + _varint(len(body)) + body


class RawPublisher:
    """One connection; `send(items)` writes QoS 1 PUBLISHes, a thread counts the PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        head = self._recv_exact(4)
        if head[0] != 0x20 or head[3] != 0:
            raise ConnectionError(f"broker refused the connection: {head!r}")
        self.sock.settimeout(None)
        self.sent = 0
        self.acked = 0
        self._pid = 0
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="puback-reader")
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                i = 0
                while True:
                    # fixed header, then a remaining length of 1-4 bytes
                    if len(buf) - i < 2:
                        break
                    kind = buf[i]
                    mult, length, j = 1, 0, i + 1
                    while j < len(buf):
                        b = buf[j]
                        length += (b & 0x7F) * mult
                        mult *= 128
                        j += 1
                        if not b & 0x80:
                            break
                    else:
                        break
                    if len(buf) - j < length:
                        break
                    if kind >> 4 == 4:
                        self.acked += 1
                    i = j + length
                buf = buf[i:]
        except OSError:
            return

    def send(self, items: list[tuple[bytes, bytes]]) -> None:
        out = bytearray()
        for topic, payload in items:
            self._pid = self._pid % 65535 + 1
            out += publish_packet(topic, payload, self._pid)
        self.sock.sendall(out)
        self.sent += len(items)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                pass
            self.sock.close()
