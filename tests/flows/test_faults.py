"""Retry classification: transient I/O and lost workers retry, bad inputs fail at once."""

from __future__ import annotations

import pytest

from flows.faults import is_transient
from pipeline.errors import ConfigError, InputError


class KilledWorker(Exception):  # same name as distributed's: classification is by type name
    pass


class ClientError(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        OSError("curl error"),
        KilledWorker(),
        ClientError("SlowDown"),
    ],
)
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        InputError("s3://b/x.tif", "not found"),
        ConfigError("tiling.tile: bad"),
        FileNotFoundError("x"),
        PermissionError("denied"),
        ValueError("bug"),
        ClientError("AccessDenied"),
    ],
)
def test_permanent(exc):
    assert not is_transient(exc)


def test_cause_chain_is_followed():
    try:
        try:
            raise ConnectionResetError("peer")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
