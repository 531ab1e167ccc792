"""A simulator in a child process (`python -m MODULE --serve N`), so it does not share our CPU.

The child prints one JSON line once it serves (its ports or endpoint) and serves until its
stdin closes; the context value is that line, decoded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


class ChildServer:
    def __init__(self, module: str, size: int, what: str) -> None:
        self.argv = [sys.executable, "-m", module, "--serve", str(size)]
        self.what = what
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> dict[str, Any]:
        self._process = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError(f"the {self.what} process exited before serving")
        return dict(json.loads(line))

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the child serves until its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
