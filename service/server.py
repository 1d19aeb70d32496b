"""Serving an app over TCP: `listen`, `serve` (uvicorn, one process) and `BackgroundServer` (tests, notebooks).

The connections themselves are guarded (`ConnectionLimits`, applied by a subclass of uvicorn's h11 protocol):
  * at most `max_connections` open connections, and `per_client` from one client address. A connection over
    either cap makes room by closing the connection (of that address, or of anyone) that has waited longest for a
    request's headers; when none is waiting (all are busy with requests) it is answered 503 (Retry-After) and
    closed. A flood of idle or slow connections can neither run the process out of file descriptors nor keep
    others out: each newcomer pushes out the oldest idler, and a real client sends its headers at once;
  * a request's headers must arrive within `header_timeout` seconds of the connection (or of the previous
    answer): slow senders are dropped (request bodies have their own timeout in the app);
  * idle keep-alive connections close after `keep_alive` seconds.
`serve` also raises the soft limit of open files to the hard one, and lowers `max_connections` to fit under it.
"""
from __future__ import annotations

import collections
import dataclasses
import socket
import threading
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
  from fastapi import FastAPI

_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: 42\r\n\r\n"
            b'{"detail": "too many connections; retry"}\n')


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
  """Caps and timeouts of the connections (module docstring)."""
  max_connections: int = 512
  per_client: int = 64
  header_timeout: float = 10.0
  keep_alive: int = 5

  def __post_init__(self):
    if self.max_connections < 1 or self.per_client < 1 or not self.header_timeout > 0 or self.keep_alive < 1:
      raise ValueError(f"invalid connection limits {self}")


def guarded_protocol(limits: ConnectionLimits):
  """A uvicorn HTTP/1.1 protocol class enforcing `limits` (one class per server: it holds the counts)."""
  from uvicorn.protocols.http.h11_impl import H11Protocol
  per_client: collections.Counter = collections.Counter()
  idle: dict = {}  # client address -> {connection: None}, oldest first: connections waiting for a request's headers
  open_connections = [0]

  def evict_idle(peer: Optional[str]) -> bool:
    """Closes the connection that has waited longest for headers (from `peer`, or from anyone); False if none."""
    queues = [idle.get(peer, {})] if peer is not None else list(idle.values())
    waiting = [next(iter(q)) for q in queues if q]
    if not waiting:
      return False
    oldest = min(waiting, key=lambda c: c._armed_at)
    oldest._disarm()
    oldest.transport.close()
    return True

  class GuardedProtocol(H11Protocol):
    _peer: Optional[str] = None
    _header_timer = None
    _timed_cycle = None
    _armed_at = 0.0

    def connection_made(self, transport) -> None:
      super().connection_made(transport)
      self._peer = self.client[0] if self.client else ""
      per_client[self._peer] += 1
      open_connections[0] += 1
      # Over a cap, the connection that has waited longest for headers makes room; without one, refuse this one.
      over_client = per_client[self._peer] > limits.per_client and not evict_idle(self._peer)
      if over_client or (open_connections[0] > limits.max_connections and not evict_idle(None)):
        transport.write(_REFUSED)
        transport.close()
        return
      self._arm()

    def _arm(self) -> None:
      """Drops the connection unless a new request's headers arrive within header_timeout."""
      self._disarm()
      self._timed_cycle, self._armed_at = self.cycle, self.loop.time()
      self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_late)
      idle.setdefault(self._peer, {})[self] = None

    def _disarm(self) -> None:
      if self._header_timer is not None:
        self._header_timer.cancel()
        self._header_timer = None
        waiting = idle.get(self._peer, {})
        waiting.pop(self, None)
        if not waiting:
          idle.pop(self._peer, None)

    def _headers_late(self) -> None:
      late = self.cycle is self._timed_cycle
      self._disarm()
      if late and not self.transport.is_closing():
        self.transport.close()

    def data_received(self, data: bytes) -> None:
      super().data_received(data)
      if self._header_timer is not None and self.cycle is not self._timed_cycle:
        self._disarm()  # a new request started: its headers are complete

    def on_response_complete(self) -> None:
      super().on_response_complete()
      if not self.transport.is_closing():
        self._arm()

    def connection_lost(self, exc) -> None:
      self._disarm()
      if self._peer is not None:
        per_client[self._peer] -= 1
        if per_client[self._peer] <= 0:
          del per_client[self._peer]
        open_connections[0] -= 1
        self._peer = None
      super().connection_lost(exc)

  return GuardedProtocol


def raise_open_files_limit(wanted: int) -> int:
  """Raises the soft limit of open files towards the hard one; returns the soft limit now in force."""
  try:
    import resource
  except ImportError:  # not POSIX
    return wanted
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
  if soft != resource.RLIM_INFINITY and target > soft:
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
      soft = target
    except (ValueError, OSError):
      pass
  return soft


def fit_to_open_files(limits: ConnectionLimits, headroom: int = 128) -> ConnectionLimits:
  """`limits` with max_connections lowered to fit the open-file limit (after raising it) less `headroom`."""
  soft = raise_open_files_limit(limits.max_connections + headroom)
  if soft - headroom < limits.max_connections:
    fitted = max(1, soft - headroom)
    return dataclasses.replace(limits, max_connections=fitted, per_client=min(limits.per_client, fitted))
  return limits


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
  """A listening TCP socket (port 0: the OS picks a free one, see `sock.getsockname()`)."""
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(2048)
  return sock


def url_of(sock: socket.socket) -> str:
  """http://HOST:PORT of a listening socket (IPv6 hosts in brackets)."""
  host, port = sock.getsockname()[:2]
  return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def uvicorn_server(app: FastAPI, connections: ConnectionLimits, log_level: str = "warning"):
  """A uvicorn.Server for `app` with the guarded protocol (info logs every request)."""
  import uvicorn
  config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "info", http=guarded_protocol(connections),
                          timeout_keep_alive=connections.keep_alive, ws="none", lifespan="on")
  return uvicorn.Server(config)


def serve(app: FastAPI, sock: socket.socket, connections: ConnectionLimits = ConnectionLimits(),
          log_level: str = "warning") -> None:
  """Serves `app` on the listening socket until interrupted."""
  uvicorn_server(app, connections, log_level).run(sockets=[sock])


class BackgroundServer:
  """An app served by uvicorn in a daemon thread (tests, notebooks, benchmarks): `with BackgroundServer(app) as
  url: ...` starts it on a free port of 127.0.0.1 and stops it on exit."""

  def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0,
               connections: ConnectionLimits = ConnectionLimits()):
    self.sock = listen(host, port)
    self.url = url_of(self.sock)
    self.server = uvicorn_server(app, connections)
    self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

  def __enter__(self) -> str:
    self.thread.start()
    return self.url

  def __exit__(self, *exc) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=10)
    self.sock.close()
