"""The live webcam stream: JPEG frames in over a WebSocket, per-face emotions back on the same socket."""

from __future__ import annotations

import json
import logging
import time
import uuid

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from redis.asyncio.client import PubSub

from gateway import metrics
from gateway.deps import LiveHubDep, SettingsDep
from gateway.live_hub import LiveFrameError, LiveHub
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

# 1013 "try again later": the page shows the reason and offers to reconnect.
CLOSE_TRY_AGAIN = 1013
JPEG_MAGIC = b"\xff\xd8"


def _error(code: str, message: str, **extra) -> str:
    return json.dumps({"error": {"code": code, "message": message}, **extra})


@router.websocket("/api/v1/live")
async def live(ws: WebSocket, hub: LiveHubDep, settings: SettingsDep) -> None:
    """Send JPEG frames as binary messages, one at a time; each gets one JSON answer before the next."""
    await ws.accept()
    if not hub.join():
        await ws.send_text(
            _error("too_many_viewers", f"all {hub.max_clients} live slots are in use; try again in a minute")
        )
        await ws.close(code=CLOSE_TRY_AGAIN, reason="too many viewers")
        return
    client_id = uuid.uuid4().hex
    logger.info("live viewer %s connected (%d now)", client_id, hub.clients)
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
        logger.info("live viewer %s left after %d frames", client_id, frames)


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
    if not frame.startswith(JPEG_MAGIC):
        return _error("not_a_jpeg", "frames must be JPEG images", seq=seq)
    try:
        answer = await hub.classify(pubsub, client_id, frame)
    except LiveFrameError as exc:
        return _error(exc.code, str(exc), seq=seq)
    answer["seq"] = seq
    answer["server_ms"] = round((time.perf_counter() - received) * 1000.0, 2)
    return json.dumps(answer)
