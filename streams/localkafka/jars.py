"""The Kafka jars: Maven resolves them once from the launcher's pom into a cache directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from streams.localkafka.base import LOG_TAIL_LINES, BrokerSetupError, Progress, print_progress

#: Must match ``kafka.version`` in ``deploy/kafka/pom.xml``; names the jar cache.
KAFKA_VERSION: Final = "4.1.1"
#: The files of ``deploy/kafka`` the launcher reads: Maven's project and the broker's logging.
PROJECT_FILES: Final = ("pom.xml", "log4j2.yaml")
#: The subpackage a wheel ships ``deploy/kafka`` as (``[tool.setuptools.package-dir]``).
PROJECT_PACKAGE: Final = "streams.localkafka.project"

#: Written last into a complete jar directory: the pom digest, then one jar per line.
_COMPLETE_MARKER: Final = ".complete"
_DOWNLOADED_JAR = re.compile(r"Downloaded from \S+: (?P<url>\S+\.jar) \((?P<size>[^)]*)\)")


def project_dir() -> Path:
    """The directory holding :data:`PROJECT_FILES`.

    From an installed wheel, the package data beside this module
    (:data:`PROJECT_PACKAGE`, which ``pyproject.toml`` maps onto
    ``deploy/kafka``); from a source tree that is not installed as a wheel
    (an editable install, a copy of the tree), ``deploy/kafka`` itself.

    Raises
    ------
    BrokerSetupError
        Neither place holds every file.
    """
    package, _, folder = PROJECT_PACKAGE.rpartition(".")
    installed = importlib.resources.files(package) / folder
    source_tree = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
    for candidate in (installed, source_tree):
        # the JVM and Maven take file names: a zipped install would need extracting first
        if isinstance(candidate, Path) and all((candidate / name).is_file()
                                               for name in PROJECT_FILES):
            return candidate
    message = (f"the local Kafka broker's {' and '.join(PROJECT_FILES)} are neither in "
               f"{installed} (an installed txwatch) nor in {source_tree} (a source tree); "
               "reinstall txwatch")
    raise BrokerSetupError(message)


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
    dependencies of the pom into a staging directory that is renamed into place
    only when complete, so an interrupted run leaves nothing half-made behind.

    Parameters
    ----------
    cache_dir
        The jar directory; :func:`default_cache_dir` when ``None``.
    pom
        The Maven project to resolve; ``pom.xml`` in :func:`project_dir` when ``None``.
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
    pom = pom or project_dir() / "pom.xml"
    report = progress or print_progress
    if not pom.is_file():
        message = f"{pom} not found: it is the Maven project of the local Kafka broker"
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
            # Maven runs on a copy so neither the source tree nor site-packages gets a
            # target/ directory.
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
    recent: deque[str] = deque(maxlen=LOG_TAIL_LINES)
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
