"""The live webcam stream: JPEG frames in over a WebSocket, per-face emotions back on the same socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

import redis
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from redis.asyncio.client import PubSub

from common.jpeg import FrameTooLarge, JpegHeaderError, check_frame_size
from gateway import metrics
from gateway.auth import resolve_owner
from gateway.deps import LiveHubDep, SettingsDep
from gateway.errors import QuotaExceeded, Unauthorized
from gateway.live_hub import QUEUE_DOWN, LiveFrameError, LiveHub
from gateway.quotas import LIVE_TTL_S
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

# 1013 "try again later": the page shows the reason and offers to reconnect.
CLOSE_TRY_AGAIN = 1013
# 1008 "policy violation": no valid key (or session) where one is needed.
CLOSE_POLICY = 1008


def _error(code: str, message: str, **extra) -> str:
    return json.dumps({"error": {"code": code, "message": message}, **extra})


@router.websocket("/api/v1/live")
async def live(ws: WebSocket, hub: LiveHubDep, settings: SettingsDep) -> None:
    """Send JPEG frames as binary messages, one at a time; each gets one JSON answer before the next.
    The caller is identified like any API call (key, the page's session cookie, or the local owner)."""
    await ws.accept()
    quotas = ws.app.state.quotas
    client_id = uuid.uuid4().hex
    try:
        owner = await asyncio.to_thread(resolve_owner, ws)
        await asyncio.to_thread(quotas.join_live, owner, client_id)
    except (Unauthorized, QuotaExceeded) as exc:
        extra = {"retry_after_s": exc.retry_after_s} if isinstance(exc, QuotaExceeded) else {}
        await ws.send_text(_error(exc.code, str(exc), **extra))
        code = CLOSE_TRY_AGAIN if isinstance(exc, QuotaExceeded) else CLOSE_POLICY
        await ws.close(code=code, reason=exc.code)
        return
    except redis.RedisError:
        logger.error("live viewer refused: Redis unreachable while checking the key or the live limit")
        await ws.send_text(_error("queue_unavailable", QUEUE_DOWN, retry_after_s=30))
        await ws.close(code=CLOSE_TRY_AGAIN, reason="queue unavailable")
        return
    heartbeat = asyncio.create_task(_keep_counted(quotas, owner, client_id))
    if not hub.join():
        heartbeat.cancel()
        await asyncio.to_thread(quotas.leave_live, owner, client_id)
        await ws.send_text(
            _error("too_many_viewers", f"all {hub.max_clients} live slots are in use; try again in a minute")
        )
        await ws.close(code=CLOSE_TRY_AGAIN, reason="too many viewers")
        return
    logger.info("live viewer %s of %s connected (%d here now)", client_id, owner.id, hub.clients)
    frames = 0
    metrics.LIVE_SESSIONS.inc()
    try:
        async with hub.viewer() as pubsub:
            await ws.send_text(
                json.dumps(
                    {"hello": {"client_id": client_id, "max_frame_bytes": settings.live_max_frame_bytes}}
                )
            )
            # The loop reads the next frame only after answering the last one: one frame in flight per
            # viewer, so a slow worker slows this viewer's frame rate instead of building a queue.
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                frames += 1
                metrics.LIVE_FRAMES.inc()
                await ws.send_text(
                    await _answer(message.get("bytes"), frames, hub, settings, pubsub, client_id)
                )
    except WebSocketDisconnect:
        pass
    finally:
        metrics.LIVE_SESSIONS.dec()
        hub.leave()
        heartbeat.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(quotas.leave_live, owner, client_id)
        logger.info("live viewer %s left after %d frames", client_id, frames)


async def _keep_counted(quotas, owner, client_id: str) -> None:
    """Refresh the viewer's entry in the owner's live count; a gateway that dies stops refreshing, and
    its viewers stop counting after LIVE_TTL_S."""
    while True:
        await asyncio.sleep(LIVE_TTL_S / 3)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(quotas.refresh_live, owner, client_id)


async def _answer(
    frame: bytes | None, seq: int, hub: LiveHub, settings: GatewaySettings, pubsub: PubSub, client_id: str
) -> str:
    """The JSON text answering one message: the worker's faces plus `seq` and `server_ms`, or an error."""
    received = time.perf_counter()
    if frame is None:
        return _error("not_a_frame", "send each frame as a binary JPEG message", seq=seq)
    if len(frame) > settings.live_max_frame_bytes:
        return _error(
            "frame_too_large",
            f"a frame may be at most {settings.live_max_frame_bytes} bytes; send JPEGs of about 640x480",
            seq=seq,
        )
    try:
        # The header's width and height, before any decoder allocates them: a small JPEG can declare a huge
        # image (a 2 MB frame of 16000x16000 would take 768 MB in the worker).
        check_frame_size(frame, settings.live_max_frame_pixels)
    except FrameTooLarge as exc:
        return _error("frame_too_large", str(exc), seq=seq)
    except JpegHeaderError as exc:
        return _error("not_a_jpeg", f"frames must be JPEG images: {exc}", seq=seq)
    try:
        answer = await hub.classify(pubsub, client_id, frame)
    except LiveFrameError as exc:
        return _error(exc.code, str(exc), seq=seq)
    except Exception:
        # One frame's surprise must not end the viewer's session: a dropped socket would free its place
        # in the owner's live count until the page reconnects, and lose the page's state.
        logger.exception("live frame %d of %s failed unexpectedly", seq, client_id)
        return _error(
            "live_frame_failed", "this frame could not be processed; the next one will be tried", seq=seq
        )
    answer["seq"] = seq
    answer["server_ms"] = round((time.perf_counter() - received) * 1000.0, 2)
    return json.dumps(answer)
