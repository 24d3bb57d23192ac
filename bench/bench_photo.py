"""Photo jobs: the worker's time for a 12-megapixel JPEG, and whether a photo and the same picture made into a
video give every face the same emoji (one code path).

Runs in this process what the `photo_job` task runs (worker.photo.run_photo, then the timeline), against a
model server started here with the shipped model (`python -m model_server`, as deploy/run-local.sh starts
it) and the worker's own detector, client and overlay; the queue and the gateway add milliseconds, not
seconds. The 12 MP JPEG is a shared group photo scaled to 4000x3000 (a phone's usual size), or the astronaut
when ../shared is missing. The agreement part makes each shared photo a 2-second H.264 clip and runs it
through the video steps (plan, batches, finish) in this process too, then compares the last frame's faces.

    .venv/bin/python -m bench.bench_photo [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data" / "media"
PHOTOS = (
    "pyfeat_multi_face.jpg",
    "face_classification_test_image.jpg",
    "deepface_couple.jpg",
    "face_recognition_two_people.jpg",
)
MODEL_BASE = REPO_ROOT / "model_server" / "models" / "emotion"


def twelve_megapixels(path: Path) -> Path:
    from PIL import Image

    source = SHARED / "face_classification_test_image.jpg"
    if source.exists():
        image = Image.open(source).convert("RGB")
    else:
        from skimage import data

        image = Image.fromarray(data.astronaut())
    image.resize((4000, 3000), Image.Resampling.LANCZOS).save(path, quality=92)
    return path


class Worker:
    """What one worker process holds: settings, detector, emotion client, overlay, and a job folder."""

    def __init__(self, address: str, root: Path) -> None:
        from common.storage import LocalStorage
        from worker.detection import make_detector
        from worker.model_client import EmotionClient
        from worker.overlay import EmojiOverlay
        from worker.settings import WorkerSettings

        self.settings = WorkerSettings(model_server_address=address, storage_dir=root)
        self.storage = LocalStorage(root)
        self.detector = make_detector(self.settings)
        self.classifier = EmotionClient.from_settings(self.settings)
        self.classifier.wait_until_available(timeout_s=180)
        self.overlay = EmojiOverlay("badge", self.settings.overlay_scale)

    def upload(self, job_id: str, source: Path) -> None:
        shutil.copyfile(source, self.storage.path(job_id, "input"))

    def photo_job(self, job_id: str) -> tuple[float, float, dict]:
        """(wall s, CPU s of the process, the stages' CPU s) of what the photo task does."""
        from worker.photo import run_photo
        from worker.steps import write_job_timeline

        wall, cpu = time.perf_counter(), time.process_time()
        _, plan, record = run_photo(
            self.storage, job_id, self.detector, self.classifier, self.overlay, self.settings
        )
        write_job_timeline(self.storage, job_id, plan, self.settings, self.settings.model_name)
        return time.perf_counter() - wall, time.process_time() - cpu, record.cpu_s

    def video_job(self, job_id: str) -> None:
        from worker import steps

        plan = steps.plan_job(self.storage, job_id, self.settings)
        for index in range(len(plan.batches)):
            steps.run_batch(
                self.storage, job_id, index, plan, self.detector, self.classifier, self.overlay, self.settings
            )
        steps.finish_job(self.storage, job_id, plan, self.settings, self.settings.model_name)

    def timeline(self, job_id: str) -> dict:
        import json

        return json.loads(self.storage.path(job_id, "timeline.json").read_text())


def timing(worker: Worker, source: Path, repeats: int) -> None:
    from PIL import Image

    width, height = Image.open(source).size
    runs = []
    for i in range(repeats + 1):  # the first warms the caches (sprites, the gRPC channel) and is dropped
        worker.upload(f"t{i}", source)
        runs.append(worker.photo_job(f"t{i}"))
    runs = runs[1:]
    faces = len(worker.timeline("t1")["frames"][0]["faces"])
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    stages = {k: statistics.median(r[2][k] for r in runs) for k in runs[0][2]}
    print(
        f"\n{width}x{height} JPEG ({width * height / 1e6:.1f} MP, {source.stat().st_size / 1e6:.1f} MB), "
        f"{faces} faces; median of {repeats} runs after one warm-up; {os.cpu_count()} CPU cores, load "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + "\n"
    )
    print("| photo job | wall s | CPU s (process) | " + " | ".join(f"{k} CPU s" for k in stages) + " |")
    print("|---|---:|---:|" + "---:|" * len(stages))
    print(
        f"| 12 MP JPEG | {wall:.3f} | {cpu:.3f} | " + " | ".join(f"{v:.3f}" for v in stages.values()) + " |"
    )


def agreement(worker: Worker, folder: Path) -> None:
    from tests.photo_files import same_emoji, still_clip

    print("\n| shared photo | faces in the photo job | faces in the video's last frame | same emoji "
          "| near tie |")
    print("|---|---:|---:|---:|---:|")
    for name in PHOTOS:
        source = SHARED / name
        if not source.exists():
            print(f"| {name} | missing | | |")
            continue
        clip = still_clip(source, folder / f"{source.stem}.mp4")
        worker.upload(f"p-{source.stem}", source)
        worker.photo_job(f"p-{source.stem}")
        worker.upload(f"v-{source.stem}", clip)
        worker.video_job(f"v-{source.stem}")
        photo = worker.timeline(f"p-{source.stem}")["frames"][0]["faces"]
        video = worker.timeline(f"v-{source.stem}")["frames"][-1]["faces"]
        verdicts = [verdict for _, _, verdict in same_emoji(photo, video)]
        print(
            f"| {name} | {len(photo)} | {len(video)} | {verdicts.count('same')} of {len(video)} "
            f"| {verdicts.count('near tie')} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--address", help="a running model server (default: start one)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from bench.bench_model_server import start_server

    process, address = (
        (None, args.address)
        if args.address
        else start_server(MODEL_BASE, REPO_ROOT / "model_server" / "batching.config")
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-photo-"))
    try:
        worker = Worker(address, folder / "storage")
        timing(worker, twelve_megapixels(folder / "12mp.jpg"), args.repeats)
        agreement(worker, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
