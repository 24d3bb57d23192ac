"""Photos end to end through the real stack: upload over HTTP, the real Celery worker, the real model server.

Each result is checked as a user would: the photo comes back in its own format and size, upright, with
pixels changed where the faces are (an emoji drawn) and not elsewhere, and a timeline of one frame whose
boxes are on the faces. Hostile photos are refused with a 4xx before any worker sees them, leaving nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from common.classes import EMOTIONS
from common.images import heif_supported
from tests import photo_files, test_s3_system
from tests.conftest import wait_for_job

pytestmark = pytest.mark.e2e

API = "/api/v1/jobs"
# Face centres in ../shared/data/media/pyfeat_multi_face.jpg (1000x667), labelled by eye: five people.
MULTI_FACE_CENTRES = [(262, 118), (366, 296), (475, 262), (578, 372), (735, 360)]


def submit(base_url: str, path: Path, name: str | None = None) -> httpx.Response:
    with path.open("rb") as handle:
        files = {"file": (name or path.name, handle, "application/octet-stream")}
        return httpx.post(f"{base_url}{API}", files=files, timeout=120)


def run_photo(base_url: str, path: Path) -> tuple[dict, Image.Image, bytes, dict]:
    """Upload, wait, download: (job, the drawn photo, its bytes, timeline)."""
    reply = submit(base_url, path)
    assert reply.status_code == 202, reply.text
    assert reply.json()["links"]["image"] == f"{API}/{reply.json()['id']}/image"
    job = wait_for_job(base_url, reply.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["video"]["kind"] == "image" and job["frames_total"] == 1
    result = httpx.get(f"{base_url}{API}/{job['id']}/image", timeout=60)
    assert result.status_code == 200, result.text
    timeline = httpx.get(f"{base_url}{API}/{job['id']}/timeline", timeout=30).json()
    image = Image.open(io.BytesIO(result.content))
    return job, image, result.content, timeline


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float32)


def assert_drawn_on_faces(before: np.ndarray, after: np.ndarray, boxes: list) -> None:
    """An emoji on every face (pixels changed in and around its box) and nowhere else (only re-encoding
    noise far from the faces)."""
    diff = np.abs(after - before).mean(axis=2)
    near = np.zeros(diff.shape, bool)
    height, width = diff.shape
    for x1, y1, x2, y2 in boxes:
        grow = 0.6 * max(x2 - x1, y2 - y1)
        ys, xs = slice(max(int(y1 - grow), 0), int(y2 + grow)), slice(max(int(x1 - grow), 0), int(x2 + grow))
        region = diff[ys, xs]
        assert (region > 40).mean() > 0.03, f"no emoji drawn near the face {x1, y1, x2, y2}"
        near[ys, xs] = True
    assert diff[~near].mean() < 4, "the photo changed away from the faces"


def assert_one_frame_timeline(timeline: dict, width: int, height: int) -> list[dict]:
    assert timeline["video"]["width"] == width and timeline["video"]["height"] == height
    assert len(timeline["frames"]) == 1 and timeline["frames"][0]["index"] == 0
    faces = timeline["frames"][0]["faces"]
    for face in faces:
        assert face["shown_emotion"] in EMOTIONS and face["detected"] is True
    assert len(timeline["people"]) == len(faces)
    return faces


def test_shared_group_jpeg_comes_back_as_jpeg_with_an_emoji_on_every_face(gateway, shared_media):
    """No tracker confirmation in a photo: all five faces get their emoji (a video hides one-frame tracks)."""
    source = shared_media / "pyfeat_multi_face.jpg"
    job, image, raw, timeline = run_photo(gateway, source)
    assert image.format == "JPEG" and image.size == (1000, 667)
    assert b"Exif" not in raw[:4096], "the camera's EXIF went out with the result"
    faces = assert_one_frame_timeline(timeline, 1000, 667)
    boxes = [f["box_xyxy"] for f in faces]
    for cx, cy in MULTI_FACE_CENTRES:
        inside = [b for b in boxes if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
        assert len(inside) == 1, f"the face at {cx, cy} has {len(inside)} boxes: {boxes}"
    assert len(boxes) == len(MULTI_FACE_CENTRES)
    assert_drawn_on_faces(pixels(Image.open(source)), pixels(image), boxes)
    # The CSV has one row per face of the one frame.
    csv = httpx.get(f"{gateway}{API}/{job['id']}/timeline.csv", timeout=30).text.strip().splitlines()
    assert len(csv) == 1 + len(faces) and all(row.startswith("0,0.0,") for row in csv[1:])


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"] + (["HEIF"] if heif_supported() else []))
def test_astronaut_photo_comes_back_in_its_format_with_the_emoji_on_the_face(gateway, tmp_path, image_format):
    source = photo_files.save(
        photo_files.astronaut(), tmp_path / f"astronaut.{image_format.lower()}", format=image_format
    )
    _, image, _, timeline = run_photo(gateway, source)
    assert image.format == image_format and image.size == (512, 512)
    faces = assert_one_frame_timeline(timeline, 512, 512)
    assert len(faces) == 1, faces
    x1, y1, x2, y2 = faces[0]["box_xyxy"]
    fx1, fy1, fx2, fy2 = photo_files.ASTRONAUT_FACE_XYXY
    assert fx1 <= (x1 + x2) / 2 <= fx2 and fy1 <= (y1 + y2) / 2 <= fy2, faces[0]["box_xyxy"]
    assert_drawn_on_faces(pixels(photo_files.astronaut()), pixels(image), [faces[0]["box_xyxy"]])


def test_an_exif_rotated_jpeg_comes_back_upright(gateway, tmp_path):
    source = photo_files.rotated_jpeg(tmp_path / "rotated.jpg")
    job, image, _, timeline = run_photo(gateway, source)
    assert job["video"]["orientation"] == 6
    assert image.format == "JPEG" and not image.getexif().get(photo_files.ORIENTATION)
    faces = assert_one_frame_timeline(timeline, 512, 512)
    assert len(faces) == 1
    upright, lying = (
        pixels(photo_files.astronaut()),
        pixels(photo_files.astronaut().transpose(Image.Transpose.ROTATE_90)),
    )
    result = pixels(image)
    assert np.abs(result - upright).mean() < 12 < np.abs(result - lying).mean()
    x1, y1, x2, y2 = faces[0]["box_xyxy"]
    fx1, fy1, fx2, fy2 = photo_files.ASTRONAUT_FACE_XYXY
    assert fx1 <= (x1 + x2) / 2 <= fx2 and fy1 <= (y1 + y2) / 2 <= fy2, "the box is not on the upright face"


def test_a_transparent_png_keeps_its_transparency(gateway, tmp_path):
    _, image, _, timeline = run_photo(gateway, photo_files.transparent_png(tmp_path / "cutout.png"))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (640, 640)
    alpha = np.asarray(image)[:, :, 3]
    assert alpha[600:, :40].max() == 0, "the transparent border became opaque"
    assert len(assert_one_frame_timeline(timeline, 640, 640)) == 1


def test_a_photo_without_faces_succeeds_unchanged_with_an_empty_frame(gateway, tmp_path):
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    source = photo_files.save(Image.fromarray(gradient).convert("RGB"), tmp_path / "sky.png", format="PNG")
    _, image, _, timeline = run_photo(gateway, source)
    assert assert_one_frame_timeline(timeline, 320, 240) == []
    assert timeline["summary"]["dominant_emotion"] is None
    assert np.array_equal(pixels(image), pixels(Image.open(source)))


def test_results_of_the_other_kind_say_where_to_look(gateway, tmp_path, astronaut_video):
    photo = photo_files.save(photo_files.astronaut(128), tmp_path / "small.png", format="PNG")
    job, *_ = run_photo(gateway, photo)
    reply = httpx.get(f"{gateway}{API}/{job['id']}/video", timeout=30)
    assert reply.status_code == 404 and f"{API}/{job['id']}/image" in reply.json()["error"]["message"]
    video = submit(gateway, astronaut_video).json()
    assert video["links"]["image"] is None
    reply = httpx.get(f"{gateway}{API}/{video['id']}/image", timeout=30)
    assert reply.status_code == 404 and "/video" in reply.json()["error"]["message"]


def job_dirs(storage_dir: Path) -> set[str]:
    return {p.name for p in storage_dir.iterdir()} if storage_dir.exists() else set()


@pytest.mark.parametrize("name", list(photo_files.HOSTILE))
def test_hostile_photos_are_refused_before_decoding_and_leave_nothing(gateway, storage_dir, tmp_path, name):
    make, status, codes = photo_files.HOSTILE[name]
    path = make(tmp_path / name)
    before = job_dirs(storage_dir)
    reply = submit(gateway, path)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] in codes and len(error["message"]) > 30
    assert str(storage_dir) not in error["message"]
    assert job_dirs(storage_dir) == before, "a refused photo left files behind"


def test_a_photo_made_into_a_video_gets_the_same_emoji_on_every_face(gateway, shared_media, tmp_path):
    """One code path: the faces the video finds in the same picture carry the same emoji in the photo job."""
    source = shared_media / "pyfeat_multi_face.jpg"
    clip = photo_files.still_clip(source, tmp_path / "still.mp4")
    _, _, _, photo = run_photo(gateway, source)
    reply = submit(gateway, clip)
    assert reply.status_code == 202, reply.text
    assert wait_for_job(gateway, reply.json()["id"])["status"] == "succeeded"
    video = httpx.get(f"{gateway}{API}/{reply.json()['id']}/timeline", timeout=30).json()
    last = video["frames"][-1]["faces"]
    assert last, "the video found no face"
    for face, match, verdict in photo_files.same_emoji(photo["frames"][0]["faces"], last):
        assert match is not None, f"the photo job has no face where the video has {face['box_xyxy']}"
        assert verdict in ("same", "near tie"), (match, face)


# The object-store stack of test_s3_system.py (two workers, no shared disk), shared rather than copied.
s3_stack = test_s3_system.s3_stack


def test_a_photo_job_runs_through_an_object_store(s3_stack, seaweedfs, tmp_path):
    """The gateway never has the upload on disk: it knows a photo by its first bytes, the worker checks the
    header, and the drawn photo and the timeline go to the bucket."""
    source = photo_files.save(photo_files.astronaut(), tmp_path / "astronaut.webp", format="WEBP")
    reply = submit(s3_stack.gateway, source)
    assert reply.status_code == 202, reply.text
    job = wait_for_job(s3_stack.gateway, reply.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["video"]["format"] == "webp" and job["links"]["image"]
    image = httpx.get(f"{s3_stack.gateway}{job['links']['image']}", timeout=60)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)
    stored = test_s3_system.keys(seaweedfs, s3_stack.bucket, job["id"])
    assert {"input", "result.webp", "timeline.json", "timeline.csv"} <= stored


def test_a_hostile_photo_through_an_object_store_fails_the_job_with_its_code(s3_stack, tmp_path):
    """Over a limit but with good first bytes: the gateway cannot read the header it never stored, the
    worker refuses it before decoding with the same code the gateway gives."""
    reply = submit(s3_stack.gateway, photo_files.huge_png(tmp_path / "huge.png"))
    assert reply.status_code == 202, reply.text
    job = wait_for_job(s3_stack.gateway, reply.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "image_dimensions", job
    bomb = submit(s3_stack.gateway, photo_files.gif_bomb(tmp_path / "bomb.gif"))
    assert bomb.status_code == 415 and "GIF" in bomb.json()["error"]["message"]
