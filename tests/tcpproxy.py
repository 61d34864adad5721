"""A small loopback TCP proxy for fault tests: put it in front of a session-scoped
server, then cut every connection through it mid-transfer (the server survives), or let
it accept connections and never answer (a server that never sends its banner).

    with TcpProxy(("127.0.0.1", server_port)) as proxy:
        settings = {"host": "127.0.0.1", "port": proxy.port, ...}
        ... start an upload in a thread, wait for proxy.bytes_up > N, proxy.cut() ...

``TcpProxy(None)`` is a black hole: it accepts and then stays silent. ``freeze()`` stops
forwarding without closing anything (a network that went silent mid-transfer); ``port=``
listens on a given port (FTP data connections go to the port the server announced).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    def __init__(self, target: tuple[str, int] | None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.bytes_up = 0  # client → server
        self.bytes_down = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                self._sockets.append(client)
            if self.target is None:
                continue  # black hole: never answer
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        src.settimeout(None)
        try:
            while True:
                while not self._flowing.wait(0.1):
                    if self._stop.is_set():
                        return
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection through the proxy at once (an RST on both sides)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            # Wake a pump thread blocked in recv() on it: Linux keeps a socket that a
            # blocked call still uses open after close(), so an idle connection (an FTP
            # control connection during an upload) would never see its reset.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                sock.close()

    def freeze(self) -> None:
        """Stop forwarding in both directions, closing nothing: the peers' buffers fill
        and only their timeouts can end the transfer."""
        self._flowing.clear()

    def wait_for_upload(self, at_least: int, timeout: float = 30) -> None:
        """Block until *at_least* bytes went from client to server."""
        deadline = time.monotonic() + timeout
        while self.bytes_up < at_least:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.bytes_up} bytes went through the proxy")
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)
