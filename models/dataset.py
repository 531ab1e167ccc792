"""Training data from a CSV: which columns are inputs, how text is encoded, rows and targets.

Inputs are every column but the asset, time, label and --exclude'd ones (or exactly
--features). A numeric column is an input as it is; a text column with a few distinct
values (a quality grade L/M/H) is a categorical input whose categories are recorded in
model.json, so the device encodes it the same way. A mostly numeric column with a few
cells of junk, or a text column with so many values that it must be an id, is refused
with the line or the column to fix: nothing is dropped without saying so. Constant
columns are dropped and listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.features import Layout
from models.progress import SILENT, Progress
from models.table import AssetRows, DataError, Table, by_asset, series

#: More distinct texts than this and a column is an id or a note, not a category.
MAX_CATEGORIES = 32
#: A text column whose cells are at least this share numbers is a numeric column with junk.
JUNK_SHARE = 0.9


@dataclass(frozen=True)
class Columns:
    """The CSV's roles: None for an asset or time column a snapshot table does not have."""

    asset: str | None
    time: str | None
    label: str | None
    exclude: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None


@dataclass
class Prepared:
    """Window rows of every asset: features, targets, and which asset each row is from."""

    x: np.ndarray
    failing: np.ndarray
    rul: np.ndarray | None
    group: np.ndarray
    assets: list[AssetRows]
    values: list[np.ndarray]


def select_inputs(table: Table, columns: Columns
                  ) -> tuple[list[str], dict[str, tuple[str, ...]], list[str]]:
    """(inputs, categorical inputs' categories, constant columns dropped)."""
    for column in columns.exclude:
        table.require(column, "--exclude")
    reserved = {c for c in (columns.asset, columns.time, columns.label, *columns.exclude) if c}
    if columns.features:
        candidates = list(dict.fromkeys(columns.features))
        for column in candidates:
            table.require(column, "--features")
            if column in reserved:
                raise DataError(f"--features: '{column}' is also the asset, time, label or an "
                                "excluded column; remove it from one of them")
    else:
        candidates = [c for c in table.columns if c not in reserved]
    categories: dict[str, tuple[str, ...]] = {}
    constant = []
    for column in candidates:
        values = table.numeric(column)
        if values is not None:
            if np.nanmax(values) == np.nanmin(values):
                constant.append(column)
            continue
        texts = _categories(table, column)
        if len(texts) < 2:
            constant.append(column)
        else:
            categories[column] = texts
    inputs = [c for c in candidates if c not in constant]
    if not inputs:
        raise DataError(f"{table.path}: no usable input columns (constant: "
                        f"{', '.join(constant) or 'none'}); check --features and --exclude")
    return inputs, categories, constant


def _categories(table: Table, column: str) -> tuple[str, ...]:
    """A text column's categories, or a DataError naming the junk cell or the id column."""
    distinct, not_numbers = table.text_values(column)
    filled = sum(1 for v in table.text[column] if v.strip()) or 1
    if not_numbers and 1 - len(not_numbers) / filled >= JUNK_SHARE:
        line, text = not_numbers[0]
        raise DataError(f"{table.path}: line {line}, column '{column}': '{text}' is not a "
                        f"number, and {len(not_numbers)} cell(s) like it are in an otherwise "
                        "numeric column; fix or empty them (empty cells are missing values), "
                        f"or leave the column out with --exclude {column}")
    if len(distinct) > MAX_CATEGORIES:
        raise DataError(f"{table.path}: column '{column}' is text with {len(distinct)} "
                        f"distinct values, too many for categories (at most {MAX_CATEGORIES}); "
                        f"if it is an id or a note, leave it out with --exclude {column}")
    for text in distinct:
        if "," in text:
            raise DataError(f"{table.path}: column '{column}' has the category '{text}' with "
                            "a comma, which a feature name cannot hold; rename the category "
                            f"or leave the column out with --exclude {column}")
    return tuple(distinct)


def labels_of(table: Table, label: str) -> np.ndarray:
    """The label column as 0/1 (NaN where empty), or a DataError saying what it must hold."""
    table.require(label, "--label-col")
    values = table.numeric(label)
    if values is None or not np.isin(values[~np.isnan(values)], (0, 1)).all():
        raise DataError(f"{table.path}: --label-col '{label}' must hold 0 or 1 "
                        "(1 = failed at that step)")
    return values


def prepare(table: Table, columns: Columns, layout: Layout, horizon: int,
            rul_cap: int, progress: Progress = SILENT) -> Prepared:
    """Feature rows and targets for every asset with at least one full window."""
    labels = labels_of(table, columns.label) if columns.label is not None else None
    xs: list[np.ndarray] = []
    failing: list[Any] = []
    ruls: list[Any] = []
    groups: list[Any] = []
    kept: list[AssetRows] = []
    values: list[np.ndarray] = []
    assets = by_asset(table, columns.asset, columns.time)
    if columns.asset is None and layout.window == 1:
        return _prepare_rows(table, layout, assets, labels, horizon, rul_cap)
    for asset in progress.over(assets, "windows", "asset"):
        data = series(table, list(layout.inputs), asset.rows, layout.codes)
        if len(data) < layout.window:
            continue
        x = layout.rolling(data)
        ends = np.arange(layout.window - 1, len(data))
        if labels is None:
            rul = (len(data) - 1 - ends).astype(np.float64)  # run to failure: last row failed
            soon = rul <= horizon
            ruls.append(np.minimum(rul, rul_cap))
        else:
            failed_at = np.flatnonzero(np.nan_to_num(labels[asset.rows]) == 1)
            # steps from each row to the next failure at or after it (inf when none follows)
            nxt = np.searchsorted(failed_at, ends)
            gap = np.full(len(ends), np.inf)
            if len(failed_at):  # an asset that never failed is healthy throughout
                gap = np.where(nxt < len(failed_at),
                               failed_at[np.minimum(nxt, len(failed_at) - 1)] - ends, np.inf)
            soon = gap <= horizon
        ok = ~np.isnan(x).any(axis=1)
        xs.append(x[ok])
        failing.append(soon[ok])
        if labels is None:
            ruls[-1] = ruls[-1][ok]
        groups.append(np.full(int(ok.sum()), len(kept)))
        kept.append(asset)
        values.append(data)
    if len(kept) < 2:
        raise DataError(f"{table.path}: {len(kept)} asset(s) with at least --window "
                        f"{layout.window} rows; training needs at least 2 (validation is "
                        "grouped by asset)")
    return Prepared(np.vstack(xs), np.concatenate(failing), np.concatenate(ruls) if ruls
                    else None, np.concatenate(groups), kept, values)


def _prepare_rows(table: Table, layout: Layout, assets: list[AssetRows],
                  labels: np.ndarray | None, horizon: int, rul_cap: int) -> Prepared:
    """`prepare` for a snapshot table (no asset column, window 1): every row is its own
    asset, so the features of all rows are built in one batched pass, not row by row.
    Same results as the per-asset loop: row i is asset i and its one window."""
    if len(assets) < 2:
        raise DataError(f"{table.path}: {len(assets)} asset(s) with at least --window "
                        f"{layout.window} rows; training needs at least 2 (validation is "
                        "grouped by asset)")
    rows = np.arange(table.rows)
    data = series(table, list(layout.inputs), rows, layout.codes)
    x = layout.rolling(data)
    rul = None
    if labels is None:  # run to failure: each one-row history fails at its only row
        soon = np.full(len(rows), 0 <= horizon)
        rul = np.zeros(len(rows))
    else:
        soon = np.nan_to_num(labels) == 1  # a failure at the row itself: 0 steps away
    ok = ~np.isnan(x).any(axis=1)
    return Prepared(x[ok], soon[ok], None if rul is None else np.minimum(rul, rul_cap)[ok],
                    rows[ok], assets, list(data[:, None, :]))


def split_assets(count: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over assets: True for validation. At least one asset on each side."""
    rng = np.random.default_rng(seed)
    n_val = min(count - 1, max(1, round(count * fraction)))
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[:n_val]] = True
    return mask
