"""Config text handling: the nesting check, file-path resolution, and pydantic errors as lines.

Kept apart from the models in gateway/config.py: this is about turning raw TOML into
what validation needs and turning what validation says into one inert line per problem.
Its one entry point is `Problems`.
"""

from __future__ import annotations

import os
from collections.abc import Container
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.config_base import mask_url_password
from gateway.errors import ConfigError
from gateway.logs import escape_controls

# Deeper than any real config (a few levels), shallower than Python's recursion limit.
MAX_NESTING = 500


_PATH_KEYS = {"ca_file", "cert_file", "key_file", "password_file", "data_dir",
              "certificate_file", "private_key_file", "server_certificate_file", "trust_dir",
              "private_key_password_file", "creds_file", "nkey_seed_file"}



class Problems:
    """Everything wrong with one raw config table, gathered as one inert line per problem.

    Built from the parsed TOML: the nesting is checked first (ConfigError at once when
    it is too deep to walk), then file paths are resolved relative to `base_dir`,
    giving `raw`, the table to validate. Unusable paths are problems already, and
    pydantic's own complaint about the same key is then left out.
    """

    def __init__(self, raw: dict[str, Any], base_dir: Path) -> None:
        too_deep = _too_deep(raw)
        if too_deep is not None:
            raise config_error([f"{too_deep}: nested too deeply (more than {MAX_NESTING} "
                                "levels of tables and arrays); a config needs only a few "
                                "levels"])
        self._paths: _PathProblems = {}
        self.raw: dict[str, Any] = _resolve_paths(raw, base_dir, self._paths)
        self.lines = [f"{where}{_device_suffix(loc, self.raw)}: {problem}"
                      for where, (loc, problem) in self._paths.items()]

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_invalid(self, exc: ValidationError, model: type[BaseModel], table: Any = None,
                    *, prefix: str = "", suffix: str = "") -> None:
        """One line per validation error of `table` (default: the whole config) by `model`."""
        self.lines.extend(_format(exc, model, self.raw if table is None else table,
                                  prefix=prefix, suffix=suffix, skip=self._paths))

    def error(self) -> ConfigError:
        return config_error(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise self.error()


def config_error(lines: list[str]) -> ConfigError:
    """The ConfigError for `lines`, each made one inert line (control characters escaped)."""
    return ConfigError([escape_controls(line) for line in lines])


def _too_deep(raw: Any) -> str | None:
    """The TOML path (its first levels) to where `raw` nests deeper than MAX_NESTING, or None.

    Iterative, so that the check itself cannot hit the recursion limit. A table or
    array reached again (only possible in a dict built in code) is walked again
    only if reached deeper than before, so shared and cyclic ones end too.
    """
    deepest: dict[int, int] = {}
    stack: list[tuple[Any, tuple[Any, ...]]] = [(raw, ())]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if len(where) > MAX_NESTING:
            return _toml_path(_leading(where))
        if deepest.get(id(node), -1) >= len(where):
            continue
        deepest[id(node)] = len(where)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((value, (*where, key)) for key, value in items)
    return None


def _leading(where: tuple[Any, ...]) -> tuple[Any, ...]:
    """The first levels of a long TOML path: up to its second key, at most four parts."""
    keys = 0
    for count, part in enumerate(where[:4], 1):
        keys += not isinstance(part, int)
        if keys == 2:
            return where[:count]
    return where[:4]


def _toml_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return path.lstrip(".") or "(top level)"


# TOML path -> (loc, what is wrong) for file paths that cannot be used.
_PathProblems = dict[str, tuple[tuple[Any, ...], str]]

# File paths are found at most this deep (devices[0].certificate_file is 3).
_PATH_DEPTH = 8


def _resolve_paths(node: Any, base_dir: Path, problems: _PathProblems,
                   where: tuple[Any, ...] = ()) -> Any:
    """Relative file paths in the config are relative to the config file, not the cwd.

    A path that cannot be one (a NUL byte, `~user` with no such user) is left as it
    is, and `problems` gets its TOML path, its place (a loc) and what is wrong.
    """
    if len(where) > _PATH_DEPTH:
        return node
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _PATH_KEYS and isinstance(value, str) and value:
                out[key] = _relative_to(value, base_dir, problems, (*where, key))
            elif key == "assets" and isinstance(value, list):
                out[key] = [_resolve_model(asset, base_dir, problems, (*where, key, index))
                            for index, asset in enumerate(value)]
            else:
                out[key] = _resolve_paths(value, base_dir, problems, (*where, key))
        return out
    if isinstance(node, list):
        return [_resolve_paths(item, base_dir, problems, (*where, index))
                for index, item in enumerate(node)]
    return node


def _resolve_model(asset: Any, base_dir: Path, problems: _PathProblems,
                   where: tuple[Any, ...]) -> Any:
    # `model = "bundled"` names the packaged model; anything else is a directory path.
    if isinstance(asset, dict) and isinstance(asset.get("model"), str) and \
            asset["model"] not in ("", "bundled"):
        return {**asset, "model": _relative_to(asset["model"], base_dir, problems,
                                               (*where, "model"))}
    return asset


def _relative_to(value: str, base_dir: Path, problems: _PathProblems,
                 where: tuple[Any, ...]) -> str:
    problem = _unusable_path(value)
    if problem is None:
        try:
            candidate = Path(value).expanduser()
        except RuntimeError:  # no such user, or no home directory for a bare '~'
            user = value[1:].partition("/")[0]
            problem = (f"cannot expand '~{user}': no such user" if user else
                       "cannot expand '~': no home directory") + "; write the full path"
        else:
            return os.path.normpath(candidate if candidate.is_absolute()
                                    else base_dir / candidate)
    problems[_toml_path(where)] = (where, f"{problem} (got {value!r})")
    return value


def _unusable_path(value: str) -> str | None:
    """Why `value` can never name a file (the OS would refuse it), or None."""
    if "\x00" in value:
        return "a path cannot contain a NUL character"
    try:
        os.fsencode(value)
    except UnicodeError:
        return "not a valid file name (it holds a lone surrogate, which cannot be encoded)"
    return None


def _format(exc: ValidationError, model: type[BaseModel], raw: Any,
            prefix: str = "", suffix: str = "", skip: Container[str] = ()) -> list[str]:
    """One line per error; none for a path in `skip` (already reported with its own line)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if _toml_path(loc, prefix) in skip:
            continue
        where = suffix or _device_suffix(loc, raw)
        lines.append(f"{_named_path(loc, raw, prefix)}{where}: {_message(error, model, loc)}")
    return lines


def _named_path(loc: tuple[Any, ...], raw: Any, prefix: str = "") -> str:
    """The TOML path of `loc` with each point it passes named, as a long point map needs:
    `devices[0].points[7] (point 'spindle_temp_c').type`."""
    path, node = prefix, raw
    for previous, part in zip((None, *loc), loc, strict=False):
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
        if previous == "points" and isinstance(node, dict) and isinstance(node.get("name"), str):
            path += f" (point '{node['name']}')"
    return path.lstrip(".") or "(top level)"


def _device_suffix(loc: tuple[Any, ...], raw: Any) -> str:
    if len(loc) >= 2 and loc[0] in ("devices", "assets") and isinstance(loc[1], int):
        try:
            name = raw[loc[0]][loc[1]].get("name")
        except (KeyError, IndexError, AttributeError, TypeError):
            return ""
        kind = "device" if loc[0] == "devices" else "asset"
        return f" ({kind} '{name}')" if isinstance(name, str) else ""
    return ""


def _message(error: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden" and loc[-1] == "password":
        return ("a password is never written in the config; put it alone in a file "
                "(chmod 600) and set password_file to its path")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    if "input" in error and kind not in ("model_type", "dict_type", "list_type"):
        got = error["input"]
        if isinstance(got, str):
            # A URL with a password in it: the message (if it quotes the value) and the
            # value shown both get it masked.
            shown = mask_url_password(got)
            if shown != got:
                msg = msg.replace(got, shown)
            return f"{msg} (got {shown!r})"
        if isinstance(got, int | float | bool):
            return f"{msg} (got {got!r})"
    return msg


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a table at `loc` may hold, found by walking the model along the path."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation
