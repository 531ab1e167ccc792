"""Gateway configs for tests: a dict in, a validated Config (or a TOML file) out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import config


def base(tmp_path: Path, cloud_url: str, devices: list[dict[str, Any]] | None = None,
         **sections: Any) -> dict[str, Any]:
    """A config dict: gateway in tmp_path, fast reconnects, health off unless asked."""
    raw: dict[str, Any] = {
        "gateway": {"id": "gw-test", "site": "lab", "data_dir": str(tmp_path / "data"),
                    "allow_root": True, "shutdown_timeout_s": 5.0},
        "cloud": {"url": cloud_url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "health": {"enabled": False},
        "devices": devices or [],
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return raw


def validate(raw: dict[str, Any], base_dir: Path = Path(".")) -> config.Config:
    return config.validate(raw, base_dir=base_dir)


def to_toml(raw: dict[str, Any]) -> str:
    """Enough TOML for test configs: tables, arrays of tables, scalars and lists."""
    lines: list[str] = []
    _emit(raw, [], lines)
    return "\n".join(lines) + "\n"


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(to_toml(raw))
    return path


def _emit(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    nested = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value, True))
        else:
            lines.append(f"{key} = {_scalar(value)}")
    for key, value, is_array in nested:
        name = ".".join([*prefix, key])
        for item in (value if is_array else [value]):
            lines.append(f"\n[[{name}]]" if is_array else f"\n[{name}]")
            _emit(item, [*prefix, key], lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
