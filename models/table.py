"""CSV histories (one row per asset per time step) or snapshot tables read into per-asset series.

Shared by training, batch prediction and evaluation; numpy only. Errors are
`DataError`s that name the file, the column and the fix. A snapshot table may have no
asset column (each row is then its own asset) and no time column (rows keep their order).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from models.features import UNKNOWN_CATEGORY, category_text

_MISSING = {"", "nan", "NaN", "NA", "N/A", "null", "None"}


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the column and the fix."""


@dataclass
class Table:
    """A CSV file held as text columns; numeric views are made on demand."""

    path: Path
    columns: list[str]
    text: dict[str, list[str]]
    sha256: str
    _numeric: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return len(self.text[self.columns[0]]) if self.columns else 0

    def require(self, column: str, option: str) -> None:
        if column not in self.text:
            raise DataError(f"{self.path}: no column '{column}' (from {option}); the columns "
                            f"are: {', '.join(self.columns)}")

    def numeric(self, column: str) -> np.ndarray | None:
        """The column as float64 (missing values as NaN), or None if it is not numeric."""
        if column not in self._numeric:
            self._numeric[column] = self._parse_numeric(self.text[column])
        return self._numeric[column]

    @staticmethod
    def _parse_numeric(values: list[str]) -> np.ndarray | None:
        try:
            parsed = np.array(values, dtype=np.float64)
        except ValueError:
            pass
        else:
            # An infinity is a broken reading, not a value: treat it as missing.
            parsed[~np.isfinite(parsed)] = np.nan
            return None if np.isnan(parsed).all() else parsed
        out = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            if value.strip() in _MISSING:
                out[i] = np.nan
                continue
            try:
                number = float(value)
            except ValueError:
                return None
            out[i] = number if np.isfinite(number) else np.nan
        return None if np.isnan(out).all() else out

    def text_values(self, column: str) -> tuple[list[str], list[tuple[int, str]]]:
        """A non-numeric column's distinct texts (sorted, missing cells left out) and the
        (CSV line, text) of its cells that are not numbers, for telling junk from categories."""
        distinct: set[str] = set()
        not_numbers: list[tuple[int, str]] = []
        for i, value in enumerate(self.text[column]):
            text = value.strip()
            if text in _MISSING:
                continue
            distinct.add(text)
            try:
                float(text)
            except ValueError:
                not_numbers.append((i + 2, text))
        return sorted(distinct), not_numbers

    def times(self, column: str) -> np.ndarray:
        """The time column as float seconds: numbers as they are, ISO 8601 as epoch seconds."""
        numbers = self.numeric(column)
        if numbers is not None and not np.isnan(numbers).any():
            return numbers
        out = np.empty(self.rows, dtype=np.float64)
        for i, value in enumerate(self.text[column]):
            try:
                out[i] = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise DataError(f"{self.path}: row {i + 2}, column '{column}': '{value}' is "
                                "neither a number nor an ISO 8601 time; pass the right "
                                "--time-col") from None
        return out


def read_table(path: Path) -> Table:
    """Read a CSV file with a header row; DataError for a missing, empty or ragged file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        reader = csv.reader(raw.decode("utf-8-sig").splitlines())
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file; expected a header row and one row per "
                            "asset per time step")
        columns = [name.strip() for name in header]
        if len(set(columns)) != len(columns):
            raise DataError(f"{path}: duplicate column names in the header; rename them")
        text: dict[str, list[str]] = {name: [] for name in columns}
        lists = [text[name] for name in columns]
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(columns):
                raise DataError(f"{path}: row {number} has {len(row)} fields, the header has "
                                f"{len(columns)}; fix the row")
            for target, value in zip(lists, row, strict=True):
                target.append(value)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file ({exc})") from None
    if not lists[0]:
        raise DataError(f"{path}: no data rows")
    return Table(path, columns, text, hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True, slots=True)
class AssetRows:
    """One asset's rows, ordered by time: indexes into the table and their times."""

    name: str
    rows: np.ndarray
    times: np.ndarray


def by_asset(table: Table, asset_col: str | None, time_col: str | None) -> list[AssetRows]:
    """Rows grouped by asset (in order of first appearance), each sorted by time.

    Without an asset column every row is its own asset, named after its CSV line; without
    a time column rows keep the file's order and their times are unknown (NaN).
    """
    if asset_col is not None:
        table.require(asset_col, "--asset-col")
    if time_col is not None:
        table.require(time_col, "--time-col")
    times = table.times(time_col) if time_col is not None else np.full(table.rows, np.nan)
    if asset_col is None:  # a snapshot table: row i is asset i, nothing to group or sort
        rows = np.arange(table.rows, dtype=np.int64)
        return [AssetRows(f"row-{i + 2}", rows[i:i + 1], times[i:i + 1])
                for i in range(table.rows)]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(table.text[asset_col]):
        groups.setdefault(name, []).append(i)
    out = []
    for name, indexes in groups.items():
        rows = np.asarray(indexes, dtype=np.int64)
        order = np.argsort(times[rows], kind="stable")
        out.append(AssetRows(name, rows[order], times[rows[order]]))
    return out


def series(table: Table, columns: list[str], rows: np.ndarray,
           codes: Mapping[str, Mapping[str, float]] | None = None) -> np.ndarray:
    """(len(rows), len(columns)) float64 values for the given rows: numbers as they are,
    categorical columns (those in `codes`, a `Layout.codes`) as their category's code,
    UNKNOWN_CATEGORY if the text is not one of them."""
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        if codes and column in codes:
            known = codes[column]
            cells = table.text[column]
            out[:, j] = [known.get(category_text(cells[i]), UNKNOWN_CATEGORY)
                         for i in rows.tolist()]
            continue
        values = table.numeric(column)
        if values is None:
            raise DataError(f"{table.path}: column '{column}' is not numeric; choose numeric "
                            "columns with --features or drop it with --exclude")
        out[:, j] = values[rows]
    return out


def median_step(assets: list[AssetRows]) -> float | None:
    """The typical time between consecutive rows of an asset, or None if it cannot be told."""
    diffs = [np.diff(a.times) for a in assets if len(a.times) > 1]
    joined = np.concatenate(diffs) if diffs else np.empty(0)
    joined = joined[joined > 0]
    return float(np.median(joined)) if joined.size else None
