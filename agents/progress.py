"""Progress of a stage: a live bar while it runs (tqdm, on a terminal), then one final line."""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """``with Progress(total, desc) as bar: bar.update(n)``; silent when ``enabled`` is false.

    While the stage runs, a terminal (or a notebook) shows tqdm's bar when tqdm is installed; any other stream (a
    log file, a pipe, CI) gets a plain ``desc: n units`` line at most every ``interval`` seconds instead of a bar
    redrawn with carriage returns (each with the count reached before the update that prints it, so that no plain line
    shows the final count). When the stage ends, the bar is cleared and one final line is printed, once:
    ``desc: n units in t s``. A stage that ends by an exception prints no final line (it did not finish).

    Args:
        total: Units the stage will take, when known (``None``: unknown, the bar counts up).
        desc: What the stage is (``"bench greedy"``); starts every line.
        unit: The unit counted, singular (``"user-step"``).
        enabled: ``False`` prints nothing.
        file: Where to write (default ``sys.stderr`` at construction).
        interval: Seconds between plain lines on a stream that is not a terminal.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", enabled: bool = True,
                 file: IO[str] | None = None, interval: float = 5.0) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.file = sys.stderr if file is None else file
        self.interval = interval
        self._bar: Any = None
        self._n = 0
        self._start = self._last = time.monotonic()
        self._closed = not enabled
        if enabled and _animates(self.file):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=self.file)

    @property
    def n(self) -> int:
        """Units counted so far."""
        return self._n

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units."""
        if self._closed:
            return
        if self._bar is not None:
            self._n += n
            self._bar.update(n)
            return
        now = time.monotonic()
        if self._n and now - self._last >= self.interval:
            # The count reached before this update: the count after the last update is the final line's alone.
            self._last = now
            total = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self._n}{total} {_plural(self.unit, self._n)}", file=self.file, flush=True)
        self._n += n

    def write(self, message: str, file: IO[str] | None = None) -> None:
        """Print one line (to ``file``, default ``sys.stdout``) without breaking the bar: it stays below the line."""
        out = sys.stdout if file is None else file
        if self._bar is not None:
            self._bar.write(message, file=out)
        else:
            print(message, file=out, flush=True)

    def set_description(self, desc: str) -> None:
        """Rename the stage (the bar and the final line)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description_str(desc)  # set_description would append a second ": "

    def close(self, finished: bool = True) -> None:
        """End the stage: clear the bar and, when ``finished``, print the final line. Later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()  # leave=False: tqdm clears its line instead of drawing the final state again
            self._bar = None
        if finished:
            seconds = time.monotonic() - self._start
            print(f"{self.desc}: {self._n:,} {_plural(self.unit, self._n)} in {seconds:.1f}s", file=self.file,
                  flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(finished=exc_type is None)


def _animates(stream: IO[str]) -> bool:
    """Whether a bar redrawn in place reads well on ``stream``: a terminal, or a notebook (tqdm's widget)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def _plural(unit: str, n: int) -> str:
    return unit if n == 1 else unit + "s"


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
