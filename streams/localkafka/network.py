"""The launcher's side of the wire: ports on 127.0.0.1, the readiness probe, topic creation."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

from aiokafka.errors import KafkaError

from streams import clients
from streams.settings import Settings

#: Every listener of the local broker is on this address.
HOST: Final = "127.0.0.1"


def free_port() -> int:
    """A port on :data:`HOST` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True when a listener could bind ``port`` on :data:`HOST`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The same option the JVM sets, so our own connections in TIME_WAIT
        # from before a restart do not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def accepts_tcp(port: int) -> bool:
    """True when something accepts a TCP connection on ``port`` of :data:`HOST`."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def run_coroutine_in_thread(factory: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    """Run a coroutine on a fresh event loop in a helper thread.

    :class:`~streams.localkafka.LocalKafka` is synchronous but is also called
    from async tests, where ``asyncio.run`` is forbidden and the caller's loop
    must stay untouched.
    """
    outcome: list[bool] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(asyncio.run(factory()))
        except BaseException as exc:  # handed back to the calling thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="txwatch-broker-probe", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


async def broker_answers(bootstrap: str, timeout: float, node_id: int) -> bool:
    """True when the broker answers a metadata request and lists itself and a controller."""
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-broker-probe",
                          request_timeout_ms=max(int(timeout * 1000), 1000))
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    brokers = {broker["node_id"] for broker in cluster.get("brokers", [])}
    return node_id in brokers and cluster.get("controller_id", -1) >= 0


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    client: Mapping[str, Any] | None = None,
) -> None:
    """:func:`streams.clients.create_topics` for test tooling that holds a bootstrap address.

    Parameters
    ----------
    bootstrap
        ``host:port[,host:port]`` of the cluster.
    names, partitions, replication_factor, timeout
        As :func:`streams.clients.create_topics`.
    client
        Security settings as aiokafka keywords (``security_protocol``,
        ``ssl_context``, ``sasl_*``); PLAINTEXT when ``None``.
    """
    await clients.create_topics(Settings(broker=bootstrap), names, partitions,
                                replication_factor=replication_factor, timeout=timeout,
                                **dict(client or {}))
