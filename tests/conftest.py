"""Shared fixtures: a real moto server on 127.0.0.1, started once per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests

from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION, MotoServer, start_moto


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def moto_endpoint(moto_server: MotoServer) -> str:
    """The endpoint of the session's moto server. State is shared: tests use unique names."""
    return moto_server.endpoint_url


@pytest.fixture
def aws_client(moto_endpoint: str) -> Any:
    """Factory: ``aws_client("sqs")`` returns a boto3 client bound to the moto server."""

    def make(service: str) -> Any:
        return boto3.client(
            service, region_name=LOCAL_REGION, endpoint_url=moto_endpoint, **LOCAL_CREDENTIALS
        )

    return make


@pytest.fixture
def unique_name() -> str:
    """A short unique name for resources of one test (moto state is shared by the session)."""
    return "t" + uuid.uuid4().hex[:10]


def reset_moto(endpoint: str) -> None:
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)
