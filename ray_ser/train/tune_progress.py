"""A Tune search's trials as one console progress bar (:func:`ray_ser.console.progress`), in place of Tune's status
tables (``RunConfig(verbose=0)`` when not verbose)."""

from __future__ import annotations

from ray.tune import Callback

from ray_ser import console


class TrialProgress(Callback):
    """Trials finished (completed, stopped early or errored) of the search's samples, with the best score so far;
    Tune calls it in the driver. It is pickled with the run's config (for a resume) without its bar."""

    def __init__(self, metric: str, total: int):
        self.metric, self.total = metric, total
        self.best: float | None = None
        self.bar = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "bar": None}

    def _bar(self):
        if self.bar is None:
            self.bar = console.progress(self.total, "tune trials", "trial")
        return self.bar

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.total = total_num_samples or num_samples or self.total
        self._bar()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value and (self.best is None or value > self.best):
            self.best = float(value)
            self._bar().set_postfix_str(f"best {self.metric} {self.best:.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._bar().update(1)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._bar().update(1)

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
