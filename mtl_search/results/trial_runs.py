"""A trial's MLflow run, written as the trial goes: started, placed, each epoch, finished, stopped or failed.

All logging happens on the driver (workers need no tracking access); the Tune callback
queues these writes on a :class:`BackgroundWriter` so Tune's loop never waits for MLflow.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Mapping

from ..record import (
    CHECKPOINT,
    ERROR,
    GAIN,
    NEGATIVE_TRANSFER,
    PLACEMENT_TAGS,
    STATUS,
    Spread,
    logged_epoch_metrics,
    logged_final_metrics,
    negative_transfer,
    negative_transfer_beyond_noise,
    noise_metrics,
    param_text,
    result_sharing_maps,
    result_tags,
    trial_run_tags,
)
from .store import now_ms


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """``metrics`` on run ``run_id`` at ``step``, in batches MLflow accepts."""
    from mlflow.entities import Metric

    now = now_ms()
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start:start + 500])


def log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """``params`` on run ``run_id`` (MLflow stores strings: ``record.param_text``)."""
    from mlflow.entities import Param

    items = [Param(k, param_text(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


class TrialRuns:
    """The trial-run half of the tracker (``search_run.Tracker``): ``client`` and ``experiment_id`` are the tracker's."""

    client: Any
    experiment_id: str

    def start_trial(self, parent_id: str, number: int, strategy: str, params: dict[str, Any], family: str = "",
                    reference_task: str | None = None, repeat_of: str | None = None, repeat: int = 0) -> str:
        """A trial's run under the search run.

        ``reference_task``: a single-task reference trial of that task (role ``reference``);
        ``repeat_of``: a repeat with seed index ``repeat`` of that run (role ``repeat``).
        """
        name, tags = trial_run_tags(parent_id, number, strategy, family, reference_task, repeat_of, repeat)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        log_params(self.client, run.info.run_id, params)
        return run.info.run_id

    def record_placement(self, run_id: str, result: dict[str, Any]) -> None:
        """Tag the trial with the device and Ray node it runs on."""
        for key, tag in PLACEMENT_TAGS.items():
            if key in result:
                self.client.set_tag(run_id, tag, str(result[key]))

    def log_epoch(self, run_id: str, result: dict[str, Any]) -> None:
        step, metrics = logged_epoch_metrics(result)
        if metrics:
            log_metrics(self.client, run_id, metrics, step)

    def finish_trial(self, run_id: str, result: dict[str, Any], checkpoint: str | None = None) -> None:
        """A trial's final metrics and sharing map; ``checkpoint``: the folder of its saved model (logged later if it is on the front)."""
        from ..nn.model import SharingMap  # torch: only where a trial ends, not in reading commands
        from .plots import sharing_map_figure

        step, metrics = logged_final_metrics(result)
        log_metrics(self.client, run_id, metrics, step)
        gains = {k: v for k, v in metrics.items() if k.startswith(GAIN)}
        if gains:
            self.client.set_tag(run_id, NEGATIVE_TRANSFER, "true" if negative_transfer(gains) else "false")
        for key, value in result_tags(result).items():
            self.client.set_tag(run_id, key, value[:5000])
        maps = result_sharing_maps(result)
        self.client.log_dict(run_id, maps, "sharing_map.json")
        if maps:
            import matplotlib.pyplot as plt

            figure = sharing_map_figure({k: SharingMap.from_dict(v) for k, v in maps.items()})
            self.client.log_figure(run_id, figure, "sharing_map.png")
            plt.close(figure)
        if checkpoint:
            self.client.set_tag(run_id, CHECKPOINT, checkpoint)
        self.client.set_terminated(run_id, "FINISHED")

    def log_noise(self, run_id: str, noise: dict[str, Spread]) -> None:
        """A repeated front trial's spreads over seeds (``noise/<figure>/mean`` ...) and its negative transfer beyond noise."""
        metrics = noise_metrics(noise)
        if metrics:
            log_metrics(self.client, run_id, metrics)
        self.client.set_tag(run_id, NEGATIVE_TRANSFER, "true" if negative_transfer_beyond_noise(noise) else "false")

    def stop_trial(self, run_id: str) -> None:
        """A trial ended early (scheduler or cancel): KILLED in MLflow, tagged ``stopped``, kept out of the front."""
        self.client.set_tag(run_id, STATUS, "stopped")
        self.client.set_terminated(run_id, "KILLED")

    def fail_trial(self, run_id: str, error: str) -> None:
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_tag(run_id, ERROR, error.strip().splitlines()[-1][:500] if error.strip() else "error")
        self.client.set_terminated(run_id, "FAILED")


class BackgroundWriter:
    """Runs tracking calls one at a time, in the order given, on a thread of its own.

    Tune's event loop calls the trial callbacks, and a trial that reports an epoch waits
    until that loop has handled it; an MLflow write there (a sharing-map figure takes a few
    hundred milliseconds) would stall every running trial. A call that raises is reported
    through ``warn`` and the writes after it go on.
    """

    def __init__(self, warn: Callable[[str], None]):
        self._warn = warn
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mtl-search-tracking", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``call(*args, **kwargs)``."""
        self._calls.put((call, args, kwargs))

    def close(self) -> None:
        """Wait until every queued call has run, then stop the thread."""
        self._calls.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            call, args, kwargs = item
            try:
                call(*args, **kwargs)
            except Exception as exc:  # a failed write must not lose the ones after it
                self._warn(f"warning: MLflow did not record {call.__name__}: {type(exc).__name__}: {exc}")
