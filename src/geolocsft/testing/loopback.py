"""The HTTP server under the loopback stand-ins (Gemini/OpenAI, Hugging Face Hub).

A stand-in is a request handler class plus a state object the handler reads and updates;
:class:`LoopbackServer` binds them to 127.0.0.1, :class:`BackgroundServer` runs one in a thread
for a ``with`` block (tests), and :func:`serve_until_interrupted` runs one in the foreground
(``python -m ...``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

S = TypeVar("S")


class LoopbackServer(ThreadingHTTPServer, Generic[S]):
    """A threaded HTTP server on 127.0.0.1 (port 0: any free port) holding a stand-in's state."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: S, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.state = state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class BackgroundServer(Generic[S]):
    """Run a :class:`LoopbackServer` in a background thread: ``with X(...) as s: s.url``."""

    def __init__(self, server: LoopbackServer[S]) -> None:
        self.server = server
        self.state: S = server.state
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_interrupted(
    server: LoopbackServer[Any], summary: Callable[[], dict[str, Any]]
) -> None:
    """Serve until Ctrl-C, then print ``summary()`` as one JSON line."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(json.dumps(summary()))
