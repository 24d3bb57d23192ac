"""Render options through the real stack: style=cover hides the astronaut's face on every frame, labels=true
writes the emotion under it, and the timeline records both; an unknown style is refused with a 422."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import wait_for_job
from tests.test_e2e import displayed_size, ffprobe
from worker.overlay import EmojiOverlay, label_sprite, overlay_image, sprite

pytestmark = pytest.mark.e2e

# The astronaut's face in skimage's 512x512 photo (eyebrows to chin, cheek to cheek), drawn by hand.
FACE_IN_PHOTO = (180, 72, 268, 170)


def face_box(index: int, fps: int = 25) -> tuple[float, float, float, float]:
    """Where the face is on frame `index` of make_astronaut_video's clip: a 448 px crop drifting by
    24*sin(2*pi*t/3) px, scaled to 640 px."""
    offset_x = math.floor(32 + 24 * math.sin(2 * math.pi * (index / fps) / 3))
    scale = 640 / 448
    x1, y1, x2, y2 = FACE_IN_PHOTO
    return ((x1 - offset_x) * scale, (y1 - 32) * scale, (x2 - offset_x) * scale, (y2 - 32) * scale)


def ellipse_mask(shape, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def all_frames(path: Path) -> np.ndarray:
    """Every frame as BGR [N, H, W, 3], decoded by ffmpeg."""
    width, height = displayed_size(ffprobe(path))
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def upload(base_url: str, path: Path, data: dict) -> httpx.Response:
    with path.open("rb") as handle:
        files = {"file": (path.name, handle, "video/mp4")}
        return httpx.post(f"{base_url}/api/v1/jobs", files=files, data=data, timeout=120)


def results(base_url: str, job_id: str, tmp_path: Path) -> tuple[dict, np.ndarray, dict]:
    job = wait_for_job(base_url, job_id)
    assert job["status"] == "succeeded", job
    video = tmp_path / f"{job_id}.mp4"
    video.write_bytes(httpx.get(f"{base_url}/api/v1/jobs/{job_id}/video", timeout=60).content)
    timeline = httpx.get(f"{base_url}/api/v1/jobs/{job_id}/timeline", timeout=30).json()
    return job, all_frames(video), timeline


def cover_spots(frame: dict, frame_wh) -> list[tuple[tuple[int, int, int], str]]:
    boxes = [face["box_xyxy"] for face in frame["faces"]]
    spots = EmojiOverlay("cover").placements(boxes, frame_wh)
    return list(zip(spots, [face["shown_emotion"] for face in frame["faces"]], strict=True))


def assert_face_covered(index: int, source: np.ndarray, output: np.ndarray, frame: dict) -> None:
    """The face's pixels are the emoji's: under an opaque part of a cover drawn where the timeline says, and
    showing that emoji's colours (not the face's)."""
    height, width = source.shape[:2]
    face = ellipse_mask(source.shape, face_box(index))
    assert frame["faces"], f"frame {index}: no face tracked, so nothing covers it"
    alpha = np.zeros((height, width, 1), np.float32)
    expected = source.astype(np.float32).copy()
    for (x, y, size), emotion in cover_spots(frame, (width, height)):
        s = sprite(emotion, size, "bgr")
        overlay_image(expected, s.colour, s.alpha, x, y)
        overlay_image(alpha, np.ones_like(s.alpha), s.alpha, x, y)
    under = (alpha[:, :, 0] >= 0.5)[face].mean()
    assert under > 0.97, f"frame {index}: only {under:.0%} of the face is under the emoji"
    out = output.astype(np.float32)
    assert np.abs(out - source)[face].mean() > 30, f"frame {index}: the face still shows"
    assert np.abs(out - expected)[face].mean() < 20, f"frame {index}: what covers the face is not the emoji"


def label_rects(frame: dict, frame_wh) -> list[tuple[int, int, int, int]]:
    overlay = EmojiOverlay("cover", labels=True)
    rects = []
    for spot, emotion in cover_spots(frame, frame_wh):
        label = label_sprite(emotion, spot[2], "bt601")
        h, w = label.alpha.shape[:2]
        x, y = overlay.label_position(spot, (w, h), frame_wh)
        rects.append((x, y, x + w, y + h))
    return rects


def test_cover_hides_the_face_on_every_frame_and_labels_write_under_it(gateway, astronaut_video, tmp_path):
    with_labels = upload(gateway, astronaut_video, {"style": "cover", "labels": "true"})
    plain = upload(gateway, astronaut_video, {"style": "cover"})
    assert with_labels.status_code == 202, with_labels.text
    assert plain.status_code == 202, plain.text
    job, labelled, timeline = results(gateway, with_labels.json()["id"], tmp_path)
    _, unlabelled, plain_timeline = results(gateway, plain.json()["id"], tmp_path)
    source = all_frames(astronaut_video)

    assert job["options"] == {"style": "cover", "labels": True}
    assert timeline["options"] == {"style": "cover", "labels": True}
    assert plain_timeline["options"] == {"style": "cover", "labels": False}
    assert len(labelled) == len(source) == len(timeline["frames"])
    for index, frame in enumerate(plain_timeline["frames"]):
        assert_face_covered(index, source[index], unlabelled[index], frame)

    height, width = source.shape[1:3]
    for index in range(0, len(source), 10):
        rects = label_rects(timeline["frames"][index], (width, height))
        assert rects, f"frame {index}: no face, no label"
        for x1, y1, x2, y2 in rects:
            diff = np.abs(labelled[index, y1:y2, x1:x2].astype(int) - unlabelled[index, y1:y2, x1:x2]).mean()
            assert diff > 15, f"frame {index}: no label text under the emoji"
        # Far from the face nothing differs between the two (the label is the only change).
        corner = np.abs(labelled[index, :60, :60].astype(int) - unlabelled[index, :60, :60]).mean()
        assert corner < 3


@pytest.mark.parametrize(
    ("data", "word"), [({"style": "sparkles"}, "badge, cover"), ({"labels": "perhaps"}, "true or false")]
)
def test_unknown_option_values_are_refused_and_leave_nothing(
    gateway, storage_dir, astronaut_video, data, word
):
    before = set(storage_dir.iterdir())
    reply = upload(gateway, astronaut_video, data)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "invalid_option"
    assert word in reply.json()["error"]["message"]
    assert set(storage_dir.iterdir()) == before


def test_unknown_style_in_a_url_job_is_refused_before_fetching(gateway):
    body = {"url": "https://videos.example.com/a.mp4", "style": "blur"}
    reply = httpx.post(f"{gateway}/api/v1/jobs", json=body, timeout=30)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "invalid_option"
    assert "badge, cover" in reply.json()["error"]["message"]
