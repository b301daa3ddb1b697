"""Safety rule: tests send traffic to 127.0.0.1 or ::1 only. The tripwire fails a test on
any attempt to open a connection elsewhere, so a guard bug can never reach a real address."""

from __future__ import annotations

import ipaddress
import socket

import pytest


class Tripwire:
    def __init__(self):
        self.attempts: list[str] = []  # every connection attempt, loopback included
        self.blocked: list[str] = []


@pytest.fixture
def tripwire(monkeypatch):
    wire = Tripwire()
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple):
            host = address[0]
            wire.attempts.append(host)
            try:
                loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                wire.blocked.append(host)
                raise AssertionError(f"tripwire: connection attempt to non-loopback address {host}")

    def connect(self, address):
        check(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield wire
    assert not wire.blocked, f"connections were attempted to {wire.blocked}"
