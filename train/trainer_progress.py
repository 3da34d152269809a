"""The progress of a tuning stage as :class:`agents.progress.Progress` shows every stage: a bar, then one final line.

transformers' own ``ProgressCallback`` draws its bar's final state again for each log that comes after the last step
and once more when it closes, so a log file holds the final bar three or four times; this callback replaces it.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from agents.progress import Progress

__all__ = ["StageProgress"]


class StageProgress(TrainerCallback):
    """A Trainer callback: one :class:`~agents.progress.Progress` over the stage's optimizer steps, the Trainer's
    log dicts printed as lines (to stdout, as transformers prints them), and the final line once at the end.

    Args:
        desc: What the stage is (``"tune sft"``); starts the bar and the final line.
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Progress | None = None
        self._step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = Progress(state.max_steps, self.desc, unit="step")
        self._step = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self._step)
        self._step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
        if self.bar is not None:
            self.bar.write(str(shown))
        else:
            print(shown, flush=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
