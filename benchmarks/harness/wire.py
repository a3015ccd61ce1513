"""A minimal WebSocket client, written for the benchmarks' client fleets.

An `asyncio.Protocol`: RFC 6455 handshake, masked client frames, unmasked server
frames read straight from the socket buffer, ping answered with pong,
permessage-deflate decompressed when a server accepts it. `websockets` costs several
times more CPU per frame, and with 500 clients the generator reads tens of thousands
of frames per second on the same 2 cores as the server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import zlib
from typing import Any

from collab_engine import protocol

HOST = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

var_uint = protocol.encode_var_uint
var_string = protocol.encode_var_string


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, `opcode`, masked with a random key (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n == 0:
        return header + key
    mask = (key * ((n + 3) // 4))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return header + key + masked


class Link(asyncio.Protocol):
    """A WebSocket client connection that hands each message to `on_message(msg, now)`.

    `now` is `time.perf_counter()` when the bytes were read from the socket.
    """

    def __init__(self, path: str, port: int, deflate: bool) -> None:
        self.path = path
        self.port = port
        self.deflate_offered = deflate
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._head = bytearray()
        self._open = False
        self._pending = b""
        self._fragments: list[bytes] | None = None
        self._fragment_compressed = False
        self._inflate: Any = None
        self.extensions = ""
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {HOST}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.deflate_offered:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.closing:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._open:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self._head[end + 4 :])
            if not self._handshake(bytes(self._head[:end]).decode("latin-1")):
                return
            if not data:
                return
        if self._pending:
            data = self._pending + data
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            key = b""
            if b1 & 0x80:  # servers do not mask, but read it right if one does
                key = data[start : start + 4]
                start += 4
            end = start + length
            if end > n:
                break
            payload = data[start:end]
            pos = end
            if key:
                mask = (key * ((length + 3) // 4))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                    length, "big"
                )
            opcode = b0 & 0x0F
            if opcode == 0x2 or opcode == 0x1:
                if b0 & 0x80:
                    if b0 & 0x40:
                        payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
                    self.frames += 1
                    self.on_message(payload, now)
                else:
                    self._fragments = [payload]
                    self._fragment_compressed = bool(b0 & 0x40)
            elif opcode == 0x0:
                if self._fragments is None:
                    continue
                self._fragments.append(payload)
                if b0 & 0x80:
                    message = b"".join(self._fragments)
                    self._fragments = None
                    if self._fragment_compressed:
                        message = self._inflate.decompress(message + b"\x00\x00\xff\xff")
                    self.frames += 1
                    self.on_message(message, now)
            elif opcode == 0x9:
                self._write(mask_frame(0xA, payload))
            elif opcode == 0x8:
                if len(payload) >= 2:
                    self.close_code = int.from_bytes(payload[:2], "big")
                    self.close_reason = payload[2:].decode(errors="replace")
                else:
                    self.close_code = 1005
                if not self.closing:
                    self._write(mask_frame(0x8, payload[:2]))
                    self.on_closed_by_server()
                if self.transport is not None:
                    self.transport.close()
                self._pending = b""
                return
        self._pending = data[pos:] if pos < n else b""

    def _handshake(self, head: str) -> bool:
        status, _, rest = head.partition("\r\n")
        headers: dict[str, str] = {}
        for line in rest.split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
        if " 101 " not in status + " " or headers.get("sec-websocket-accept") != expected:
            self.opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self.extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in self.extensions:
            self._inflate = zlib.decompressobj(-15)
        self._open = True
        self.opened.set_result(None)
        return True

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, payload: bytes) -> None:
        """Send one binary message (uncompressed: permessage-deflate allows that)."""
        self._write(mask_frame(0x2, payload))

    def start_close(self) -> None:
        self.closing = True
        self._write(mask_frame(0x8, (1000).to_bytes(2, "big")))

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # for subclasses

    def on_message(self, message: bytes, now: float) -> None:
        raise NotImplementedError

    def on_closed_by_server(self) -> None:
        pass

    def on_lost(self) -> None:
        pass
