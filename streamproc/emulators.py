"""Emulated AWS for local runs and tests: moto's server, in-process, on 127.0.0.1.

Used by ``streamproc run --local`` and by the test fixtures. Imports moto lazily so production
installs do not need it (``pip install 'streamproc[local]'``).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from streamproc.errors import StreamprocError

LOCAL_REGION = "us-east-1"
# moto accepts any credentials; these make boto3 happy without touching the user's profile.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MotoServer:
    """A running in-process moto server. ``endpoint_url`` serves every AWS service we use."""

    endpoint_url: str
    _server: Any

    def stop(self) -> None:
        self._server.stop()


def start_moto(port: int | None = None) -> MotoServer:
    """Start moto's threaded server on 127.0.0.1 (a free port unless given)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StreamprocError(
            "local mode needs moto: install the 'local' extra, e.g. pip install 'streamproc[local]'"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    chosen = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=chosen, verbose=False)
    server.start()
    return MotoServer(endpoint_url=f"http://127.0.0.1:{chosen}", _server=server)
