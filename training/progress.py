"""The training loop's periodic record, and the stop that every rank agrees on.

Steps are logged in windows: every ``run.log_interval`` steps, at the end of an epoch and
whenever the run may stop, the window's mean loss, learning rate and samples/s go to
``metrics.jsonl`` (TensorBoard) and to the progress bar. Closing a window is the loop's one
sync across ranks, and the stop requests (a signal, ``run.time_limit_s``) ride on it: every
rank reduces the same values, so all stop at the same step.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from training.config import RunConfig
from training.distributed import Dist
from training.logger import MetricsLogger


class StopSignal:
    """A kill (SIGTERM from a scheduler, torchrun or Ctrl-C) becomes ``requested``: the loop
    checkpoints after the current step and stops cleanly."""

    def __init__(self, say: Callable[..., None]):
        self.say = say
        self.requested = False
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def request_stop(signum, frame):
            self.say(f"signal {signal.Signals(signum).name}: saving a checkpoint after this step")
            self.requested = True

        self._previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class TrainProgress:
    """The window of steps since the last record, the per-epoch progress bar and the run's clock."""

    def __init__(
        self,
        run: RunConfig,
        dist: Dist,
        device: torch.device,
        stop: StopSignal,
        logger: MetricsLogger | None,
        total_steps: int,
        start_step: int,
    ):
        self.run, self.dist, self.device, self.stop, self.logger = run, dist, device, stop, logger
        self.total_steps, self.start_step = total_steps, start_step
        self.run_start = time.perf_counter()
        self.bar: Any = None
        self.loss_sum = torch.zeros((), device=device)
        self._new_window()

    def _new_window(self) -> None:
        self.loss_sum.zero_()
        self.steps, self.samples, self.start = 0, 0, time.perf_counter()

    def begin_epoch(self, desc: str, total: int, initial: int) -> None:
        """A fresh window (the time between epochs is validation, not training) and, on rank 0, a bar."""
        if self.dist.main and self.run.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
        self._new_window()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss_sum += loss.detach()
        self.steps += 1
        self.samples += samples

    def out_of_time(self) -> bool:
        limit = self.run.time_limit_s
        return bool(limit and time.perf_counter() - self.run_start >= limit)

    def due(self, must_close: bool, out_of_time: bool) -> bool:
        # A single process stops at the next step; ranks look at the signal flag and the clock only
        # at the shared windows, so that all stop together.
        local = (self.stop.requested or out_of_time) and not self.dist.enabled
        return self.steps >= self.run.log_interval or must_close or local

    def agree(self, out_of_time: bool) -> tuple[float, str | None]:
        """The window's mean loss over all ranks, and why to stop if any rank was asked to."""
        flag = torch.tensor(float(self.stop.requested), device=self.device)
        late = torch.tensor(float(out_of_time), device=self.device)
        reduced = self.dist.all_mean(torch.stack([self.loss_sum / self.steps, flag, late]))
        if float(reduced[1]) > 0:
            return float(reduced[0]), "a stop signal"
        if float(reduced[2]) > 0:
            return float(reduced[0]), "run.time_limit_s"
        return float(reduced[0]), None

    def record(self, step: int, epoch: int, loss: float, lr: float) -> None:
        """Write the window's record (``epoch`` 1-based) and start the next window."""
        elapsed = time.perf_counter() - self.start
        rate = self.samples / max(elapsed, 1e-9)
        run_elapsed = time.perf_counter() - self.run_start
        eta = run_elapsed / max(1, step - self.start_step) * max(0, self.total_steps - step)
        if self.logger:
            self.logger.log("train", step, epoch, {"loss": loss, "lr": lr, "samples_per_s": rate})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3e}", lr=f"{lr:.2e}", sps=f"{rate:.0f}", eta=format_seconds(eta))
        self._new_window()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
