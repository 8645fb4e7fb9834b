"""The local Kafka launcher finds its Maven project, in a source tree and in an installed wheel."""

from __future__ import annotations

import ast
import fnmatch
import importlib.resources
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from streams.localkafka import KAFKA_VERSION, PROJECT_FILES, BrokerSetupError, jars, project_dir

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS: dict[str, Any] = tomllib.loads(
    (ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
POM = {"pom": "http://maven.apache.org/POM/4.0.0"}


def files_the_launcher_reads() -> set[str]:
    """Every ``project_dir() / "NAME"`` in the launcher's modules."""
    names: set[str] = set()
    for path in (ROOT / "streams" / "localkafka").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                    and isinstance(node.left, ast.Call)
                    and isinstance(node.left.func, ast.Name)
                    and node.left.func.id == "project_dir"
                    and isinstance(node.right, ast.Constant)):
                names.add(node.right.value)
    return names


def test_kafka_version_is_the_one_the_pom_resolves() -> None:
    # KAFKA_VERSION names the jar cache and the log lines; the pom decides what runs
    pom = ElementTree.parse(ROOT / "deploy" / "kafka" / "pom.xml").getroot()
    assert pom.findtext("pom:properties/pom:kafka.version", namespaces=POM) == KAFKA_VERSION
    kafka = [dependency.findtext("pom:version", namespaces=POM)
             for dependency in pom.iterfind("pom:dependencies/pom:dependency", POM)
             if dependency.findtext("pom:groupId", namespaces=POM) == "org.apache.kafka"]
    assert kafka == ["${kafka.version}"]


def test_the_launcher_reads_only_the_files_it_declares() -> None:
    assert files_the_launcher_reads() == set(PROJECT_FILES)


def test_the_wheel_ships_the_files_the_launcher_reads() -> None:
    package = jars.PROJECT_PACKAGE
    assert package in SETUPTOOLS["packages"]
    source = ROOT / SETUPTOOLS["package-dir"][package]
    assert source == project_dir()  # this source tree is not installed as a wheel
    patterns = SETUPTOOLS["package-data"][package]
    unshipped = [name for name in PROJECT_FILES
                 if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert not unshipped, f"{unshipped} are not package data of {package}: {patterns}"
    assert all((source / name).is_file() for name in PROJECT_FILES)


def test_every_folder_of_the_code_is_a_package_of_the_wheel() -> None:
    # pyproject lists the packages (the launcher's project is mapped from deploy/kafka):
    # a folder left out would be missing from the wheel, not from the source tree
    folders = {
        ".".join(path.relative_to(ROOT).parts)
        for top in ("streams", "detectors")
        for path in (ROOT / top, *(ROOT / top).rglob("*"))
        if path.is_dir() and not any(part == "__pycache__" for part in path.parts)
    }
    assert set(SETUPTOOLS["packages"]) == folders | set(SETUPTOOLS["package-dir"])


def project_files_in(folder: Path, names: tuple[str, ...] = PROJECT_FILES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(f"<!-- {name} -->\n", encoding="utf-8")
    return folder


def installed_at(monkeypatch: pytest.MonkeyPatch, site_packages: Path) -> None:
    """Make ``streams.localkafka``'s package data resolve under ``site_packages``."""
    def files(package: str) -> Path:
        assert package == "streams.localkafka"
        return site_packages / "streams" / "localkafka"

    monkeypatch.setattr(importlib.resources, "files", files)


def test_an_installed_wheel_s_files_come_first(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    installed = project_files_in(tmp_path / "streams" / "localkafka" / "project")
    installed_at(monkeypatch, tmp_path)
    assert project_dir() == installed


def test_an_incomplete_installed_folder_is_passed_over(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    project_files_in(tmp_path / "streams" / "localkafka" / "project", ("pom.xml",))
    installed_at(monkeypatch, tmp_path)
    assert project_dir() == ROOT / "deploy" / "kafka"


def test_no_project_anywhere_is_a_setup_error_naming_both_places(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    installed_at(monkeypatch, tmp_path / "site-packages")
    monkeypatch.setattr(jars, "__file__", str(tmp_path / "tree" / "streams" / "localkafka"
                                               / "jars.py"))
    with pytest.raises(BrokerSetupError) as raised:
        project_dir()
    message = str(raised.value)
    assert str(tmp_path / "site-packages" / "streams" / "localkafka" / "project") in message
    assert str(tmp_path / "tree" / "deploy" / "kafka") in message
