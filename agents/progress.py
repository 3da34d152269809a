"""A progress bar that uses tqdm when it is installed and prints plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """``with Progress(total, desc) as bar: bar.update(n)``; silent when ``enabled`` is false."""

    def __init__(self, total: int | None, desc: str, unit: str = "step", enabled: bool = True) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self._bar: Any = None
        self._n = 0
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        except ImportError:
            self._bar = None

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self._n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last > 5.0 or (self.total and self._n >= self.total):
            self._last = now
            total = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self._n}{total} {self.unit}s", file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
