"""Dynamic batching across concurrent requests, with the semantics of TF Serving's batch scheduler.

A batch closes when its queued rows reach the execution limit or when its oldest request has waited
`batch_timeout_micros`; a batch thread then concatenates the inputs, runs the model once and hands each
request its rows of the outputs. A request larger than `max_batch_size` is refused and a full queue answers
UNAVAILABLE, as in TF Serving. With `enable_large_batch_splitting`, a request may be cut into slices that fill
several batches of at most `max_execution_batch_size` rows (big batches are slower per face on CPU).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from model_server.config import BatchingOptions
from model_server.errors import invalid_argument, unavailable

log = logging.getLogger(__name__)

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class _Request:
    """One Predict call waiting for its rows; it may be served by several batches when split."""

    def __init__(self, inputs: dict[str, np.ndarray], size: int):
        self.inputs = inputs
        self.size = size
        # Only requests whose rows can be concatenated share a batch (TF Serving pads instead, if asked to).
        self.key = tuple((name, value.shape[1:], value.dtype.str) for name, value in sorted(inputs.items()))
        self.enqueued_at = time.monotonic()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.remaining = size
        self.pieces: dict[int, dict[str, np.ndarray]] = {}
        self.error: BaseException | None = None
        self.batch_tasks = 0
        self.batch_rows = 0

    def finish_slice(self, start: int, rows: int, outputs, error, batch_tasks: int, batch_rows: int) -> None:
        """Record one slice's outputs (or error); the last slice wakes the waiting request."""
        with self.lock:
            if error is not None:
                self.error = self.error or error
            else:
                self.pieces[start] = outputs
            self.batch_tasks = max(self.batch_tasks, batch_tasks)
            self.batch_rows = max(self.batch_rows, batch_rows)
            self.remaining -= rows
            last = self.remaining == 0
        if last:
            self.done.set()

    def outputs(self) -> dict[str, np.ndarray]:
        if len(self.pieces) == 1:
            return next(iter(self.pieces.values()))
        ordered = [self.pieces[start] for start in sorted(self.pieces)]
        return {key: np.concatenate([piece[key] for piece in ordered]) for key in ordered[0]}


class _Slice:
    """Rows [start, stop) of a request: the unit that goes into a batch."""

    __slots__ = ("request", "start", "stop")

    def __init__(self, request: _Request, start: int, stop: int):
        self.request, self.start, self.stop = request, start, stop

    @property
    def size(self) -> int:
        return self.stop - self.start


class BatchResult:
    """One request's outputs plus how it was batched (exposed to clients as trailing metadata)."""

    __slots__ = ("outputs", "batch_tasks", "batch_rows")

    def __init__(self, outputs: dict[str, np.ndarray], batch_tasks: int, batch_rows: int):
        self.outputs = outputs
        self.batch_tasks = batch_tasks
        self.batch_rows = batch_rows


class BatchStats:
    """Counters for monitoring and tests: how many request slices were merged into how many model runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.tasks = 0
        self.rows = 0
        self.max_tasks_in_batch = 0

    def record(self, tasks: int, rows: int) -> None:
        with self.lock:
            self.batches += 1
            self.tasks += tasks
            self.rows += rows
            self.max_tasks_in_batch = max(self.max_tasks_in_batch, tasks)


class Batcher:
    """Queues requests for one servable signature and runs them in merged batches on its own threads."""

    def __init__(self, run: RunFn, options: BatchingOptions, name: str, stats: BatchStats | None = None):
        self._run = run
        self._options = options
        self._name = name
        self._execution_rows = options.execution_batch_size
        self.stats = stats or BatchStats()
        self._queue: collections.deque[_Slice] = collections.deque()
        self._queued_rows = 0
        self._executing = 0  # batches running now, on batch threads or inline
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, inputs: dict[str, np.ndarray], size: int) -> BatchResult:
        """Run one request's inputs (batch dimension `size`) as part of merged batches; blocks until done."""
        if size > self._options.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self._options.max_batch_size}"
            )
        request = _Request(inputs, size)
        if size == 0:
            return BatchResult(self._run(inputs), 1, 0)
        step = self._execution_rows
        slices = [_Slice(request, start, min(start + step, size)) for start in range(0, size, step)]
        with self._cond:
            if self._stopped:
                raise unavailable(f"Servable {self._name} is unloading")
            # With no timeout, an idle batch thread would take this request alone at once: run it here
            # instead and save two thread hand-offs on the latency-critical path (one live frame).
            inline = (
                self._options.batch_timeout_micros == 0
                and not self._queue
                and len(slices) == 1
                and self._executing < self._options.num_batch_threads
            )
            if inline:
                self._executing += 1
        if inline:
            try:
                self._process(slices)
            finally:
                with self._cond:
                    self._executing -= 1
                    if self._queue:
                        self._cond.notify()
            if request.error is not None:
                raise request.error
            return BatchResult(request.outputs(), request.batch_tasks, request.batch_rows)
        with self._cond:
            if self._stopped:
                raise unavailable(f"Servable {self._name} is unloading")
            # TF Serving bounds the queue in batches: refuse once that many full batches are waiting.
            if self._queued_rows + size > self._options.max_enqueued_batches * step:
                raise unavailable("The batch scheduling queue to which this task was submitted is full")
            self._queue.extend(slices)
            self._queued_rows += size
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return BatchResult(request.outputs(), request.batch_tasks, request.batch_rows)

    def stop(self) -> None:
        """Finish what is queued, then end the batch threads."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _take_batch(self) -> list[_Slice] | None:
        timeout_s = self._options.batch_timeout_micros / 1e6
        max_rows = self._execution_rows
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopped:
                        return None
                    self._cond.wait()
                remaining = self._queue[0].request.enqueued_at + timeout_s - time.monotonic()
                if self._executing >= self._options.num_batch_threads and not self._stopped:
                    self._cond.wait()  # every execution slot is taken (inline runs count too)
                    continue
                if self._queued_rows >= max_rows or remaining <= 0 or self._stopped:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft()]
            rows = batch[0].size
            key = batch[0].request.key
            while self._queue and rows < max_rows and self._queue[0].request.key == key:
                head = self._queue[0]
                room = max_rows - rows
                if head.size <= room:
                    batch.append(self._queue.popleft())
                    rows += head.size
                elif self._options.enable_large_batch_splitting:
                    # Fill the batch with the head's first rows; the rest waits at the front for the next one.
                    batch.append(_Slice(head.request, head.start, head.start + room))
                    head.start += room
                    rows = max_rows
                else:
                    break
            self._queued_rows -= rows
            self._executing += 1
            if self._queue:
                self._cond.notify()  # what is left forms the next batch on another thread
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._process(batch)
            finally:
                with self._cond:
                    self._executing -= 1
                    self._cond.notify_all()

    def _process(self, batch: list[_Slice]) -> None:
        rows = sum(piece.size for piece in batch)
        outputs, error = None, None
        try:
            if len(batch) == 1 and batch[0].size == batch[0].request.size:
                outputs = self._run(batch[0].request.inputs)
            else:
                outputs = self._run(
                    {
                        key: np.concatenate([p.request.inputs[key][p.start : p.stop] for p in batch])
                        for key in batch[0].request.inputs
                    }
                )
            for key, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != rows:
                    raise invalid_argument(
                        f"Batched output tensor '{key}' has shape {list(value.shape)}; with batching every "
                        f"output needs the batch size {rows} as its first dimension"
                    )
        except BaseException as exc:  # every waiting request must wake up, whatever went wrong
            error = exc
        self.stats.record(len(batch), rows)
        log.debug("batch %s: %d request slices, %d rows", self._name, len(batch), rows)
        offset = 0
        for piece in batch:
            sliced = (
                None
                if error
                else {key: value[offset : offset + piece.size] for key, value in outputs.items()}
            )
            piece.request.finish_slice(piece.start, piece.size, sliced, error, len(batch), rows)
            offset += piece.size
