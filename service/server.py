"""Serving an app over TCP: `listen` and `BackgroundServer` (uvicorn in a daemon thread, for tests and notebooks)."""
from __future__ import annotations

import socket
import threading

from fastapi import FastAPI


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


def serve(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> None:
  """Serves `app` on the listening socket until interrupted (uvicorn, one process; info logs every request)."""
  import uvicorn
  uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "info")).run(sockets=[sock])


class BackgroundServer:
  """An app served by uvicorn in a daemon thread (tests, notebooks, benchmarks): `with BackgroundServer(app) as
  url: ...` starts it on a free port of 127.0.0.1 and stops it on exit."""

  def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    import uvicorn
    self.sock = listen(host, port)
    self.url = url_of(self.sock)
    self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

  def __enter__(self) -> str:
    self.thread.start()
    return self.url

  def __exit__(self, *exc) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=10)
    self.sock.close()
