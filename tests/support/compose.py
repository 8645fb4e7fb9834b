"""The Docker Compose v2 command line, built from its Go module, for checking docker-compose.yml.

``docker compose config`` needs no Docker engine: it reads the file, fills in
the environment and validates it against the Compose specification. These
machines have Go but no Docker, so the CLI is built once with ``go install``
into a cache folder (``TXWATCH_CACHE_DIR``, default ``~/.cache/txwatch``) and
reused; the first build downloads its modules and takes minutes, later runs
find the binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest

from tests.support.prom import in_ci

#: The Compose CLI's module and the version the project checks its file with.
COMPOSE_MODULE: Final = "github.com/docker/compose/v2/cmd"
COMPOSE_VERSION: Final = "v2.29.7"
#: Seconds allowed for a first build (module downloads included).
BUILD_TIMEOUT: Final = 1800


def cache_dir() -> Path:
    configured = os.environ.get("TXWATCH_CACHE_DIR", "").strip()
    return Path(configured) if configured else Path.home() / ".cache" / "txwatch"


def compose_cli() -> Path:
    """Path of the Compose CLI, built with ``go install`` on first use.

    Without Go the test is skipped on a developer machine and fails under CI.
    """
    target = cache_dir() / f"compose-{COMPOSE_VERSION}"
    binary = target / "docker-compose"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        message = (f"go not found: the Compose CLI ({COMPOSE_MODULE}@{COMPOSE_VERSION})"
                   " is built with it")
        if in_ci():
            pytest.fail(f"{message} (CI=true: the CI machine must have Go)", pytrace=False)
        pytest.skip(message)
    target.mkdir(parents=True, exist_ok=True)
    building = target / "bin"
    started = time.monotonic()
    print(f"building the Compose CLI {COMPOSE_VERSION} with go install into {target} "
          "(first use only; minutes)", flush=True)
    result = subprocess.run(
        [go, "install", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        env={**os.environ, "GOBIN": str(building), "GOFLAGS": "-mod=mod"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        check=False,
    )
    built = building / "cmd"
    if result.returncode != 0 or not built.is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        pytest.fail(f"go install {COMPOSE_MODULE}@{COMPOSE_VERSION} failed "
                    f"(exit {result.returncode}):\n{tail}", pytrace=False)
    built.replace(binary)  # atomic: a half-built binary is never found
    print(f"Compose CLI built in {time.monotonic() - started:.0f} s", flush=True)
    return binary


def compose_config(binary: Path, compose_file: Path, env: dict[str, str],
                   *args: str) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE config ARGS`` with exactly ``env`` (plus PATH and HOME).

    A ``.env`` file beside the compose file is ignored (``--env-file`` names an
    empty one), so a developer's own secrets do not change the outcome.
    """
    base = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    return subprocess.run(
        [str(binary), "--env-file", os.devnull, "-f", str(compose_file), "config", *args],
        env={**base, **env}, cwd=compose_file.parent, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )
