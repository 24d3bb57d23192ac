"""The live stream's bookkeeping: who is connected, and the threads that wait on workers' answers."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from common.queue import LIVE_QUEUE, TASK_LIVE_FRAME

logger = logging.getLogger(__name__)


class LiveFrameError(Exception):
    """One live frame got no usable answer; `code` and the message go back to the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LiveHub:
    """Counts viewers and runs each frame's send-and-wait in its own pool, off the event loop.

    Waiting on a Celery result blocks a thread; a pool sized to the viewer limit means every viewer has one
    and uploads (which use the default pools) never queue behind the webcam stream.
    """

    def __init__(self, celery: Celery, max_clients: int, timeout_s: float) -> None:
        self.celery = celery
        self.max_clients = max_clients
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_clients, thread_name_prefix="live")
        self._lock = threading.Lock()
        self.clients = 0

    def join(self) -> bool:
        """Take a viewer slot; False when all are taken."""
        with self._lock:
            if self.clients >= self.max_clients:
                return False
            self.clients += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.clients = max(0, self.clients - 1)

    async def classify(self, client_id: str, jpeg: bytes) -> dict:
        """One webcam frame through the live queue and a worker; the worker's answer as a dict."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send_and_wait, client_id, jpeg)

    def _send_and_wait(self, client_id: str, jpeg: bytes) -> dict:
        payload = base64.b64encode(jpeg).decode("ascii")
        # A frame nobody picked up in time is stale: workers drop it instead of working through a backlog.
        result = self.celery.send_task(
            TASK_LIVE_FRAME, args=[client_id, payload], queue=LIVE_QUEUE, expires=self.timeout_s
        )
        started = time.perf_counter()
        try:
            answer = result.get(timeout=self.timeout_s, propagate=True)
        except CeleryTimeout as exc:
            result.forget()
            raise LiveFrameError(
                "live_timeout",
                f"no worker answered within {self.timeout_s:g} s; the service may be busy or no worker is "
                "listening on the live queue. Frames keep being sent; if this persists, ask the operator.",
            ) from exc
        except Exception as exc:  # the worker's own error, rebuilt by Celery; its text is what helps
            result.forget()
            logger.warning("live frame for %s failed: %s", client_id, exc)
            raise LiveFrameError(
                "live_frame_failed", f"the worker could not process the frame: {exc}"
            ) from exc
        # Results are read once; deleting them keeps Redis from collecting one per frame for an hour.
        result.forget()
        logger.debug(
            "live frame for %s answered in %.1f ms", client_id, (time.perf_counter() - started) * 1e3
        )
        return answer

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
