"""Every registered driver keeps the plugin convention: the registry is the only list of them.

For each protocol in drivers.REGISTRY: the driver imports by its registered path, is a
Driver with a config model built on DeviceConfig, lives in its own package with a
README.md and a sample.toml, and that sample validates as part of a gateway config and
builds its drivers without I/O (what `millwright check` does). A driver either pushes
(implements `read`) or is polled (sets `poll_interval_s`, implements `poll`).
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

import drivers
from gateway.config import validate
from gateway.config_base import DeviceConfig
from gateway.driver import Driver
from gateway.runtime import build_drivers

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted(drivers.REGISTRY)


def package_dir(protocol: str) -> Path:
    module_name = drivers.REGISTRY[protocol].partition(":")[0]
    return Path(importlib.import_module(module_name).__file__ or "").parent


def overrides(cls: type[Driver], method: str) -> bool:
    return getattr(cls, method) is not getattr(Driver, method)


def test_the_registry_names_every_driver_package() -> None:
    packages = {p.name for p in (ROOT / "drivers").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {package_dir(p).name for p in PROTOCOLS}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_driver_imports_by_its_registered_path(protocol: str) -> None:
    cls = drivers.driver_class(protocol)
    assert issubclass(cls, Driver)
    assert issubclass(cls.config_model, DeviceConfig)
    assert cls.config_model.model_fields["protocol"].annotation is not str, \
        "the config model pins its protocol name (a Literal), so the union can tell it apart"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_package_has_a_readme_and_a_sample(protocol: str) -> None:
    package = package_dir(protocol)
    assert package == ROOT / "drivers" / package.name
    readme = package / "README.md"
    assert readme.is_file() and readme.read_text().strip(), f"{readme} is missing or empty"
    assert (package / "sample.toml").is_file()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_sample_validates_and_builds_without_io(protocol: str) -> None:
    sample = package_dir(protocol) / "sample.toml"
    raw = tomllib.loads(sample.read_text())
    assert raw.get("devices") and all(d["protocol"] == protocol for d in raw["devices"])
    config = validate({"gateway": {"id": "conformance"}, **raw}, base_dir=sample.parent)
    built = build_drivers(config)
    assert [d.name for d in built] == [d["name"] for d in raw["devices"]]
    for driver in built:
        assert isinstance(driver, drivers.driver_class(protocol))
        method = "read" if driver.poll_interval_s is None else "poll"
        assert overrides(type(driver), method), \
            f"{type(driver).__name__} is {'pushed' if method == 'read' else 'polled'} " \
            f"but does not implement {method}()"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_drivers_never_import_each_other_and_the_core_imports_no_driver(protocol: str) -> None:
    own = package_dir(protocol).name
    others = {f"drivers.{package_dir(p).name}" for p in PROTOCOLS} - {f"drivers.{own}"}
    for source in package_dir(protocol).glob("*.py"):
        imported = _imports(source)
        assert not {m for m in imported for o in others if m == o or m.startswith(o + ".")}, \
            f"{source} imports another driver"
        assert "gateway.config" not in imported, \
            f"{source}: drivers build on gateway.config_base, the leaf, not the envelope"
    for source in (ROOT / "gateway").glob("*.py"):
        assert not any(m.startswith("drivers.") for m in _imports(source)), \
            f"{source} imports a concrete driver; ask the registry by name"


def _imports(source: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_types_drivers_build_on_are_a_leaf() -> None:
    project = ("gateway", "drivers", "models", "simulators")
    imported = _imports(ROOT / "gateway" / "config_base.py")
    assert not {m for m in imported if m.split(".")[0] in project}


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for folder in ("gateway", "drivers", "models", "simulators", "bench"):
        for source in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    offenders += [f"{source.relative_to(ROOT)}: {node.module}.{a.name}"
                                  for a in node.names if a.name.startswith("_")
                                  and not a.name.startswith("__")]
    assert offenders == []
