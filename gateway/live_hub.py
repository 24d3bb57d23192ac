"""The live stream's plumbing: who is connected, sending each frame to a worker and waiting for its answer.

A frame goes out as the Celery task `worker.live_frame`; the worker's Celery stores the result in Redis and
publishes it on the result key's channel. The gateway subscribes to that channel (before sending, so the
answer cannot slip past) with its own asyncio Redis client and never uses Celery's result consumer: that
one blocks a thread per waiting frame, and during a Redis outage it retries for ~20 s, then raises "the
Celery application must be restarted". Here a Redis outage costs the frames sent during it, nothing more.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from celery import Celery, states
from kombu.exceptions import OperationalError

from common.queue import LIVE_QUEUE, TASK_LIVE_FRAME

logger = logging.getLogger(__name__)

NO_ANSWER = (
    "no worker answered within {:g} s; the service may be busy or no worker is listening on the live "
    "queue. Frames keep being sent; if this persists, ask the operator."
)
QUEUE_DOWN = "the queue (Redis) is not reachable; the page keeps trying, or ask the operator to start it"


class LiveFrameError(Exception):
    """One live frame got no usable answer; `code` and the message go back to the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LiveHub:
    """Counts viewers (at most `max_clients`) and runs each frame through the live queue."""

    def __init__(
        self,
        celery: Celery,
        results: aioredis.Redis,
        result_key: Callable[[str], bytes],
        decode_result: Callable[[bytes], dict],
        max_clients: int,
        timeout_s: float,
    ) -> None:
        self.celery = celery
        self.results = results
        self.result_key = result_key
        self.decode_result = decode_result
        self.max_clients = max_clients
        self.timeout_s = timeout_s
        # Publishing a task is blocking kombu code: a few threads, apart from the pools uploads use.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="live-send")
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

    @asynccontextmanager
    async def viewer(self) -> AsyncIterator[aioredis.client.PubSub]:
        """One viewer's subscription (one Redis connection while frames are in flight)."""
        pubsub = self.results.pubsub(ignore_subscribe_messages=True)
        try:
            yield pubsub
        finally:
            await pubsub.aclose()

    async def classify(self, pubsub: aioredis.client.PubSub, client_id: str, jpeg: bytes) -> dict:
        """One webcam frame through the live queue and a worker; the worker's answer as a dict."""
        task_id = uuid.uuid4().hex
        key = self.result_key(task_id)
        try:
            await pubsub.subscribe(key)
        except redis.RedisError as exc:
            logger.error("live frame for %s: cannot subscribe: %s", client_id, exc)
            raise LiveFrameError("queue_unavailable", QUEUE_DOWN) from exc
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._send, client_id, task_id, jpeg)
            try:
                payload = await asyncio.wait_for(self._result(pubsub), self.timeout_s)
            except TimeoutError as exc:
                raise LiveFrameError("live_timeout", NO_ANSWER.format(self.timeout_s)) from exc
        except redis.RedisError as exc:
            logger.error("live frame for %s: Redis failed while waiting: %s", client_id, exc)
            raise LiveFrameError("queue_unavailable", QUEUE_DOWN) from exc
        finally:
            await self._forget(pubsub, key)
        meta = self.decode_result(payload)
        if meta["status"] != states.SUCCESS:
            detail = meta.get("result") or {}
            reason = detail.get("exc_message") if isinstance(detail, dict) else detail
            if isinstance(reason, list | tuple):
                reason = " ".join(str(r) for r in reason)
            logger.warning("live frame for %s: %s %s", client_id, meta["status"], reason)
            raise LiveFrameError("live_frame_failed", f"the worker could not process the frame: {reason}")
        return meta["result"]

    def _send(self, client_id: str, task_id: str, jpeg: bytes) -> None:
        payload = base64.b64encode(jpeg).decode("ascii")
        try:
            # A frame nobody picked up in time is stale: workers drop it instead of working through a backlog.
            self.celery.send_task(
                TASK_LIVE_FRAME,
                args=[client_id, payload],
                queue=LIVE_QUEUE,
                task_id=task_id,
                expires=self.timeout_s,
            )
        except (OperationalError, redis.RedisError) as exc:
            logger.error("live frame for %s not queued: %s", client_id, exc)
            raise LiveFrameError("queue_unavailable", QUEUE_DOWN) from exc

    async def _result(self, pubsub: aioredis.client.PubSub) -> bytes:
        """The first final state published on the subscribed result channel."""
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            if self.decode_result(message["data"])["status"] in states.READY_STATES:
                return message["data"]

    async def _forget(self, pubsub: aioredis.client.PubSub, key: bytes) -> None:
        # Each result is read once; deleting it keeps Redis from holding one per frame for an hour.
        try:
            await pubsub.unsubscribe(key)
            await self.results.delete(key)
        except redis.RedisError as exc:
            logger.warning("could not drop live result %s: %s", key, exc)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.results.aclose()
