"""A job's plan: the probed video, every frame's time, the keyframes, and the batches that split the work.

Computed once by the plan step and stored as plan.json; every batch reads it to know which frames are its
own, where to start decoding (a keyframe) and which frames before its first one it analyses as pre-roll.
"""

from __future__ import annotations

import bisect
import logging
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from common import job_files
from common.errors import VideoError
from common.media import VideoInfo, frame_index, probe, stream_timing
from common.media_policy import MediaLimits
from common.render_options import RenderOptions
from common.storage import LocalStorage
from worker.settings import WorkerSettings
from worker.video_io import DecodeWindow, even

logger = logging.getLogger(__name__)

# Frame times are rounded to microseconds: a pre-roll "of 1000 ms" must not lose a frame to rounding.
TIME_SLACK_MS = 0.5


class Plan(BaseModel):
    info: VideoInfo
    timestamps_ms: list[float]
    keyframes: list[int]
    batches: list[tuple[int, int]]
    # Where the video stream starts relative to the container (the join keeps audio in sync with it).
    video_start_s: float
    container_start_s: float
    full_range: bool = False
    output_size: tuple[int, int]
    # The file's timestamps repeated or went back (e.g. an MPEG-TS joined to itself): they were counted
    # afresh from the frame rate, and the job decodes in one batch (seeking by time would be ambiguous).
    timestamps_repaired: bool = False
    # How the emoji are drawn (the job's choice at upload): every batch draws the same way.
    options: RenderOptions = RenderOptions()

    @property
    def frames(self) -> int:
        return len(self.timestamps_ms)

    def window(self, batch_index: int, preroll_ms: float) -> DecodeWindow:
        """The decode window of a batch with `preroll_ms` of pre-roll before its first frame."""
        start, end = self.batches[batch_index]
        times = self.timestamps_ms
        first = bisect.bisect_left(times, times[start] - preroll_ms - TIME_SLACK_MS, 0, start) if start else 0
        before = [k for k in self.keyframes if k <= first]
        keyframe = before[-1] if before else 0
        # A keyframe one frame before the pre-roll (the pre-roll is not a whole number of frames) is decoded
        # anyway: analyse it too.
        return DecodeWindow(keyframe, keyframe if first - keyframe <= 1 else first, start, end)


def plan_batches(
    times_ms: list[float], keyframes: list[int], size: int, preroll_ms: float
) -> list[tuple[int, int]]:
    """Frame ranges of about `size` frames (from half to three times that).

    A batch decodes from the keyframe at or before its pre-roll; cutting `preroll_ms` after a keyframe makes
    the pre-roll start on that keyframe, so nothing is decoded in vain. Where no keyframe is near, the cut
    falls at `size` and the batch decodes from the keyframe before (frames no other frame refers to are
    skipped there)."""
    frames = len(times_ms)
    cuts = sorted(
        {
            bisect.bisect_left(times_ms, times_ms[k] + preroll_ms - TIME_SLACK_MS)
            for k in keyframes
            if 0 < k < frames
        }
        - {frames}
    )
    batches: list[tuple[int, int]] = []
    start = 0
    while start < frames:
        target = start + size
        if target >= frames:
            end = frames
        else:
            near = [c for c in cuts if start + max(size // 2, 1) <= c <= start + 3 * size]
            end = min(near, key=lambda c: (abs(c - target), c)) if near else target
        batches.append((start, end))
        start = end
    return batches


def plan_job(
    storage: LocalStorage, job_id: str, settings: WorkerSettings, options: RenderOptions | None = None
) -> Plan:
    """Probe the upload, index its frames, split them into batches; writes plan.json (with the job's render
    `options`)."""
    source = storage.path(job_id, job_files.INPUT)
    if not source.exists():
        raise VideoError("the uploaded file is missing; upload the video again")
    # Three ffprobe runs, at once: each is mostly its own start-up and a read of the file, and nothing else
    # of the job can start before the plan is written (about 0.3 s less wall for a minute of 720p).
    with ThreadPoolExecutor(max_workers=3) as pool:
        # The gateway checked the limits already; checked again here as the plan is what the work will cost.
        probed = pool.submit(probe, source, MediaLimits.from_settings(settings))
        indexed = pool.submit(frame_index, source)
        timed = pool.submit(stream_timing, source)
        info = probed.result()
        timestamps, keyframes = indexed.result()
        timing = timed.result()
    if not timestamps:
        raise VideoError("the video has no frames; upload a video that plays")
    repaired = not strictly_increasing(timestamps)
    if repaired:
        timestamps = [round(timestamps[0] + i * 1000.0 / info.fps, 3) for i in range(len(timestamps))]
    plan = Plan(
        info=info,
        timestamps_ms=timestamps,
        keyframes=keyframes,
        batches=(
            [(0, len(timestamps))]
            if repaired
            else plan_batches(timestamps, keyframes, settings.batch_frames, settings.preroll_ms)
        ),
        video_start_s=timing.video_start_s,
        container_start_s=timing.container_start_s,
        full_range=timing.full_range,
        output_size=(even(info.width), even(info.height)),
        timestamps_repaired=repaired,
        options=options or RenderOptions(),
    )
    write_plan(storage, job_id, plan)
    logger.info(
        "job %s: %dx%d %.3f fps, %d frames in %d batches",
        job_id,
        info.width,
        info.height,
        info.fps,
        plan.frames,
        len(plan.batches),
    )
    return plan


def strictly_increasing(times: list[float]) -> bool:
    """Whether every frame has its own time (sorted packet times repeat when a stream restarts its clock)."""
    return all(b > a for a, b in zip(times, times[1:], strict=False))


def write_plan(storage: LocalStorage, job_id: str, plan: Plan) -> None:
    from worker.records import write_atomically

    write_atomically(storage.path(job_id, job_files.PLAN), plan.model_dump_json())


def load_plan(storage: LocalStorage, job_id: str) -> Plan:
    return Plan.model_validate_json(storage.path(job_id, job_files.PLAN).read_text())
