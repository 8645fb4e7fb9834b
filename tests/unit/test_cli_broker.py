"""``txwatch broker``: which port it asks for, and what it tells the user."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.localkafka import DEFAULT_CLIENT_PORT, HOST, broker_banner, cli_client_port
from streams.localkafka.network import port_is_free


@pytest.fixture
def default_port_taken() -> Iterator[None]:
    """Port 9092 held by a listener of this test (or already by someone else)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            holder.bind((HOST, DEFAULT_CLIENT_PORT))
            holder.listen()
        except OSError:
            pass  # in use already: the case this fixture stands for
        yield
    finally:
        holder.close()


def default_port_free() -> bool:
    return port_is_free(DEFAULT_CLIENT_PORT)


def test_an_explicit_port_wins() -> None:
    assert cli_client_port(None, 19092) == (19092, None)


def test_9092_when_free_else_any_free_port_with_a_note(default_port_taken: None) -> None:
    port, note = cli_client_port(None, None)
    assert port is None
    assert note is not None and f"port {DEFAULT_CLIENT_PORT}" in note and "in use" in note


def test_9092_is_the_default_when_free() -> None:
    if not default_port_free():
        pytest.skip(f"port {DEFAULT_CLIENT_PORT} is in use on this machine")
    assert cli_client_port(None, None) == (DEFAULT_CLIENT_PORT, None)


def test_the_previous_port_of_a_kept_data_dir_comes_first(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    (tmp_path / "server.properties").write_text(
        f"listeners=PLAINTEXT://{HOST}:{free},CONTROLLER://{HOST}:{free + 1}\n")
    assert cli_client_port(tmp_path, None) == (free, None)


def test_banner_prints_the_export_line_and_where_the_data_lives(tmp_path: Path) -> None:
    temporary = broker_banner("127.0.0.1:9092", tmp_path, False, tmp_path / "server.log")
    assert "  export TXWATCH_BROKER=127.0.0.1:9092" in temporary
    assert temporary[0] == "bootstrap: 127.0.0.1:9092"
    assert any(line.startswith(f"data: {tmp_path} (deleted when the broker stops; --data-dir")
               for line in temporary)
    kept = broker_banner("127.0.0.1:40123", tmp_path, True, tmp_path / "server.log")
    assert "  export TXWATCH_BROKER=127.0.0.1:40123" in kept
    assert any(line.startswith(f"data: {tmp_path} (kept") for line in kept)
