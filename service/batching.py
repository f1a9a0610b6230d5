"""The pose worker: one thread owns the model and runs the crops of many requests at once.

Requests put :class:`PoseJob` s (one per image) into a bounded queue. The worker waits for
the first job, then up to ``max_wait_s`` more for others until ``max_batch_size`` crops are
waiting, and runs them together. Every job's future ends one way or another: a result, a
:class:`DeadlineExceeded` when its deadline passed while queued, the error of its batch,
or :class:`Stopped` at shutdown. Nothing is dropped silently.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable

from service.metrics import ServiceMetrics
from service.pose_model import PoseJob, PoseResult

log = logging.getLogger("service.batching")


class QueueFull(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


class Stopped(Exception):
    pass


RunBatch = Callable[[list[PoseJob]], list[PoseResult]]


class MicroBatcher:
    def __init__(
        self, run_batch: RunBatch, max_batch_size: int, max_wait_s: float, queue_size: int, metrics: ServiceMetrics
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: collections.deque[PoseJob] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._seconds_per_image = max_wait_s  # moving average of batch time / images, updated by the worker
        self._thread = threading.Thread(target=self._loop, name="pose-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:  # whatever is left gets an answer too
            while self._queue:
                self._queue.popleft().future.set_exception(Stopped("the service is shutting down"))
            self.metrics.queue_depth.set(0)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, jobs: list[PoseJob]) -> None:
        """Queue all of ``jobs`` or none of them (raises :class:`QueueFull`)."""
        with self._cond:
            if self._stopping:
                raise Stopped("the service is shutting down")
            if len(self._queue) + len(jobs) > self.queue_size:
                raise QueueFull(f"{len(self._queue)} images waiting, room for {self.queue_size}")
            now = time.monotonic()
            for job in jobs:
                job.enqueued_at = now
                self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    def discard(self, jobs: list[PoseJob]) -> None:
        """Take jobs nobody waits for any more (their request timed out) out of the queue."""
        with self._cond:
            for job in jobs:
                try:
                    self._queue.remove(job)
                except ValueError:
                    continue  # already taken by the worker, which skips cancelled futures
                job.future.cancel()
            self.metrics.queue_depth.set(len(self._queue))

    def retry_after_s(self, pending: int | None = None) -> int:
        """Time for ``pending`` images (default: the queue) to clear at the recent pace, for the
        Retry-After header (1 to 60 s)."""
        pending = len(self._queue) if pending is None else pending
        return int(min(60, max(1, math.ceil(pending * self._seconds_per_image))))

    def _take_batch(self) -> list[PoseJob] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            # Wait for company until the batch is full or the oldest job has waited long enough.
            flush_at = self._queue[0].enqueued_at + self.max_wait_s
            while sum(j.num_crops for j in self._queue) < self.max_batch_size and not self._stopping:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, crops = [], 0
            while self._queue and (not batch or crops + self._queue[0].num_crops <= self.max_batch_size):
                job = self._queue.popleft()
                batch.append(job)
                crops += job.num_crops
            self.metrics.queue_depth.set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                if not job.future.set_running_or_notify_cancel():
                    continue  # the client stopped waiting (its deadline passed) and was answered 504
                if now > job.deadline:
                    job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                self.metrics.queue_wait.observe(now - job.enqueued_at)
                live.append(job)
            if not live:
                continue
            started = time.monotonic()
            try:
                results = self.run_batch(live)
                self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * (time.monotonic() - started) / len(live)
            except Exception as exc:  # the batch failed: every job in it hears about it
                log.exception("pose batch of %d images failed", len(live))
                for job in live:
                    job.future.set_exception(exc)
                continue
            for job, result in zip(live, results):
                result.queue_s = now - job.enqueued_at
                job.future.set_result(result)
