"""The worker's steps on small generated videos, with a stand-in detector and classifier.

PyAV and ffmpeg run for real; only the face detector and the emotion model are replaced (the system tests use
the real ones). The stand-in detector finds the one bright square of the generated video.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from skimage.data import astronaut

from common import job_files
from common.classes import EMOTIONS, NUM_CLASSES
from common.errors import ModelServerUnavailable, VideoError
from common.media import probe
from common.render_options import RenderOptions
from common.storage import LocalStorage
from worker import steps
from worker.detection import FaceBoxes, make_detector
from worker.overlay import EmojiOverlay
from worker.plan import plan_batches
from worker.settings import WorkerSettings
from worker.video_io import DecodeWindow, JoinSource, decode_frames, join_command, plane_array

WIDTH, HEIGHT, FPS, FRAMES = 320, 240, 24, 50
SQUARE = 60


def square_position(i: int) -> tuple[int, int]:
    return 20 + 3 * i, 40 + i


def write_video(
    path: Path,
    extra_args: tuple[str, ...] = (),
    audio: bool = True,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    brightness=lambda i: 230,
) -> None:
    """A dark video with one bright square moving right; frame i's square starts at square_position(i)."""
    width, height = size
    frames = []
    for i in range(FRAMES):
        frame = np.full((height, width, 3), 30, np.uint8)
        x, y = square_position(i)
        frame[y : y + SQUARE, x : x + SQUARE] = brightness(i)
        frames.append(frame)
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}"]
    cmd += ["-framerate", str(FPS), "-i", "pipe:0"]
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
    """Stand-in: the bounding box of the bright pixels, if any (above `level`)."""

    def __init__(self, level: int = 120) -> None:
        self.level = level

    def detect(self, image_bgr: np.ndarray) -> FaceBoxes:
        assert image_bgr.ndim == 3 and image_bgr.shape[2] == 3 and image_bgr.dtype == np.uint8
        ys, xs = np.nonzero(image_bgr.max(axis=2) > self.level)
        if not len(xs):
            return FaceBoxes()
        return FaceBoxes([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [0.9])


class StandInClassifier:
    """Stand-in: 'happy' for bright crops, else 'sad'; counts its calls and crops."""

    model_version = "7"

    def __init__(self, threshold: float = 100) -> None:
        self.calls = 0
        self.sizes: list[int] = []
        self.threshold = threshold

    def predict(self, faces: np.ndarray) -> np.ndarray:
        assert faces.dtype == np.uint8 and faces.shape[1:] == (48, 48, 1)
        self.calls += 1
        self.sizes.append(len(faces))
        out = np.full((len(faces), NUM_CLASSES), 0.05, np.float32)
        bright = faces.reshape(len(faces), -1).mean(axis=1) > self.threshold
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
        storage_dir=tmp_path / "storage",
        batch_frames=12,
        preroll_ms=250,
        detect_every=1,
        smoothing_ms=200,
        track_min_detections=1,
    )


@pytest.fixture
def storage(settings) -> LocalStorage:
    return LocalStorage(settings.storage_dir)


def new_job(storage: LocalStorage, source: Path, job_id: str = "job1") -> str:
    shutil.copy(source, storage.path(job_id, job_files.INPUT))
    return job_id


def run_all(storage, job_id, settings, classifier=None, detector=None):
    plan = steps.plan_job(storage, job_id, settings)
    classifier = classifier or StandInClassifier()
    for index in range(len(plan.batches)):
        steps.run_batch(
            storage, job_id, index, plan, detector or SquareDetector(), classifier, EmojiOverlay(), settings
        )
    result = steps.finish_job(storage, job_id, plan, settings, "emotion")
    timeline = json.loads(storage.path(job_id, job_files.TIMELINE_JSON).read_text())
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


def frame_times(path: Path) -> list[float]:
    """Every video frame's presentation time (s) as ffprobe reads it, counted from the first."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    times = [float(t.strip(",")) for t in out if t.strip(",")]
    return [round(t - times[0], 4) for t in times]


def decode_gray(path: Path) -> list[np.ndarray]:
    """Every frame as ffmpeg's player shows it (rotation applied), grayscale."""
    info = probe(path)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    return list(np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width))


def test_whole_job_keeps_frames_timestamps_audio_and_draws_emojis(video, storage, settings):
    job = new_job(storage, video)
    plan, timeline, result = run_all(storage, job, settings)
    assert len(plan.batches) > 3  # the boundaries are really exercised
    data = ffprobe_streams(result)
    v = next(s for s in data["streams"] if s["codec_type"] == "video")
    a = [s for s in data["streams"] if s["codec_type"] == "audio"]
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (WIDTH, HEIGHT)
    assert int(v["nb_read_frames"]) == FRAMES
    assert frame_times(result) == frame_times(video)
    assert float(data["format"]["duration"]) == pytest.approx(FRAMES / FPS, abs=0.1)
    assert len(a) == 1 and a[0]["codec_name"] == "aac"
    # faststart: the moov atom comes before the media data.
    head = result.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
    # The emoji is drawn on every frame, batch boundaries included, near the square's upper-right corner only.
    out, src = decode_gray(result), decode_gray(video)
    for i in range(FRAMES):
        x, y = square_position(i)
        diff = np.abs(out[i].astype(int) - src[i].astype(int)) > 25
        assert diff[max(y - 30, 0) : y + 30, x + 20 : x + SQUARE + 30].any(), i
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
    for f in timeline["frames"]:
        x, y = square_position(f["index"])
        assert f["faces"][0]["box_xyxy"] == pytest.approx([x, y, x + SQUARE, y + SQUARE], abs=1.5)
    # What each stage cost comes with the job (the benchmark reads it).
    cpu = timeline["processing"]["cpu_s"]
    assert {"decode", "detect", "crop", "draw", "encode", "total"} <= set(cpu) and cpu["total"] > 0
    assert storage.exists(job, job_files.TIMELINE_CSV)


def test_detecting_every_other_frame_interpolates_between(video, storage, settings):
    every_other = settings.model_copy(update={"detect_every": 2})
    job = new_job(storage, video)
    _, timeline, _ = run_all(storage, job, every_other)
    detected = [f["faces"][0]["detected"] for f in timeline["frames"]]
    assert all(len(f["faces"]) == 1 for f in timeline["frames"])
    assert detected.count(False) >= FRAMES // 2 - len(steps.load_plan(storage, job).batches)
    for f in timeline["frames"]:
        x, y = square_position(f["index"])  # linear motion: interpolation is exact up to rounding
        assert f["faces"][0]["box_xyxy"] == pytest.approx([x, y, x + SQUARE, y + SQUARE], abs=1.5)


def test_only_scanned_faces_are_classified_and_frames_between_take_the_nearer_scans_answer(
    video, storage, settings
):
    every_third = settings.model_copy(update={"detect_every": 3})
    job = new_job(storage, video)
    plan = steps.plan_job(storage, job, every_third)

    class NumberedAnswers(StandInClassifier):
        """Each crop's answer differs from every other's, so an answer tells which crop it came from."""

        def predict(self, faces):
            out = super().predict(faces)
            out[:, 0] += 1e-4 * (sum(self.sizes) - len(faces) + np.arange(len(faces)))
            return out

    classifier = NumberedAnswers()
    record = steps.run_batch(storage, job, 1, plan, SquareDetector(), classifier, EmojiOverlay(), every_third)
    frames = record.preroll + record.frames
    scanned = [f for f in frames if f.faces and f.faces[0].detected]
    assert sum(classifier.sizes) == record.crops == len(scanned)  # no crop of an interpolated box
    answers = {f.index: f.faces[0].probabilities for f in scanned}
    between = [f for f in frames if f.faces and not f.faces[0].detected]
    assert between
    for f in between:
        before = max(i for i in answers if i < f.index)
        after = min(i for i in answers if i > f.index)
        nearer = after if f.index - before > after - f.index else before
        assert f.faces[0].probabilities == answers[nearer]


class Blinking(SquareDetector):
    """The square, plus a stray box far from it (wherever the scan's scale) with `score` on the scans
    numbered in `scans` (counted from 1)."""

    def __init__(self, scans: set[int], score: float):
        super().__init__()
        self.seen = 0
        self.scans, self.score = scans, score

    def detect(self, image_bgr):
        self.seen += 1
        found = super().detect(image_bgr)
        if self.seen in self.scans:
            stray = np.array([[250, 180, 300, 230]]) * image_bgr.shape[1] / 320
            return FaceBoxes(np.concatenate([found.xyxy, stray]), [0.9, self.score])
        return found


def test_a_faint_one_frame_detection_is_neither_drawn_nor_in_the_timeline(video, storage, settings):
    job = new_job(storage, video)
    confirm = settings.model_copy(update={"track_min_detections": 2, "track_sure_score": 0.85})
    _, timeline, _ = run_all(storage, job, confirm, detector=Blinking({30}, 0.7))
    assert all(len(f["faces"]) == 1 for f in timeline["frames"])
    assert len(timeline["people"]) == 1


@pytest.mark.parametrize(("scans", "drawn"), [({30, 32, 34, 36}, False), ({30, 31}, True)])
def test_a_faint_box_must_be_found_on_scans_in_a_row_to_be_drawn(video, storage, settings, scans, drawn):
    # A poster or the back of a head comes and goes between scans; a face is found scan after scan.
    job = new_job(storage, video)
    confirm = settings.model_copy(update={"track_min_detections": 2, "track_sure_score": 0.85})
    _, timeline, _ = run_all(storage, job, confirm, detector=Blinking(scans, 0.7))
    assert (len(timeline["people"]) == 2) is drawn


def test_a_face_found_once_with_a_sure_score_is_drawn_at_once(video, storage, settings):
    job = new_job(storage, video)
    confirm = settings.model_copy(update={"track_min_detections": 2, "track_sure_score": 0.85})
    _, timeline, _ = run_all(storage, job, confirm, detector=Blinking({30}, 0.95))
    assert sorted({len(f["faces"]) for f in timeline["frames"]}) == [1, 2]
    assert len(timeline["people"]) == 2


def test_classification_calls_are_batched_and_bounded(video, storage, settings):
    job = new_job(storage, video)
    plan = steps.plan_job(storage, job, settings)
    small = settings.model_copy(update={"predict_batch": 5})
    classifier = StandInClassifier()
    record = steps.run_batch(storage, job, 1, plan, SquareDetector(), classifier, EmojiOverlay(), small)
    crops = len(record.preroll) + len(record.frames)
    assert sum(classifier.sizes) == crops and max(classifier.sizes) <= 5
    classifier = StandInClassifier()
    record = steps.run_batch(storage, job, 1, plan, SquareDetector(), classifier, EmojiOverlay(), settings)
    assert classifier.calls < crops / 2  # several crops per call, not one call per frame


def test_steps_are_idempotent_pieces_and_results_are_overwritten(video, storage, settings):
    job = new_job(storage, video)
    plan, _, result = run_all(storage, job, settings)
    piece = storage.path(job, job_files.piece(1))
    first_piece, first_result = decode_gray(piece), decode_gray(result)
    first_times = frame_times(piece)
    # Everything runs a second time, as after a worker died and its tasks came back.
    steps.run_batch(storage, job, 1, plan, SquareDetector(), StandInClassifier(), EmojiOverlay(), settings)
    steps.finish_job(storage, job, plan, settings, "emotion")
    # The same frames at the same times. Not byte for byte: x264's output was seen to differ by one level
    # on a few pixels between runs of the same batch (cause not found; see the issue 11 note).
    assert frame_times(piece) == first_times
    for again, first in ((decode_gray(piece), first_piece), (decode_gray(result), first_result)):
        assert len(again) == len(first)
        assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(again, first, strict=True))
    leftovers = [p.name for p in storage.job_dir(job).rglob(".*")]
    assert leftovers == []  # no temporary files left behind


def test_video_without_audio_and_without_faces(tmp_path, storage, settings):
    source = tmp_path / "silent.mp4"
    write_video(source, audio=False)
    job = new_job(storage, source)
    _, timeline, result = run_all(storage, job, settings, detector=SquareDetector(level=255))
    assert timeline["people"] == [] and timeline["summary"]["dominant_emotion"] is None
    assert len(timeline["frames"]) == FRAMES and all(f["faces"] == [] for f in timeline["frames"])
    streams = ffprobe_streams(result)["streams"]
    assert [s["codec_type"] for s in streams] == ["video"]
    assert int(streams[0]["nb_read_frames"]) == FRAMES


def set_rotation_90(path: Path) -> None:
    """Write a 90-degree display matrix into the first track header, as a phone held upright does."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") - 4
    assert data[at + 8] == 0, "expected a version-0 tkhd"
    matrix = [0, 1 << 16, 0, -(1 << 16) & 0xFFFFFFFF, 0, 0, 0, 0, 1 << 30]
    data[at + 48 : at + 84] = b"".join(v.to_bytes(4, "big") for v in matrix)
    path.write_bytes(bytes(data))


def test_rotated_phone_video_comes_out_upright_as_a_player_shows_it(tmp_path, storage, settings):
    source = tmp_path / "rotated.mp4"
    write_video(source)
    set_rotation_90(source)
    assert probe(source).rotation in (90, 270)
    job = new_job(storage, source)
    plan, timeline, result = run_all(storage, job, settings, detector=SquareDetector(level=255))
    v = next(s for s in ffprobe_streams(result)["streams"] if s["codec_type"] == "video")
    assert (v["width"], v["height"]) == (HEIGHT, WIDTH) and int(v["nb_read_frames"]) == FRAMES
    assert timeline["video"]["width"] == HEIGHT and timeline["video"]["height"] == WIDTH
    # Nothing drawn (no faces found): the result shows what ffmpeg's player shows, up to the re-encode.
    for out, src in zip(decode_gray(result), decode_gray(source), strict=True):
        assert np.abs(out.astype(int) - src.astype(int)).mean() < 2


def test_variable_frame_rate_keeps_every_frame_time(tmp_path, storage, settings):
    source = tmp_path / "vfr.mkv"
    # Frames at uneven times (a phone that dropped frames): 24 fps with every 4th frame held twice as long.
    write_video(source, ("-vf", "setpts='N/24/TB+floor(N/4)/24/TB'", "-fps_mode", "passthrough"))
    times = frame_times(source)
    assert len(set(np.round(np.diff(times), 3))) > 1, "the source should have uneven frame times"
    job = new_job(storage, source)
    _, timeline, result = run_all(storage, job, settings)
    assert frame_times(result) == pytest.approx(times, abs=0.002)
    assert [f["t_ms"] / 1000 for f in timeline["frames"]] == pytest.approx(times, abs=0.002)


def test_odd_sized_video_comes_out_even_with_every_frame(tmp_path, storage, settings):
    source = tmp_path / "odd.mp4"
    write_video(source, ("-pix_fmt", "yuv444p"), size=(WIDTH + 1, HEIGHT + 1))
    job = new_job(storage, source)
    _, timeline, result = run_all(storage, job, settings)
    v = next(s for s in ffprobe_streams(result)["streams"] if s["codec_type"] == "video")
    assert (v["width"], v["height"]) == (WIDTH, HEIGHT) and v["pix_fmt"] == "yuv420p"
    assert int(v["nb_read_frames"]) == FRAMES and frame_times(result) == frame_times(source)
    assert all(len(f["faces"]) == 1 for f in timeline["frames"])


def test_model_server_down_raises_for_the_task_to_retry(video, storage, settings):
    job = new_job(storage, video)
    plan = steps.plan_job(storage, job, settings)
    with pytest.raises(ModelServerUnavailable):
        steps.run_batch(storage, job, 0, plan, SquareDetector(), DownClassifier(), EmojiOverlay(), settings)
    assert not storage.exists(job, job_files.batch_record(0)) and not storage.exists(job, job_files.piece(0))
    assert [p.name for p in storage.job_dir(job).rglob(".*")] == []


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
        steps.plan_job(storage, job, settings)
    # Even forced to decode it under a video format, nothing but the upload itself is read.
    for fmt in ("mov", "hls", "concat"):
        with pytest.raises(VideoError):
            list(
                decode_frames(storage.path(job, job_files.INPUT), fmt, [0.0, 40.0], DecodeWindow(0, 0, 0, 2))
            )
    for path in storage.job_dir(job).rglob("*"):
        if path.is_file():
            assert b"root:" not in path.read_bytes()


@pytest.mark.parametrize("audio", [None, "aac", "opus"])
def test_the_join_reads_nothing_but_its_own_list_and_the_upload(tmp_path, audio):
    listing, source, target = tmp_path / ".concat.x.txt", tmp_path / "input", tmp_path / ".result.x.mp4"
    cmd = join_command(listing, JoinSource(source, "mov,mp4,m4a,3gp", audio, ("aac",), 0.25), target)
    inputs = [i for i, arg in enumerate(cmd) if arg == "-i"]
    assert [cmd[i + 1] for i in inputs] == [f"file:{listing}", f"file:{source}"][: 2 if audio else 1]
    before = [cmd[start:i] for start, i in zip([0, *[j + 2 for j in inputs]], inputs, strict=False)]
    for options in before:  # each input's own options: local files only
        assert options[options.index("-protocol_whitelist") + 1] == "file"
    assert before[0][before[0].index("-f") + 1] == "concat" and before[0][before[0].index("-safe") + 1] == "1"
    assert before[0][before[0].index("-itsoffset") + 1] == "0.250000"
    if audio:
        assert before[1][before[1].index("-f") + 1] == "mov" and "-format_whitelist" in before[1]
        assert cmd[cmd.index("-c:a") + 1] == ("copy" if audio == "aac" else "aac")
    assert cmd[-6:] == [str(target), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    assert cmd[cmd.index("-c:v") + 1] == "copy"


def test_not_a_video_is_refused_with_a_message(storage, settings):
    storage.path("job1", job_files.INPUT).write_bytes(b"hello, not a video" * 100)
    with pytest.raises(VideoError, match="not a video"):
        steps.plan_job(storage, "job1", settings)


def test_real_detector_finds_the_astronaut_face():
    found = make_detector(WorkerSettings()).detect(np.ascontiguousarray(astronaut()[:, :, ::-1]))
    assert len(found) == 1
    x1, y1, x2, y2 = found.xyxy[0]
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 170


@pytest.mark.parametrize(
    ("keyframes", "size", "expected"),
    [
        # Keyframes every 10 frames at 24 fps, pre-roll 250 ms (6 frames): cuts 6 frames after a keyframe.
        ([0, 10, 20, 30, 40], 12, [(0, 16), (16, 26), (26, 36), (36, 46), (46, 50)]),
        # No keyframe near: cuts every `size` frames.
        ([0], 12, [(0, 12), (12, 24), (24, 36), (36, 48), (48, 50)]),
    ],
)
def test_batches_are_cut_where_the_preroll_starts_on_a_keyframe(keyframes, size, expected):
    times = [i * 1000 / 24 for i in range(50)]
    assert plan_batches(times, keyframes, size, 250) == expected


def test_each_batch_decodes_exactly_the_frames_of_one_full_decode(tmp_path, storage, settings):
    source = tmp_path / "bframes.mp4"
    write_video(source, ("-g", "25", "-bf", "2", "-preset", "medium"))
    job = new_job(storage, source)
    plan = steps.plan_job(storage, job, settings)
    full = [
        plane_array(f, 0).copy()
        for _, f in decode_frames(
            source, plan.info.format_name, plan.timestamps_ms, DecodeWindow(0, 0, 0, FRAMES)
        )
    ]
    assert len(full) == FRAMES
    for index in range(len(plan.batches)):
        window = plan.window(index, settings.preroll_ms)
        got = list(decode_frames(source, plan.info.format_name, plan.timestamps_ms, window))
        assert [i for i, _ in got] == list(range(window.first, window.end))
        assert all(np.array_equal(plane_array(f, 0), full[i]) for i, f in got)
    # A window starting inside a group of pictures, far from its keyframe, is exact too.
    inside = DecodeWindow(keyframe=25, first=37, start=38, end=42)
    got = list(decode_frames(source, plan.info.format_name, plan.timestamps_ms, inside))
    assert [i for i, _ in got] == list(range(37, 42))
    assert all(np.array_equal(plane_array(f, 0), full[i]) for i, f in got)


def test_batch_boundary_inside_an_expression_change_draws_what_one_batch_draws(tmp_path, settings):
    """The face turns from sad to happy at frame 24; a batch boundary falls 5 frames later, inside the
    hysteresis hold. With the pre-roll the second batch shows what the run without the boundary shows."""
    source = tmp_path / "change.mp4"
    # One keyframe only, so the batch cut falls where asked (not moved to a keyframe).
    write_video(source, ("-g", "1000", "-sc_threshold", "0"), brightness=lambda i: 150 if i < 24 else 240)
    # Between the crop's mean brightness before the change and after it, whatever the crop's margin of dark
    # background (square 150 -> 240 on 30; margin 0: about 156 -> 255 once expanded, 0.09: 117 -> 188).
    classifier = StandInClassifier(threshold=170)
    shown = {}
    for name, batch_frames in (("one batch", 1000), ("boundary", 29)):
        case = settings.model_copy(
            update={
                "storage_dir": tmp_path / name,
                "batch_frames": batch_frames,
                "preroll_ms": 1000,
                "smoothing_ms": 100,
                "hysteresis_hold_ms": 300,
            }
        )
        storage = LocalStorage(case.storage_dir)
        job = new_job(storage, source)
        plan, timeline, result = run_all(storage, job, case, classifier=classifier)
        shown[name] = [f["faces"][0]["shown_emotion"] for f in timeline["frames"]]
        shown[name + " pixels"] = decode_gray(result)
        if name == "boundary":
            assert (29, 50) in plan.batches
    assert shown["one batch"][:24] == ["sad"] * 24 and shown["one batch"][-1] == "happy"
    change = shown["one batch"].index("happy")
    assert 29 < change < 40  # the hold outlasts the boundary: the shown emotion changes inside batch 2
    assert shown["boundary"] == shown["one batch"]
    for a, b in zip(shown["boundary pixels"], shown["one batch pixels"], strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.5
    assert EMOTIONS.index("happy") == 3


@pytest.mark.parametrize("style", ["cover", "badge"])
def test_a_cover_spans_the_unscanned_frames_where_a_face_comes_and_goes(tmp_path, settings, style):
    """The square shows on frames 7-40, but scans (every 3rd frame, and each batch's last) find it later
    and lose it earlier. A badge is drawn from the first scan that found it to the last; a cover also on
    the frames before and after those, where it was in view but not scanned, so no frame shows it bare."""
    visible = range(7, 41)
    source = tmp_path / "comes-and-goes.mp4"
    write_video(source, audio=False, brightness=lambda i: 230 if i in visible else 30)
    every_third = settings.model_copy(update={"detect_every": 3, "track_min_detections": 2})
    storage = LocalStorage(every_third.storage_dir)
    job = new_job(storage, source)
    plan = steps.plan_job(storage, job, every_third, RenderOptions(style=style))
    overlay, classifier = EmojiOverlay(style), StandInClassifier()
    for index in range(len(plan.batches)):
        steps.run_batch(storage, job, index, plan, SquareDetector(), classifier, overlay, every_third)
    steps.finish_job(storage, job, plan, every_third, "emotion")
    timeline = json.loads(storage.path(job, job_files.TIMELINE_JSON).read_text())

    scanned = sorted({i for i in range(FRAMES) if i % 3 == 0} | {end - 1 for _, end in plan.batches})
    found = [i for i in scanned if i in visible]
    assert found[0] > visible[0] and found[-1] < visible[-1], "the clip no longer tests what it should"
    with_face = [f["index"] for f in timeline["frames"] if f["faces"]]
    assert with_face == list(range(with_face[0], with_face[-1] + 1)), "a gap between two detections"
    if style == "cover":
        assert with_face[0] <= visible[0] and with_face[-1] >= visible[-1], "the face shows uncovered"
        assert with_face[0] > max(i for i in scanned if i < found[0])
        assert with_face[-1] < min(i for i in scanned if i > found[-1])
    else:
        assert (with_face[0], with_face[-1]) == (found[0], found[-1])
    assert timeline["options"]["style"] == style
