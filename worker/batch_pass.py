"""One batch in one pass over its frames: decode once, then per frame detect, follow, crop (classification
runs in the background, batched), smooth, draw and encode, with a short look-ahead and a pre-roll.

- Pre-roll: the `preroll_ms` before the batch's first frame are decoded and analysed but not drawn, so the
  tracker and the smoother enter the batch warm: an emoji drawn at a batch boundary is the one a run without
  that boundary draws (the smoother forgets its start within a few `smoothing_ms`, the hysteresis holds).
- Look-ahead: a frame is finished (smoothed, drawn, encoded) only once frames `lookahead_ms` after it are
  analysed. In that window a person missed by the detector for a few frames (or between detections, with
  `detect_every` > 1) gets boxes interpolated across the gap, with the emotion of the nearer scan (only
  scanned faces are classified), and a one-frame false detection is recognised (its track never reaches
  `track_min_detections`, nor scores `track_sure_score`) before anything is drawn for it.
- Detection scans the same frames of the video whichever batch they fall in, at half width between full
  scans while every face is large (worker.detection.ScanSchedule); the pre-roll warms that up too.
- Everything is causal otherwise, so the result of a batch depends only on its frames and pre-roll: not on
  which worker ran it, nor on how many took part.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from common import job_files
from common.classes import EMOTIONS
from common.face_crop import crop_faces
from common.storage import LocalStorage
from worker.classifier import BackgroundClassifier, EmotionClassifier, Slot, model_version
from worker.detection import FaceDetector, ScanSchedule
from worker.overlay import EmojiOverlay
from worker.plan import Plan
from worker.records import BatchRecord, FaceRecord, FrameRecord, write_atomically
from worker.settings import WorkerSettings
from worker.smoothing import EmotionSmoother
from worker.tracking import IouTracker
from worker.video_io import FULL_RANGE_LUT, DisplayFrames, PieceWriter, decode_frames, even, plane_array

logger = logging.getLogger(__name__)

# Video time a classification call has between going out and the first frame that needs its answer.
CLASSIFY_SLACK_MS = 150.0


@dataclass
class PendingFace:
    track: int
    box: np.ndarray  # xyxy, displayed frame's pixels
    score: float
    detected: bool
    slot: Slot


@dataclass
class PendingFrame:
    index: int
    t_ms: float
    frame: object  # av.VideoFrame, drawn on and encoded when finished
    luma: np.ndarray
    faces: list[PendingFace] = field(default_factory=list)


# --- one frame's analysis and drawing, shared with photos (worker.photo) --------------------------------
def detection_size(width: int, height: int, detect_width: int) -> tuple[int, int]:
    """(width, height) of the detector's copy of a frame: at most `detect_width` wide, even, same aspect."""
    detect_w = even(min(width, detect_width))
    return detect_w, even(round(height * detect_w / width))


def scan_schedule(detector: FaceDetector, settings: WorkerSettings) -> ScanSchedule:
    """The worker's schedule of scan widths for one video (or photo), from its settings."""
    return ScanSchedule(detector, settings.detect_width, settings.fine_scan_width)


def face_record(
    track: int, box, score: float, detected: bool, raw: np.ndarray, smoother: EmotionSmoother, t_ms: float
) -> FaceRecord:
    """One face as drawn and recorded; the smoother picks the emoji from the model's raw probabilities."""
    smoothed, shown = smoother.update(track, raw, t_ms)
    return FaceRecord(
        track=track,
        box_xyxy=tuple(round(float(v), 2) for v in box),
        score=round(float(score), 4),
        detected=detected,
        probabilities=[round(float(p), 5) for p in raw],
        smoothed=[round(float(p), 5) for p in smoothed],
        shown=shown,
    )


def emoji_faces(faces: list[FaceRecord]) -> list[tuple[tuple, str]]:
    """What the overlay draws for a frame's faces: (box, emotion) pairs."""
    return [(f.box_xyxy, EMOTIONS[f.shown]) for f in faces]


class StageClock:
    """CPU seconds of this thread per stage (the batch runs on one thread; classification calls are counted
    by their own thread, see BackgroundClassifier)."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.last = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + now - self.last
        self.last = now


class BatchPass:
    def __init__(
        self,
        plan: Plan,
        batch_index: int,
        detector: FaceDetector,
        classifier: EmotionClassifier,
        overlay: EmojiOverlay,
        settings: WorkerSettings,
    ) -> None:
        self.plan, self.settings, self.overlay = plan, settings, overlay
        self.scanner = scan_schedule(detector, settings)
        self.window = plan.window(batch_index, settings.preroll_ms)
        self.batch_index = batch_index
        self.width, self.height = plan.output_size
        self.matrix = "bt709" if self.height >= 720 else "bt601"
        self.expand = None if plan.full_range else FULL_RANGE_LUT
        self.tracker = IouTracker(min_iou=settings.track_min_iou, max_miss_ms=settings.track_max_miss_ms)
        self.smoother = EmotionSmoother(
            settings.smoothing_ms, settings.hysteresis_margin, settings.hysteresis_hold_ms
        )
        # A call goes out once its first crop has waited all of the look-ahead but CLASSIFY_SLACK_MS: the
        # fewer the calls, the less the model server spends (each call costs ~9 ms of CPU besides ~1.4 ms a
        # face), and the slack's frames of decoding and detection cover the call's round trip.
        wait_ms = max(settings.lookahead_ms / 2, settings.lookahead_ms - CLASSIFY_SLACK_MS)
        self.background = BackgroundClassifier(classifier, settings.predict_batch, wait_ms)
        self.classifier = classifier
        # Per track: its longest run of scans in a row that found it, (its last scan's number, the run up to
        # it), and its best score.
        self.longest_run: dict[int, int] = {}
        self.streak: dict[int, tuple[int, int]] = {}
        self.best_score: dict[int, float] = {}
        self.last_seen: dict[int, tuple[int, np.ndarray, float, Slot]] = {}
        # A cover also spans the unscanned frames beside a person's first and last detection (hold_edges).
        self.hold = overlay.mode == "cover"
        self.last_scan: int | None = None
        self.buffer: deque[PendingFrame] = deque()
        self.preroll: list[FrameRecord] = []
        self.frames: list[FrameRecord] = []
        self.clock = StageClock()
        self.writer: PieceWriter | None = None
        self.crops = 0

    # --- analysis of one frame -------------------------------------------------------------------------
    def detection_image(self, frame, width: int) -> np.ndarray:
        """A BGR copy `width` wide for the detector, converted from the planes at that size only. Bilinear:
        area averaging cost 2 ms a frame."""
        w, h = detection_size(self.width, self.height, width)
        luma, u, v = (plane_array(frame, i) for i in range(3))
        small = np.empty((h * 3 // 2, w), np.uint8)
        cv2.resize(luma, (w, h), dst=small[:h], interpolation=cv2.INTER_LINEAR)
        chroma = small[h:].reshape(2, h // 2, w // 2)
        cv2.resize(u, (w // 2, h // 2), dst=chroma[0], interpolation=cv2.INTER_LINEAR)
        cv2.resize(v, (w // 2, h // 2), dst=chroma[1], interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(small, cv2.COLOR_YUV2BGR_I420)

    def submit_crops(self, luma: np.ndarray, boxes: np.ndarray, t_ms: float) -> list[Slot]:
        crops = crop_faces(luma, boxes)
        if self.expand is not None and len(crops):
            crops = self.expand[crops]
        self.crops += len(crops)
        return [self.background.submit(c, t_ms) for c in crops]

    def analyse(self, pending: PendingFrame, frame) -> None:
        """Scan every `detect_every`-th frame of the video (counted from its start, so every batch scans the
        same frames) and the window's last one; the faces found are cropped and sent to the classifier."""
        every = self.settings.detect_every
        if pending.index % every and pending.index != self.window.end - 1:
            return
        number = pending.index // every
        small = self.detection_image(frame, self.scanner.width_for(number, self.width))
        self.clock.lap("convert")
        found = self.scanner.scan(small).scaled(self.width / small.shape[1]).clipped(self.width, self.height)
        boxes, scores = np.asarray(found.xyxy, np.float64).reshape(-1, 4), found.scores
        self.clock.lap("detect")
        ids = self.tracker.update(boxes, pending.t_ms)
        self.clock.lap("track")
        slots = self.submit_crops(pending.luma, boxes, pending.t_ms)
        if self.hold:
            self.hold_edges(pending.index, ids, boxes, scores, slots)
        for track, box, score, slot in zip(ids, boxes, scores, slots, strict=True):
            self.count_hit(track, pending.index // every, float(score))
            pending.faces.append(PendingFace(track, box, float(score), True, slot))
            self.fill_gap(track, pending.index, box, float(score), slot)
            self.last_seen[track] = (pending.index, box, float(score), slot)
        self.last_scan = pending.index
        self.clock.lap("crop")

    def hold_edges(self, index: int, ids, boxes: np.ndarray, scores, slots: list[Slot]) -> None:
        """For covers: a person found by this scan and not by the one before had their face in view on
        some of the frames in between too (it came in, or turned, between the scans); one found by the scan
        before and not by this one may still show on the frames after it. Both get the box of the nearest
        detection held over those frames, so a face is covered from before it is first found until after
        it is last found, not only from scan to scan. A later detection replaces a held box (fill_gap)."""
        if self.last_scan is None:
            return  # the window's first scan: the frames before it are not ours
        for track, box, score, slot in zip(ids, boxes, scores, slots, strict=True):
            if track not in self.last_seen:
                self.hold_box(track, box, float(score), slot, self.last_scan, index)
        for track, (last_index, box, score, slot) in self.last_seen.items():
            if last_index == self.last_scan and track not in ids:
                self.hold_box(track, box, score, slot, last_index, index)

    def hold_box(self, track: int, box, score: float, slot: Slot, after: int, before: int) -> None:
        """The box on the buffered frames strictly between `after` and `before` that have none of `track`."""
        for pending in self.buffer:
            if after < pending.index < before and all(face.track != track for face in pending.faces):
                pending.faces.append(PendingFace(track, box, score, False, slot))

    def count_hit(self, track: int, scan: int, score: float) -> None:
        """Note that scan number `scan` found the track (the window's last frame shares its scan number with
        the scan before it: the same scan, as far as runs go)."""
        last, run = self.streak.get(track, (scan - 2, 0))
        run = run + (scan - last == 1) if scan - last <= 1 else 1
        self.streak[track] = (scan, run)
        self.longest_run[track] = max(self.longest_run.get(track, 0), run)
        self.best_score[track] = max(self.best_score.get(track, 0.0), score)

    def fill_gap(self, track: int, index: int, box: np.ndarray, score: float, slot: Slot) -> None:
        """Boxes for the frames since this person was last found, if those frames are still buffered. They
        take the emotion of the nearer of the two scans (the model is asked about scanned frames only: an
        expression takes far longer than a gap between scans to change, and the smoother averages over
        `smoothing_ms` anyway)."""
        if track not in self.last_seen:
            return
        last_index, last_box, last_score, last_slot = self.last_seen[track]
        if index - last_index < 2:
            return
        times = self.plan.timestamps_ms
        for pending in self.buffer:
            if last_index < pending.index < index:
                span = times[index] - times[last_index]
                w = (pending.t_ms - times[last_index]) / span if span > 0 else 0.5
                between = last_box + w * (box - last_box)
                pending.faces = [face for face in pending.faces if face.track != track]  # a held box
                pending.faces.append(
                    PendingFace(
                        track,
                        between,
                        last_score + w * (score - last_score),
                        False,
                        slot if w > 0.5 else last_slot,
                    )
                )

    # --- finishing a frame ------------------------------------------------------------------------------
    def confirmed(self, track: int) -> bool:
        """A face found once with a high score is drawn at once; a faint one only once found on
        `track_min_detections` scans in a row. A false box comes and goes (a poster, the back of a head found
        on every other scan), a real face is found scan after scan (docs/benchmarks.md)."""
        settings = self.settings
        return (
            self.longest_run[track] >= settings.track_min_detections
            or self.best_score[track] >= settings.track_sure_score
        )

    def finish(self, pending: PendingFrame) -> None:
        if any(face.slot.future is None for face in pending.faces):
            self.background.flush()
        self.clock.lap("crop")
        faces = []
        for face in sorted(pending.faces, key=lambda f: f.track):
            if not self.confirmed(face.track):
                continue  # found too rarely and too faintly: most likely a false detection (confirmed)
            faces.append(
                face_record(
                    face.track, face.box, face.score, face.detected, face.slot.result(), self.smoother,
                    pending.t_ms,
                )
            )
        self.clock.lap("smooth")
        record = FrameRecord(index=pending.index, t_ms=pending.t_ms, faces=faces)
        if pending.index < self.window.start:
            self.preroll.append(record)
            return
        self.frames.append(record)
        if faces:
            # The decoder may still read this frame's buffer as a reference picture for frames not yet
            # decoded: drawing into it would smear the emoji into them. make_writable copies a shared buffer.
            frame = pending.frame
            frame.make_writable()
            self.overlay.draw_yuv_planes(
                plane_array(frame, 0),
                plane_array(frame, 1),
                plane_array(frame, 2),
                emoji_faces(faces),
                self.matrix,
            )
        self.clock.lap("draw")
        times = self.plan.timestamps_ms
        base = self.writer.time_base
        pts = round((pending.t_ms - times[self.window.start]) / 1000 / base)
        self.writer.write(pending.frame, pts)
        self.clock.lap("encode")

    def run(self, storage: LocalStorage, job_id: str, fence=None) -> BatchRecord:
        """Process the batch; `fence` (a fencing check) runs before each output is put in place and may
        raise to stop that."""
        started, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        written = self.write_piece(storage, job_id, fence)
        self.clock.lap("encode")
        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu = dict(self.clock.cpu_s)
        cpu["classify_calls"] = self.background.cpu_s
        cpu["total"] = now.ru_utime + now.ru_stime - usage.ru_utime - usage.ru_stime
        record = self.batch_record(written, cpu, started, now)
        if fence is not None:
            fence()
        write_atomically(
            storage.path(job_id, job_files.batch_record(self.batch_index)), record.model_dump_json()
        )
        logger.info(
            "job %s: batch %d (frames %d-%d, %d pre-roll, %d crops) in %.2f s wall, %.2f s CPU: %s",
            job_id,
            self.batch_index,
            self.window.start,
            self.window.start + written - 1,
            len(self.preroll),
            self.crops,
            record.wall_s,
            cpu["total"],
            ", ".join(f"{k} {v:.2f}" for k, v in record.cpu_s.items()),
        )
        return record

    def write_piece(self, storage: LocalStorage, job_id: str, fence) -> int:
        """Decode the window, analyse and draw each frame, encode the piece; the frames written."""
        settings, plan = self.settings, self.plan
        display = DisplayFrames(plan.info.rotation, plan.output_size)
        try:
            frames = decode_frames(
                storage.path(job_id, job_files.INPUT),
                plan.info.format_name,
                plan.timestamps_ms,
                self.window,
                settings.decode_threads,
            )
            for index, raw in frames:
                self.clock.lap("decode")
                if self.writer is None:
                    self.writer = self.open_writer(storage, job_id, raw)
                frame = display(raw)
                pending = PendingFrame(index, plan.timestamps_ms[index], frame, plane_array(frame, 0))
                self.clock.lap("convert")
                self.analyse(pending, frame)
                self.buffer.append(pending)
                self.background.due(pending.t_ms)
                while self.buffer and pending.t_ms - self.buffer[0].t_ms >= settings.lookahead_ms:
                    self.finish(self.buffer.popleft())
                self.clock.last = time.thread_time()
            while self.buffer:
                self.finish(self.buffer.popleft())
            # No frame decoded (a damaged stretch): no piece; the task counts the frames as lost.
            return self.writer.close(before_replace=fence) if self.writer is not None else 0
        except BaseException:
            if self.writer is not None:
                self.writer.abort()
            raise
        finally:
            self.background.close()

    def open_writer(self, storage: LocalStorage, job_id: str, first) -> PieceWriter:
        """The piece's encoder, in the time base of the first decoded frame."""
        settings = self.settings
        return PieceWriter(
            storage.path(job_id, job_files.piece(self.batch_index)),
            self.width,
            self.height,
            self.plan.info.fps,
            Fraction(first.time_base) if first.time_base else Fraction(1, 90000),
            settings.x264_preset,
            settings.x264_crf,
            settings.encode_threads,
        )

    def batch_record(self, written: int, cpu: dict, started: float, now) -> BatchRecord:
        """What this pass did: its frames, faces, timings and where it ran."""
        return BatchRecord(
            batch_index=self.batch_index,
            start=self.window.start,
            end=self.window.start + written,
            preroll=self.preroll,
            frames=self.frames,
            model_version=model_version(self.classifier) if self.crops else None,
            crops=self.crops,
            cpu_s={k: round(v, 4) for k, v in cpu.items()},
            wall_s=round(time.perf_counter() - started, 3),
            peak_rss_mib=round(now.ru_maxrss / 1024, 1),
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )


def run_batch(
    storage: LocalStorage,
    job_id: str,
    batch_index: int,
    plan: Plan,
    detector: FaceDetector,
    classifier: EmotionClassifier,
    overlay: EmojiOverlay,
    settings: WorkerSettings,
    fence=None,
) -> BatchRecord:
    """Analyse, draw and encode one batch: writes pieces/<batch>.mp4 and batches/<batch>.json. `fence` (a
    fencing check) runs before each is put in place and may raise to stop that."""
    return BatchPass(plan, batch_index, detector, classifier, overlay, settings).run(storage, job_id, fence)
