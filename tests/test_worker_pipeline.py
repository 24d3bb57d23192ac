"""The worker's pipeline functions on small generated videos, with a stand-in detector and classifier.

The real ffmpeg runs; only the face detector and the emotion model are replaced (the system tests use the real
ones). The stand-in detector finds the one bright square of the generated video.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.classes import NUM_CLASSES
from common.errors import ModelServerUnavailable, VideoError
from common.media import probe
from common.storage import LocalStorage
from worker import pipeline
from worker.detection import FaceBoxes
from worker.overlay import EmojiOverlay
from worker.settings import WorkerSettings
from worker.video_io import read_frames

WIDTH, HEIGHT, FPS, FRAMES = 320, 240, 24, 50
SQUARE = 60


def square_position(i: int) -> tuple[int, int]:
    return 20 + 3 * i, 40 + i


def write_video(path: Path, extra_args: tuple[str, ...] = (), audio: bool = True) -> None:
    """A dark video with one bright square moving right; frame i's square starts at square_position(i)."""
    frames = []
    for i in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
        x, y = square_position(i)
        frame[y : y + SQUARE, x : x + SQUARE] = 230
        frames.append(frame)
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{WIDTH}x{HEIGHT}",
        "-framerate",
        str(FPS),
        "-i",
        "pipe:0",
    ]
    if audio:
        cmd += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={FRAMES / FPS}",
            "-c:a",
            "aac",
            "-shortest",
        ]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "10",
        "-pix_fmt",
        "yuv420p",
        *extra_args,
        str(path),
    ]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)


class SquareDetector:
    """Stand-in: the bounding box of the bright pixels, if any."""

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        assert image_bgr.dtype == np.uint8 and image_bgr.ndim == 3 and image_bgr.shape[2] == 3
        ys, xs = np.nonzero(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) > 150)
        if not len(xs):
            return FaceBoxes()
        return FaceBoxes([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [0.9])


class StandInClassifier:
    """Stand-in: 'happy' for bright crops, else 'sad'; counts its calls."""

    model_version = "7"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, faces: np.ndarray) -> np.ndarray:
        assert faces.dtype == np.uint8 and faces.shape[1:] == (48, 48, 1)
        self.calls += 1
        out = np.full((len(faces), NUM_CLASSES), 0.05, np.float32)
        bright = faces.reshape(len(faces), -1).mean(axis=1) > 100
        out[bright, 3] = 0.7
        out[~bright, 4] = 0.7
        return out


class DownClassifier:
    model_version = None

    def predict(self, faces):
        raise ModelServerUnavailable("model server 127.0.0.1:1: Predict failed: UNAVAILABLE")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    write_video(path)
    return path


@pytest.fixture
def settings(tmp_path) -> WorkerSettings:
    return WorkerSettings(
        storage_dir=tmp_path, batch_frames=12, detect_every=3, smoothing_ms=200, track_min_detections=1
    )


@pytest.fixture
def storage(settings) -> LocalStorage:
    return LocalStorage(settings.storage_dir)


def new_job(storage: LocalStorage, source: Path, job_id: str = "job1") -> str:
    shutil.copy(source, storage.path(job_id, pipeline.INPUT))
    return job_id


def run_all(storage, job_id, settings, classifier=None, detector=None):
    plan = pipeline.plan_job(storage, job_id, settings)
    classifier = classifier or StandInClassifier()
    for index in range(len(plan.batches)):
        pipeline.analyze_batch(
            storage, job_id, index, plan, detector or SquareDetector(), classifier, settings
        )
    timeline = pipeline.make_timeline(storage, job_id, plan, settings, {"name": "emotion", "version": "7"})
    overlay = EmojiOverlay()
    for index in range(len(plan.batches)):
        pipeline.render_batch(storage, job_id, index, plan, overlay, settings)
    result = pipeline.finish_job(storage, job_id, plan, settings)
    return plan, timeline, result


def ffprobe_streams(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout)


def decode_gray(path: Path, width=WIDTH, height=HEIGHT) -> list[np.ndarray]:
    info = probe(path)
    return [
        f.reshape(height, width)
        for f in read_frames(
            path, info.format_name, width, height, "gray", info.frames, source_size=(info.width, info.height)
        )
    ]


def test_batches_decoded_with_seeking_equal_one_full_decode(video, storage, settings):
    job = new_job(storage, video)
    plan = pipeline.plan_job(storage, job, settings)
    assert plan.frames == FRAMES and len(plan.batches) == 5 and plan.batches[-1] == (48, 50)
    full = decode_gray(video)
    parts = []
    for start, end in plan.batches:
        seek_s, skip = plan.seek(start)
        parts += list(
            read_frames(video, plan.info.format_name, WIDTH, HEIGHT, "gray", end - start, seek_s, skip)
        )
    assert len(parts) == len(full) == FRAMES
    assert all(np.array_equal(a.reshape(HEIGHT, WIDTH), b) for a, b in zip(parts, full, strict=False))


def test_whole_job_keeps_frames_duration_audio_and_draws_emojis(video, storage, settings):
    job = new_job(storage, video)
    plan, timeline, result = run_all(storage, job, settings)
    data = ffprobe_streams(result)
    v = next(s for s in data["streams"] if s["codec_type"] == "video")
    a = [s for s in data["streams"] if s["codec_type"] == "audio"]
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (WIDTH, HEIGHT)
    assert abs(int(v["nb_read_frames"]) - FRAMES) <= 1
    assert float(data["format"]["duration"]) == pytest.approx(FRAMES / FPS, abs=0.1)
    assert len(a) == 1 and a[0]["codec_name"] == "aac"
    # faststart: the moov atom comes before the media data.
    head = result.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
    # The emoji is drawn: frames differ from the source near the square's upper-right corner only.
    out, src = decode_gray(result), decode_gray(video)
    for i in (0, 17, 49):
        x, y = square_position(i)
        diff = np.abs(out[i].astype(int) - src[i].astype(int)) > 25
        assert diff[max(y - 30, 0) : y + 30, x + 20 : x + SQUARE + 30].any()
        assert not diff[HEIGHT - 60 :, :].any()  # far from the face nothing changed


def test_one_person_stitched_across_batches_with_faces_in_every_frame(video, storage, settings):
    job = new_job(storage, video)
    plan, timeline, _ = run_all(storage, job, settings)
    assert len(timeline["frames"]) == FRAMES
    assert [f["index"] for f in timeline["frames"]] == list(range(FRAMES))
    assert [f["t_ms"] for f in timeline["frames"]] == plan.timestamps_ms
    assert all(len(f["faces"]) == 1 for f in timeline["frames"])
    assert {f["faces"][0]["person_id"] for f in timeline["frames"]} == {1}
    assert [p["person_id"] for p in timeline["people"]] == [1]
    assert timeline["people"][0]["dominant_emotion"] == "happy"
    assert timeline["model"] == {"name": "emotion", "version": "7"}
    # Detected on every 3rd frame (and each batch's first and last), followed in between.
    detected = [f["faces"][0]["detected"] for f in timeline["frames"]]
    assert detected[0] and not detected[1] and not detected[2] and detected[3]
    # Followed boxes lie on the square's path (it moves linearly, so interpolation is exact up to rounding).
    for f in timeline["frames"][:12]:
        x, y = square_position(f["index"])
        assert f["faces"][0]["box_xyxy"] == pytest.approx([x, y, x + SQUARE, y + SQUARE], abs=1.5)
    assert storage.exists(job, pipeline.TIMELINE_CSV)


def test_all_crops_of_a_batch_go_in_one_predict_call(video, storage, settings):
    job = new_job(storage, video)
    plan = pipeline.plan_job(storage, job, settings)
    classifier = StandInClassifier()
    pipeline.analyze_batch(storage, job, 0, plan, SquareDetector(), classifier, settings)
    assert classifier.calls == 1
    small = WorkerSettings(**{**settings.model_dump(), "predict_batch": 5})
    classifier = StandInClassifier()
    pipeline.analyze_batch(storage, job, 0, plan, SquareDetector(), classifier, small)
    assert classifier.calls == 3  # 12 crops in calls of at most 5


def test_steps_are_idempotent_pieces_and_results_are_overwritten(video, storage, settings):
    job = new_job(storage, video)
    plan, _, result = run_all(storage, job, settings)
    piece = storage.path(job, pipeline.piece_name(1))
    first_piece = decode_gray(piece)
    first_result = decode_gray(result)
    # Everything runs a second time, as after a worker died and its tasks came back.
    pipeline.analyze_batch(storage, job, 1, plan, SquareDetector(), StandInClassifier(), settings)
    pipeline.make_timeline(storage, job, plan, settings, {"name": "emotion", "version": "7"})
    pipeline.render_batch(storage, job, 1, plan, EmojiOverlay(), settings)
    pipeline.finish_job(storage, job, plan, settings)
    assert all(np.array_equal(a, b) for a, b in zip(decode_gray(piece), first_piece, strict=False))
    assert all(np.array_equal(a, b) for a, b in zip(decode_gray(result), first_result, strict=False))
    leftovers = [p.name for p in storage.job_dir(job).rglob(".*")]
    assert leftovers == []  # no temporary files left behind


def test_video_without_audio_and_without_faces(tmp_path, storage, settings):
    source = tmp_path / "silent.mp4"
    write_video(source, audio=False)
    job = new_job(storage, source)

    class NoFaces(SquareDetector):
        def detect(self, gray):
            return FaceBoxes()

    _, timeline, result = run_all(storage, job, settings, detector=NoFaces())
    assert timeline["people"] == [] and timeline["summary"]["dominant_emotion"] is None
    assert len(timeline["frames"]) == FRAMES and all(f["faces"] == [] for f in timeline["frames"])
    streams = ffprobe_streams(result)["streams"]
    assert [s["codec_type"] for s in streams] == ["video"]
    assert abs(int(streams[0]["nb_read_frames"]) - FRAMES) <= 1


def set_rotation_90(path: Path) -> None:
    """Write a 90-degree display matrix into the first track header, as a phone held upright does."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") - 4
    assert data[at + 8] == 0, "expected a version-0 tkhd"
    matrix = [0, 1 << 16, 0, -(1 << 16) & 0xFFFFFFFF, 0, 0, 0, 0, 1 << 30]
    data[at + 48 : at + 84] = b"".join(v.to_bytes(4, "big") for v in matrix)
    path.write_bytes(bytes(data))


def test_rotated_phone_video_comes_out_upright(tmp_path, storage, settings):
    source = tmp_path / "rotated.mp4"
    write_video(source)
    set_rotation_90(source)
    assert probe(source).rotation in (90, 270)
    job = new_job(storage, source)
    plan, timeline, result = run_all(storage, job, settings)
    v = next(s for s in ffprobe_streams(result)["streams"] if s["codec_type"] == "video")
    assert (v["width"], v["height"]) == (HEIGHT, WIDTH)
    assert timeline["video"]["width"] == HEIGHT and timeline["video"]["height"] == WIDTH


def test_model_server_down_raises_for_the_task_to_retry(video, storage, settings):
    job = new_job(storage, video)
    plan = pipeline.plan_job(storage, job, settings)
    with pytest.raises(ModelServerUnavailable):
        pipeline.analyze_batch(storage, job, 0, plan, SquareDetector(), DownClassifier(), settings)
    assert not storage.exists(job, pipeline.analysis_name(0))


@pytest.mark.parametrize("kind", ["hls", "concat"])
def test_playlists_pointing_at_local_files_are_refused(tmp_path, storage, settings, video, kind):
    if kind == "hls":
        text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n/etc/passwd\n#EXT-X-ENDLIST\n"
    else:
        text = f"ffconcat version 1.0\nfile '{video}'\nfile '/etc/passwd'\n"
    playlist = tmp_path / f"upload.{'m3u8' if kind == 'hls' else 'txt'}"
    playlist.write_text(text)
    job = new_job(storage, playlist)
    with pytest.raises(VideoError):
        pipeline.plan_job(storage, job, settings)
    # Even forced to decode it under a video format, ffmpeg reads nothing but the upload itself.
    with pytest.raises(VideoError):
        list(read_frames(storage.path(job, pipeline.INPUT), "mov", WIDTH, HEIGHT, "gray", 5))
    for path in storage.job_dir(job).rglob("*"):
        if path.is_file():
            assert b"root:" not in path.read_bytes()


def test_not_a_video_is_refused_with_a_message(storage, settings):
    storage.path("job1", pipeline.INPUT).write_bytes(b"hello, not a video" * 100)
    with pytest.raises(VideoError, match="not a video"):
        pipeline.plan_job(storage, "job1", settings)


def test_detection_schedule():
    assert pipeline.detection_frames(0, 12, 3) == [0, 3, 6, 9, 11]
    assert pipeline.detection_frames(13, 5, 3) == [0, 2, 4]
    assert pipeline.detection_frames(0, 1, 3) == [0]


@pytest.mark.parametrize(
    ("frames", "keyframes", "size", "expected"),
    [
        # Keyframes closer than a batch: fixed cuts, as before.
        (50, [0, 10, 20, 30, 40], 12, [(0, 12), (12, 24), (24, 36), (36, 48), (48, 50)]),
        # Keyframes further apart than a batch: batches end on them.
        (600, [0, 250, 500], 120, [(0, 250), (250, 500), (500, 600)]),
        # A keyframe too far ahead (over 3 batches): fall back to the last one inside the batch, else a cut.
        (
            1000,
            [0, 60, 900],
            120,
            [(0, 120), (120, 240), (240, 360), (360, 480), (480, 600), (600, 900), (900, 1000)],
        ),
        # One group of pictures: one batch decodes it once, three would decode its start three times.
        (30, [0], 12, [(0, 30)]),
    ],
)
def test_batches_end_on_keyframes_when_keyframes_are_sparse(frames, keyframes, size, expected):
    assert pipeline.plan_batches(frames, keyframes, size) == expected


def test_sparse_keyframe_batches_decode_exactly_and_from_their_keyframe(tmp_path, storage, settings):
    source = tmp_path / "long-gop.mp4"
    write_video(source, ("-g", "25", "-bf", "2"))
    job = new_job(storage, source)
    plan = pipeline.plan_job(storage, job, settings)
    assert plan.batches == [(0, 25), (25, 50)]  # keyframes every 25 frames, batches of 12 asked for
    full = decode_gray(source)
    for fast_luma in (False, True):
        parts = []
        for start, end in plan.batches:
            seek_s, cut_s, skip = plan.decode_window(start)
            parts += read_frames(
                source,
                plan.info.format_name,
                WIDTH,
                HEIGHT,
                "gray",
                end - start,
                seek_s,
                skip,
                cut_s=cut_s,
                source_pix_fmt=plan.pix_fmt if fast_luma else None,
                source_full_range=plan.full_range,
            )
        assert len(parts) == len(full) == FRAMES
        # The luma plane as decoded, range-expanded, is byte for byte what ffmpeg's gray conversion gives.
        assert all(np.array_equal(a.reshape(HEIGHT, WIDTH), b) for a, b in zip(parts, full, strict=False))
    # Starting on frame 25 (a keyframe) the decoder gets no frame before it: fast, as for the first batch.
    seek_s, cut_s, skip = plan.decode_window(25)
    assert (
        skip == 0
        and cut_s < plan.timestamps_ms[25] / 1000 + plan.video_start_s < seek_s + plan.container_start_s
    )


def test_cut_inside_a_group_of_pictures_and_mid_batch_seeks_are_exact(video, storage, settings):
    job = new_job(storage, video)
    plan = pipeline.plan_job(storage, job, settings)
    full = decode_gray(video)
    for start in (1, 9, 10, 11, 37):
        seek_s, cut_s, skip = plan.decode_window(start)
        got = list(
            read_frames(
                video,
                plan.info.format_name,
                WIDTH,
                HEIGHT,
                "gray",
                5,
                seek_s,
                skip,
                cut_s=cut_s,
                source_pix_fmt=plan.pix_fmt,
            )
        )
        assert all(
            np.array_equal(a.reshape(HEIGHT, WIDTH), b) for a, b in zip(got, full[start:], strict=False)
        )
        assert len(got) == 5


class CountingDetector(SquareDetector):
    def __init__(self) -> None:
        self.scans = 0

    def detect(self, image_bgr):
        self.scans += 1
        return super().detect(image_bgr)


def test_every_detection_frame_gets_a_whole_frame_scan_in_colour():
    frame = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    frame[40 : 40 + SQUARE, 20 : 20 + SQUARE] = 230
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    detector = CountingDetector()
    found = pipeline.detect_faces([yuv] * 12, (WIDTH, HEIGHT), 0, 3, detector)
    assert sorted(found) == [0, 3, 6, 9, 11] and detector.scans == 5
    for boxes, _ in found.values():
        assert boxes.tolist() == [[20, 40, 20 + SQUARE, 40 + SQUARE]]
