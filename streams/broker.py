"""A real Apache Kafka broker that txwatch starts for itself.

No Docker: Maven resolves the Kafka jars once (``deploy/kafka/pom.xml``) into a
cache directory, and :class:`LocalKafka` runs one KRaft node, broker and
controller in the same JVM, on free ports of ``127.0.0.1``. The integration
tests, ``txwatch demo`` and ``txwatch broker`` all use it.

This module never imports ``faust``; its Kafka clients come from
:mod:`streams.clients`, which the worker uses to create its topics.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Final

from aiokafka.errors import KafkaError

from streams import clients
from streams.settings import Settings

#: Must match ``kafka.version`` in ``deploy/kafka/pom.xml``; names the jar cache.
KAFKA_VERSION: Final = "4.1.1"
#: ``pom.xml`` and ``log4j2.yaml`` of the local broker, in the source tree.
DEPLOY_DIR: Final = Path(__file__).resolve().parent.parent / "deploy" / "kafka"
HOST: Final = "127.0.0.1"
#: Node id of the single KRaft node (broker and controller at once).
NODE_ID: Final = 1

#: Written last into a complete jar directory: the pom digest, then one jar per line.
_COMPLETE_MARKER: Final = ".complete"
_LOG_TAIL_LINES: Final = 40
_DOWNLOADED_JAR = re.compile(r"Downloaded from \S+: (?P<url>\S+\.jar) \((?P<size>[^)]*)\)")

Progress = Callable[[str], None]


class BrokerError(RuntimeError):
    """The local Kafka broker cannot be prepared, started or stopped."""


class BrokerSetupError(BrokerError):
    """Java or Maven is missing, or the Kafka jars cannot be resolved."""


class BrokerStartError(BrokerError):
    """The broker process failed or did not answer in time.

    Parameters
    ----------
    message
        What went wrong; the tail of the broker's logs is appended to it.
    log_tail
        The last lines of the broker's output and ``server.log``.
    """

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- broker log tail ---\n{log_tail}")
        self.log_tail = log_tail


def _print_progress(line: str) -> None:
    print(f"txwatch broker: {line}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """Where the Kafka jars are kept: ``$XDG_CACHE_HOME/txwatch/kafka-<version>/libs``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "txwatch" / f"kafka-{KAFKA_VERSION}" / "libs"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _is_complete(libs: Path, digest: str) -> bool:
    marker = libs / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    recorded, *jars = marker.read_text(encoding="utf-8").split()
    return recorded == digest and bool(jars) and all((libs / jar).is_file() for jar in jars)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock, so concurrent first runs resolve only once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_kafka_jars(
    cache_dir: Path | None = None,
    *,
    pom: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Return a directory holding every jar the broker needs, resolving them once.

    A complete directory (one whose marker lists the jars and the digest of the
    pom that produced them) is reused as is. Otherwise Maven copies the runtime
    dependencies of ``deploy/kafka/pom.xml`` into a staging directory that is
    renamed into place only when complete, so an interrupted run leaves nothing
    half-made behind.

    Parameters
    ----------
    cache_dir
        The jar directory; :func:`default_cache_dir` when ``None``.
    pom
        The Maven project to resolve; ``deploy/kafka/pom.xml`` when ``None``.
    progress
        Receives one human-readable line per step; stderr when ``None``.

    Returns
    -------
    Path
        ``cache_dir``, holding the jars.

    Raises
    ------
    BrokerSetupError
        Maven is not installed, the pom is missing or Maven fails.
    """
    libs = (cache_dir or default_cache_dir()).expanduser().resolve()
    pom = pom or DEPLOY_DIR / "pom.xml"
    report = progress or _print_progress
    if not pom.is_file():
        message = (
            f"{pom} not found: the local Kafka broker needs the txwatch source tree "
            "(deploy/kafka/), e.g. an editable install of the repository"
        )
        raise BrokerSetupError(message)
    digest = _pom_digest(pom)
    if _is_complete(libs, digest):
        return libs
    with _exclusive(libs.parent / f".{libs.name}.lock"):
        if _is_complete(libs, digest):  # another process finished while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            message = (
                f"Maven (mvn) is not on PATH; it is needed once to download the Kafka "
                f"{KAFKA_VERSION} jars into {libs} (Debian: apt-get install maven)"
            )
            raise BrokerSetupError(message)
        report(f"resolving Kafka {KAFKA_VERSION} jars with Maven into {libs} (first run only)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=libs.parent) as work:
            # Maven runs on a copy so the source tree gets no target/ directory.
            project = Path(work) / "project"
            project.mkdir()
            shutil.copy2(pom, project / "pom.xml")
            staging = Path(work) / "libs"
            _run_maven(mvn, project, staging, report)
            jars = sorted(path.name for path in staging.glob("*.jar"))
            if not any(name.startswith("kafka_") for name in jars):
                message = f"Maven finished but {staging} holds no kafka_*.jar: {jars}"
                raise BrokerSetupError(message)
            (staging / _COMPLETE_MARKER).write_text(
                "\n".join([digest, *jars]) + "\n", encoding="utf-8"
            )
            if libs.exists():
                shutil.rmtree(libs)  # stale or incomplete: made by another pom or cut short
            staging.rename(libs)
        report(f"{len(jars)} jars ready in {libs} ({time.monotonic() - started:.1f} s)")
    return libs


def _run_maven(mvn: str, project: Path, output: Path, report: Progress) -> None:
    command = [
        mvn,
        "--batch-mode",
        "-Dstyle.color=never",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output}",
        "-DincludeScope=runtime",
    ]
    recent: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    with subprocess.Popen(
        command,
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None  # set by stdout=PIPE
        for raw in process.stdout:
            line = raw.rstrip()
            recent.append(line)
            downloaded = _DOWNLOADED_JAR.search(line)
            if downloaded:
                name = downloaded["url"].rsplit("/", 1)[-1]
                report(f"  downloaded {name} ({downloaded['size']})")
        code = process.wait()
    if code != 0:
        tail = "\n".join(recent)
        message = (
            f"Maven could not resolve the Kafka {KAFKA_VERSION} jars (exit code {code}); "
            f"command: {' '.join(command)}\n{tail}"
        )
        raise BrokerSetupError(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The same option the JVM sets, so our own connections in TIME_WAIT
        # from before a restart do not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _cluster_id() -> str:
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


def _run_coroutine_in_thread(factory: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    """Run a coroutine on a fresh event loop in a helper thread.

    :class:`LocalKafka` is synchronous but is also called from async tests,
    where ``asyncio.run`` is forbidden and the caller's loop must stay untouched.
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


async def _broker_answers(bootstrap: str, timeout: float, node_id: int = NODE_ID) -> bool:
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


#: SASL mechanisms a :class:`SecureListener` can offer.
SASL_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
#: Name of the TLS + SASL client listener in ``server.properties``.
SECURE_LISTENER: Final = "SASL_SSL"
#: Characters that would break the JAAS line or the ``--add-scram`` argument.
_UNSAFE_CREDENTIAL: Final = re.compile(r'[\s"\',=\[\]\\;]')


@dataclass(frozen=True)
class SecureListener:
    """A second client listener speaking SASL over TLS (``SASL_SSL``).

    The broker keeps its PLAINTEXT listener for itself (readiness probe,
    inter-broker traffic); clients under test connect to
    :attr:`LocalKafka.secure_bootstrap` with a user below.

    Parameters
    ----------
    keystore
        PKCS12 file with the broker's private key and certificate chain
        (``tests/support/tls.py`` makes one with ``keytool``).
    keystore_password
        Its password (also the key's).
    users
        User name to password. SCRAM users are written into the storage when
        it is formatted (``kafka-storage format --add-scram``), so they are
        fixed for the life of the data directory; PLAIN users are read from
        ``server.properties`` at every start.
    mechanism
        One of :data:`SASL_MECHANISMS`.
    port
        Port on 127.0.0.1; the previous run's or any free one when ``None``.
    """

    keystore: Path
    keystore_password: str
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-256"
    port: int | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in SASL_MECHANISMS:
            message = f"SASL mechanism {self.mechanism!r}: expected one of {SASL_MECHANISMS}"
            raise ValueError(message)
        for name, password in self.users.items():
            if not name or not password or _UNSAFE_CREDENTIAL.search(name + password):
                message = (f"user {name!r}: names and passwords must be non-empty, without "
                           "quotes, commas, equals signs, brackets, backslashes or spaces")
                raise ValueError(message)

    def __repr__(self) -> str:  # never print the passwords
        return (f"SecureListener({self.mechanism}, users={sorted(self.users)}, "
                f"keystore={str(self.keystore)!r})")

    def properties(self) -> dict[str, str]:
        """The listener's entries in ``server.properties`` (ports excluded)."""
        prefix = f"listener.name.{SECURE_LISTENER.lower()}."
        mechanism = self.mechanism.lower()
        if self.mechanism == "PLAIN":
            users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
            jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
        else:
            jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            f"{prefix}ssl.keystore.type": "PKCS12",
            f"{prefix}ssl.keystore.location": str(self.keystore),
            f"{prefix}ssl.keystore.password": self.keystore_password,
            f"{prefix}ssl.key.password": self.keystore_password,
            f"{prefix}sasl.enabled.mechanisms": self.mechanism,
            f"{prefix}{mechanism}.sasl.jaas.config": jaas,
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM users."""
        if self.mechanism == "PLAIN":
            return []
        return [argument for name, password in self.users.items()
                for argument in ("--add-scram",
                                 f"{self.mechanism}=[name={name},password={password}]")]


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
        self._progress = progress or _print_progress
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

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
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
        if self._port is None and previous and _port_is_free(previous[0]):
            self._port = previous[0]
        if self._controller_port is None and previous and _port_is_free(previous[1]):
            self._controller_port = previous[1]
        if self._port is None:
            self._port = _free_port()
        if self._controller_port is None or self._controller_port == self._port:
            self._controller_port = _free_port()
        ports = [self._port, self._controller_port]
        if self._secure is not None:
            if self._secure_port is None and previous and previous[2] is not None \
                    and _port_is_free(previous[2]):
                self._secure_port = previous[2]
            while self._secure_port is None or self._secure_port in ports:
                self._secure_port = _free_port()
            ports.append(self._secure_port)
        for port in ports:
            if not _port_is_free(port):
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
        lines = ["# Written by streams/broker.py (LocalKafka); rewritten at every start."]
        for key, value in self._properties().items():
            lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
        self.properties_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _java_command(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self._heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.yaml'}",
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
            self._cluster_id or _cluster_id(),
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
            if _accepts_tcp(self.port):
                probe = functools.partial(_broker_answers, self.bootstrap, min(remaining, 10.0),
                                          self.node_id)
                if _run_coroutine_in_thread(probe):
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


class LocalKafkaCluster:
    """Several :class:`LocalKafka` nodes, each a broker and a controller, in one KRaft cluster.

    For tests of replication and failover: every node listens on 127.0.0.1 on
    ports chosen up front, formats its storage with the same cluster id, and
    votes in one controller quorum; the internal topics (consumer offsets,
    transactions) get ``size`` replicas, at most 3, and need all but one in sync.

    Parameters
    ----------
    size
        Nodes (3 tolerate one stopped).
    data_dir
        Parent of the nodes' directories (``node-1`` ...); a temporary
        directory, removed by :meth:`close`, when ``None``.
    heap
        Maximum JVM heap of each node.
    progress
        Receives progress lines; stderr when ``None``.

    Examples
    --------
    >>> with LocalKafkaCluster(3) as cluster:  # doctest: +SKIP
    ...     cluster.stop_node(2)
    ...     cluster.start_node(2)
    """

    def __init__(self, size: int = 3, data_dir: Path | None = None, *, heap: str = "384m",
                 progress: Progress | None = None) -> None:
        if size < 1:
            message = f"a cluster needs at least one node, not {size}"
            raise ValueError(message)
        self._owns_data_dir = data_dir is None
        self.data_dir = (Path(tempfile.mkdtemp(prefix="txwatch-kafka-cluster-"))
                         if data_dir is None else data_dir).resolve()
        replicas = min(size, 3)
        insync = max(1, replicas - 1)
        ports: list[int] = []
        while len(ports) < 2 * size:
            port = _free_port()
            if port not in ports:
                ports.append(port)
        voters = ",".join(f"{node}@{HOST}:{ports[2 * (node - 1) + 1]}"
                          for node in range(1, size + 1))
        cluster_id = _cluster_id()
        internal = {
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(insync),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(insync),
        }
        self.nodes = [
            LocalKafka(self.data_dir / f"node-{node}", port=ports[2 * (node - 1)],
                       controller_port=ports[2 * (node - 1) + 1], heap=heap, node_id=node,
                       cluster_id=cluster_id, quorum_voters=voters, extra_properties=internal,
                       progress=progress)
            for node in range(1, size + 1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node with that ``node.id`` (1 to ``size``)."""
        return self.nodes[node_id - 1]

    def start(self) -> None:
        """Launch every node, then wait until each answers (a quorum forms only then)."""
        started = [(node, node.launch()) for node in self.nodes if not node.running]
        try:
            for node, at in started:
                node.wait_ready(at)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def stop_node(self, node_id: int) -> None:
        """Stop one node cleanly (its partitions' leadership moves to the others first)."""
        self.node(node_id).stop()

    def start_node(self, node_id: int) -> None:
        """Start a stopped node again on its ports and data."""
        self.node(node_id).start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (see :meth:`LocalKafka.stop`).

        The last nodes to go cannot shut down cleanly without a controller
        quorum: give a short ``timeout`` when their data does not matter.
        """
        for node in self.nodes:
            node.stop(timeout)

    def close(self) -> None:
        """Stop every node and remove the data if this object created the directory."""
        self.stop(timeout=5.0)
        for node in self.nodes:
            node.close()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafkaCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


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


#: The client port ``txwatch broker`` prefers: the one ``TXWATCH_BROKER`` defaults to.
DEFAULT_CLIENT_PORT: Final = 9092


def cli_client_port(data_dir: Path | None, port: int | None) -> tuple[int | None, str | None]:
    """The client port ``txwatch broker`` asks for, and a note when it cannot be 9092.

    An explicit ``port`` wins; then the previous run's port on ``data_dir``
    when it is free; then :data:`DEFAULT_CLIENT_PORT` when it is free; else
    ``None`` (any free port), with a note saying why.
    """
    if port is not None:
        return port, None
    previous = LocalKafka(data_dir)._previous_ports() if data_dir is not None else None
    if previous is not None and _port_is_free(previous[0]):
        return previous[0], None
    if _port_is_free(DEFAULT_CLIENT_PORT):
        return DEFAULT_CLIENT_PORT, None
    note = (f"port {DEFAULT_CLIENT_PORT} on {HOST} is in use (another broker?); "
            f"using a free port instead")
    return None, note


def broker_banner(bootstrap: str, data_dir: Path, kept: bool, log: Path) -> list[str]:
    """What ``txwatch broker`` prints once the broker answers."""
    where = ("kept: `txwatch broker --data-dir` on it again finds its topics" if kept else
             "deleted when the broker stops; --data-dir DIR keeps it")
    return [
        f"bootstrap: {bootstrap}",
        "other txwatch commands find this broker after (in their shell):",
        f"  export TXWATCH_BROKER={bootstrap}",
        f"data: {data_dir} ({where})",
        f"log: {log}",
        "Ctrl-C stops the broker.",
    ]


def run_broker_cli(data_dir: Path | None, port: int | None) -> int:
    """``txwatch broker``: run a broker in the foreground until Ctrl-C or SIGTERM.

    Parameters
    ----------
    data_dir
        Kept between runs (topics survive) when given; a temporary directory,
        removed on exit, when ``None``.
    port
        Client port; when ``None``, the previous run's port on ``data_dir``,
        else 9092 (``TXWATCH_BROKER``'s default), else any free one, as
        :func:`cli_client_port` chooses.

    Returns
    -------
    int
        0 after a clean stop, 1 when the broker cannot start or dies.
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    port, note = cli_client_port(data_dir, port)
    if note is not None:
        print(f"txwatch broker: {note}", flush=True)
    broker = LocalKafka(data_dir, port=port)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"txwatch broker: {exc}", file=sys.stderr)
            return 1
        for line in broker_banner(broker.bootstrap, broker.data_dir, data_dir is not None,
                                  broker.server_log_path):
            print(line, flush=True)
        while not stop_requested.wait(timeout=1.0):
            if not broker.running:
                print(
                    f"txwatch broker: the broker exited unexpectedly\n{broker.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        print("stopping the broker ...", flush=True)
        return 0
    finally:
        broker.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
