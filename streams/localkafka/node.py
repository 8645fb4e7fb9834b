"""One Kafka node, KRaft broker and controller in a child JVM, on free ports of 127.0.0.1."""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from streams.localkafka.base import (
    LOG_TAIL_LINES,
    BrokerError,
    BrokerSetupError,
    BrokerStartError,
    Progress,
    print_progress,
)
from streams.localkafka.jars import KAFKA_VERSION, project_dir, resolve_kafka_jars
from streams.localkafka.network import (
    HOST,
    accepts_tcp,
    broker_answers,
    free_port,
    port_is_free,
    run_coroutine_in_thread,
)
from streams.localkafka.secure import SECURE_LISTENER, SecureListener

#: Node id of the single KRaft node (broker and controller at once).
NODE_ID: Final = 1


def new_cluster_id() -> str:
    """A random Kafka cluster id: a UUID in 22 characters of unpadded base64url."""
    while True:
        encoded = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Kafka's own Uuid.randomUuid() skips ids starting with "-" (they read as options).
        if not encoded.startswith("-"):
            return encoded


def _tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]


_running: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


@atexit.register
def _stop_leftover_brokers() -> None:
    """Never leave a JVM behind when the interpreter exits with a broker running."""
    for broker in list(_running):
        with contextlib.suppress(Exception):
            broker.stop(timeout=10.0)


class LocalKafka:
    """One Apache Kafka node (KRaft broker and controller) in a child JVM.

    Parameters
    ----------
    data_dir
        Holds ``server.properties``, the Kafka log directory, ``broker.out``
        (the JVM's stdout and stderr) and ``logs/server.log``. A temporary
        directory, removed by :meth:`close`, when ``None``; a given directory
        is kept, and a later broker on it finds its topics again.
    port
        Client port on 127.0.0.1. When ``None``, the port of the previous run
        on ``data_dir`` if it is free, else any free port.
    controller_port
        KRaft controller port; chosen like ``port``.
    cache_dir
        Jar directory, see :func:`resolve_kafka_jars`.
    extra_properties
        Broker settings added to (or overriding) the generated ``server.properties``.
    secure_listener
        Also listen for SASL_SSL clients (see :class:`SecureListener`).
    heap
        Maximum JVM heap, as in ``-Xmx``.
    node_id, cluster_id, quorum_voters
        For a node of a :class:`LocalKafkaCluster`: its id, the cluster's id
        (every node formats its storage with it) and the controller quorum
        (``id@host:port,...``); a cluster of one by default.
    start_timeout
        Seconds to wait for the broker to answer before giving up.
    stop_timeout
        Seconds to wait after SIGTERM before SIGKILL.
    progress
        Receives progress lines (jar resolution, start, stop); stderr when ``None``.

    Examples
    --------
    >>> with LocalKafka() as kafka:  # doctest: +SKIP
    ...     print(kafka.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        cache_dir: Path | None = None,
        extra_properties: Mapping[str, str] | None = None,
        secure_listener: SecureListener | None = None,
        heap: str = "512m",
        node_id: int = NODE_ID,
        cluster_id: str | None = None,
        quorum_voters: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        progress: Progress | None = None,
    ) -> None:
        self.node_id = node_id
        self._cluster_id = cluster_id
        self._quorum_voters = quorum_voters
        self._owns_data_dir = data_dir is None
        self._data_dir = (
            Path(tempfile.mkdtemp(prefix="txwatch-kafka-")) if data_dir is None else data_dir
        ).resolve()
        self._port = port
        self._controller_port = controller_port
        self._cache_dir = cache_dir
        self._extra_properties = dict(extra_properties or {})
        self._secure = secure_listener
        self._secure_port = secure_listener.port if secure_listener is not None else None
        self._heap = heap
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._progress = progress or print_progress
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    # -- where things are ------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_dir(self) -> Path:
        """Kafka's data (``log.dirs``): topics, offsets and the KRaft metadata log."""
        return self._data_dir / "kraft-combined-logs"

    @property
    def properties_path(self) -> Path:
        return self._data_dir / "server.properties"

    @property
    def output_path(self) -> Path:
        """The JVM's stdout and stderr."""
        return self._data_dir / "broker.out"

    @property
    def server_log_path(self) -> Path:
        """The broker's log4j log (``deploy/kafka/log4j2.yaml``)."""
        return self._data_dir / "logs" / "server.log"

    @property
    def port(self) -> int:
        """The client port; known once the broker has been started."""
        if self._port is None:
            message = "the broker has no port yet: call start() first"
            raise BrokerError(message)
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers`` and ``TXWATCH_BROKER``."""
        return f"{HOST}:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` of the SASL_SSL listener; known once the broker has started."""
        if self._secure is None:
            message = "this broker has no secure listener: pass secure_listener="
            raise BrokerError(message)
        if self._secure_port is None:
            message = "the broker has no secure port yet: call start() first"
            raise BrokerError(message)
        return f"{HOST}:{self._secure_port}"

    @property
    def running(self) -> bool:
        """True while the JVM is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of ``broker.out`` and of ``logs/server.log``."""
        parts = []
        for path in (self.output_path, self.server_log_path):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"==> {path} <==\n" + "\n".join(tail))
        return "\n".join(parts) if parts else f"(no output in {self._data_dir})"

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the broker and return once it answers metadata requests.

        Raises
        ------
        BrokerSetupError
            Java or Maven is missing, or the jars cannot be resolved.
        BrokerStartError
            The broker exits, cannot format its storage or does not answer in
            ``start_timeout`` seconds; the message ends with the log tail.
        """
        started = self.launch()
        self.wait_ready(started)

    def launch(self) -> float:
        """Start the JVM without waiting for it; returns when it was started (monotonic).

        A node of a cluster answers only once a quorum of controllers runs, so
        :class:`LocalKafkaCluster` launches every node before it waits.
        """
        if self.running:
            message = f"the broker on {self.bootstrap} is already running"
            raise BrokerError(message)
        self._terminate(timeout=0.0)  # reap a JVM that died on its own, close its log file
        libs = resolve_kafka_jars(self._cache_dir, progress=self._progress)
        java = shutil.which("java")
        if java is None:
            message = "Java (java, version 17 or newer) is not on PATH; Kafka needs it"
            raise BrokerSetupError(message)
        self._choose_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.server_log_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        started = time.monotonic()
        self._progress(
            f"starting Kafka {KAFKA_VERSION} on {self.bootstrap} (data: {self._data_dir})"
        )
        if not (self.log_dir / "meta.properties").is_file():
            self._format_storage(java, libs)
        self._output = self.output_path.open("ab")
        self._process = subprocess.Popen(
            [*self._java_command(java, libs), "kafka.Kafka", str(self.properties_path)],
            cwd=self._data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in a terminal reaches us, and we stop the JVM.
            start_new_session=True,
        )
        _running.add(self)
        return started

    def wait_ready(self, started: float) -> None:
        """Return once the launched broker answers; stop it and raise if it does not in time."""
        try:
            self._wait_until_ready(started + self._start_timeout)
        except BaseException:
            self._terminate(timeout=5.0)
            raise
        self._progress(f"Kafka ready on {self.bootstrap} ({time.monotonic() - started:.1f} s)")

    def stop(self, timeout: float | None = None) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), SIGKILL after ``timeout``.

        The data directory is kept; :meth:`start` brings the same topics back.

        Parameters
        ----------
        timeout
            Seconds to wait after SIGTERM; the ``stop_timeout`` given to the constructor
            when ``None``.
        """
        if self._process is None:
            return
        clean = self._terminate(self._stop_timeout if timeout is None else timeout)
        if not clean:
            self._progress(f"Kafka on {self.bootstrap} did not stop in time and was killed")

    def restart(self) -> None:
        """Stop the broker and start it again on the same ports and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its data directory if this object created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    async def start_async(self) -> None:
        """:meth:`start` without blocking the running event loop."""
        await asyncio.to_thread(self.start)

    async def stop_async(self) -> None:
        """:meth:`stop` without blocking the running event loop."""
        await asyncio.to_thread(self.stop)

    async def restart_async(self) -> None:
        """:meth:`restart` without blocking the running event loop."""
        await asyncio.to_thread(self.restart)

    def __enter__(self) -> LocalKafka:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"{HOST}:{self._port}" if self._port is not None else "no port yet"
        return f"LocalKafka({where}, {state}, data_dir={str(self._data_dir)!r})"

    # -- internals -------------------------------------------------------------

    def _choose_ports(self) -> None:
        previous = self._previous_ports()
        if self._port is None and previous and port_is_free(previous[0]):
            self._port = previous[0]
        if self._controller_port is None and previous and port_is_free(previous[1]):
            self._controller_port = previous[1]
        if self._port is None:
            self._port = free_port()
        if self._controller_port is None or self._controller_port == self._port:
            self._controller_port = free_port()
        ports = [self._port, self._controller_port]
        if self._secure is not None:
            if self._secure_port is None and previous and previous[2] is not None \
                    and port_is_free(previous[2]):
                self._secure_port = previous[2]
            while self._secure_port is None or self._secure_port in ports:
                self._secure_port = free_port()
            ports.append(self._secure_port)
        for port in ports:
            if not port_is_free(port):
                message = f"port {port} on {HOST} is already in use; choose another one"
                raise BrokerStartError(message, self.log_tail())

    def _previous_ports(self) -> tuple[int, int, int | None] | None:
        """Client, controller and secure ports of an earlier run on this data directory."""
        if not self.properties_path.is_file():
            return None
        text = self.properties_path.read_text(encoding="utf-8")
        found = re.search(
            r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)"
            rf"(?:,{SECURE_LISTENER}://[^:]+:(\d+))?$",
            text,
            re.MULTILINE,
        )
        if not found:
            return None
        return int(found[1]), int(found[2]), int(found[3]) if found[3] else None

    def _properties(self) -> dict[str, str]:
        port, controller = self.port, self._controller_port
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": (
                self._quorum_voters or f"{self.node_id}@{HOST}:{controller}"),
            "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dir),
            # One node: every internal topic has a single replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions (default 50) make the first consumer
            # group join and the first transaction fast on a developer machine.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            # Consumers join at once instead of after the 3 s production delay.
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
        }
        if self._secure is not None:
            secure = f"{SECURE_LISTENER}://{HOST}:{self._secure_port}"
            properties["listeners"] += "," + secure
            properties["advertised.listeners"] += "," + secure
            properties["listener.security.protocol.map"] += f",{SECURE_LISTENER}:SASL_SSL"
            properties.update(self._secure.properties())
        properties.update(self._extra_properties)
        return properties

    def _write_properties(self) -> None:
        lines = ["# Written by streams/localkafka (LocalKafka); rewritten at every start."]
        for key, value in self._properties().items():
            lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
        self.properties_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _java_command(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self._heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={project_dir() / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.server_log_path.parent}",
            "-cp",
            f"{libs}/*",
        ]

    def _format_storage(self, java: str, libs: Path) -> None:
        command = [
            *self._java_command(java, libs),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self._cluster_id or new_cluster_id(),
            "--config",
            str(self.properties_path),
            *(self._secure.format_arguments() if self._secure is not None else ()),
        ]
        try:
            result = subprocess.run(
                command,
                cwd=self._data_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=max(self._start_timeout, 30.0),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            message = f"formatting the Kafka storage in {self.log_dir} timed out"
            raise BrokerStartError(message, self.log_tail()) from exc
        with self.output_path.open("ab") as output:
            output.write(b"--- kafka-storage format ---\n" + result.stdout)
        if result.returncode != 0:
            message = (
                f"formatting the Kafka storage in {self.log_dir} failed "
                f"(exit code {result.returncode}); config: {self.properties_path}"
            )
            raise BrokerStartError(message, self.log_tail())

    def _wait_until_ready(self, deadline: float) -> None:
        process = self._process
        assert process is not None  # set by start() just before
        while True:
            code = process.poll()
            if code is not None:
                message = f"the Kafka broker exited with code {code} during start-up"
                raise BrokerStartError(message, self.log_tail())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = (
                    f"the Kafka broker on {self.bootstrap} did not answer within "
                    f"{self._start_timeout:.0f} s"
                )
                raise BrokerStartError(message, self.log_tail())
            # A cheap TCP check first keeps the client from logging connection errors.
            if accepts_tcp(self.port):
                probe = functools.partial(broker_answers, self.bootstrap, min(remaining, 10.0),
                                          self.node_id)
                if run_coroutine_in_thread(probe):
                    return
            # Polling a child process and a socket: there is no event to wait on.
            time.sleep(0.1)

    def _terminate(self, timeout: float) -> bool:
        """SIGTERM, wait, SIGKILL; True when the JVM exited on SIGTERM."""
        process, self._process = self._process, None
        _running.discard(self)
        clean = True
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None
        return clean
