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


#: Warnings of the libraries underneath that say nothing a ulrec user can act on (they name the libraries' own
#: internals); hidden by :func:`quiet_third_party`.
KNOWN_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (UserWarning, r"To copy construct from a tensor, it is recommended"),
)


def quiet_third_party(progress: bool = True) -> None:
    """Filter :data:`KNOWN_WARNINGS`; with ``progress=False`` also turn off the progress bars of transformers
    (model loading), datasets (mapping) and huggingface_hub, so that ``--no-progress`` means no bars at all."""
    import warnings

    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if progress:
        return
    for module, fn in (("transformers.utils.logging", "disable_progress_bar"), ("datasets", "disable_progress_bars"),
                       ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            mod = __import__(module, fromlist=[fn])
        except ImportError:
            continue
        getattr(mod, fn, lambda: None)()
