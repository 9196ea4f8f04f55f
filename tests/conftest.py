from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import responses as responses_lib

from django.dispatch import Signal

from django_ledgepay import client


@pytest.fixture(autouse=True)
def _fresh_client_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with a new session, no rate-limit reading, and no real sleeping."""
    client.reset_state()
    sleeps: list[float] = []
    monkeypatch.setattr(client, "sleep", sleeps.append)
    yield
    client.reset_state()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client asked for, in order, instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(client, "sleep", waits.append)
    return waits


@pytest.fixture
def api() -> Iterator[responses_lib.RequestsMock]:
    """A ``responses`` mock of LedgePay; any call it was not told about fails the test."""
    with responses_lib.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


API = "https://api.ledgepay.test/v1"


class Receiver:
    """A signal receiver that records each call's kwargs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        self.calls.append({"sender": sender, **kwargs})


@pytest.fixture
def receive() -> Iterator[Any]:
    """``receive(signal)`` connects a recording receiver, disconnected after the test."""
    connected: list[tuple[Signal, Receiver]] = []

    def connect(signal: Signal) -> Receiver:
        receiver = Receiver()
        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
        return receiver

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver)
