"""`millwright model train` on a terminal: a tqdm bar per long step, and nothing otherwise.

The long steps are building the windows (per asset), the grouped cross-validation of
`--tune` (per fold fit) and the boosting rounds of the final fits. Bars and the summary
lines between them go to stderr, and only when it is a terminal (or `--progress` asks):
output piped to a file or a log gets no extra lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    """Bars and lines when `enabled`; `write` replaces where the lines go (tests)."""

    def __init__(self, enabled: bool, write: Callable[[str], None] | None = None) -> None:
        self.enabled = enabled
        self._write = write

    def note(self, line: str) -> None:
        """One line between the bars (a step's summary)."""
        if not self.enabled:
            return
        if self._write is not None:
            self._write(line)
        else:
            tqdm.write(line, file=sys.stderr)

    def over(self, items: Iterable[T], what: str, unit: str) -> Iterator[T]:
        """`items`, with a bar of `what` advancing as each one is taken."""
        yield from tqdm(items, desc=what, unit=unit, **self._bar_options())

    def bar(self, what: str, total: int, unit: str) -> tqdm[Any]:
        """A bar of `total` steps, advanced by the caller (`update`); close it when done."""
        return tqdm(total=total, desc=what, unit=unit, **self._bar_options())

    def _bar_options(self) -> dict[str, Any]:
        # A bar is drawn on a terminal only: with `write` (tests) or no terminal it is off.
        drawn = self.enabled and self._write is None
        return {"disable": not drawn, "file": sys.stderr, "leave": False,
                "dynamic_ncols": True}


SILENT = Progress(False)


def on_terminal(asked: bool) -> Progress:
    """Progress for the CLI: on when stderr is a terminal, or when asked (`--progress`)."""
    return Progress(asked or sys.stderr.isatty())


def rounds_callback(bar: tqdm[Any]) -> Callable[[Any], None]:
    """A LightGBM callback that advances `bar` by one per boosting round."""
    def advance(_env: Any) -> None:
        bar.update(1)
    return advance
