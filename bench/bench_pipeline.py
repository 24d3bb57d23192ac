"""The whole service against a plain transcode of the same clip, with 1 and with 2 worker processes.

Starts its own stack on free ports (Redis, the model server with the shipped model, one Celery worker with N
pool processes, the gateway; the tests' helpers), then for each N: uploads the clip, waits for the result.
Prints, in one run:

- wall time from upload accepted to result ready, against `ffmpeg -i in.mp4 -c:v libx264 -preset veryfast
  -c:a copy out.mp4` on the same file (the project's goal: 1.2x);
- CPU seconds per frame of the whole stack (worker processes, model server, gateway, Redis), so a reader can
  estimate N machines: wall ~ frames x CPU s/frame / cores, plus the serial plan and finish steps;
- each worker process's peak RSS (VmHWM), and the gateway's before and after the upload streamed in;
- CPU seconds per stage, as the worker's batches measured and reported them with the job (timeline.json,
  "processing").

    .venv/bin/python -m bench.bench_pipeline [--seconds 60] [--size 1280x720] [--workers 1,2]

Clips are made once and kept in var/bench/ (`pyfeat_WolfgangLanger_Pexels.mp4` looped, scaled, 30 fps, AAC).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CLIP = REPO_ROOT.parent / "shared" / "data" / "media" / "pyfeat_WolfgangLanger_Pexels.mp4"
CLIP_DIR = REPO_ROOT / "var" / "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def make_clip(path: Path, seconds: int, size: str = "1280x720") -> Path:
    """Loop a shared face clip (or the astronaut photo when it is missing) to `size`, 30 fps, with audio.

    Clips longer than a minute are the one-minute clip repeated (stream copy): encoding ten minutes of 1080p
    at x264's medium preset would take longer on 2 cores than the benchmark itself."""
    if path.exists():
        return path
    if seconds > 60 and seconds % 60 == 0:
        minute = make_clip(path.with_name(f"bench-{size}-60s.mp4"), 60, size)
        listing = path.with_suffix(".txt")
        listing.write_text(f"file '{minute.name}'\n" * (seconds // 60))
        tmp = path.with_name(f".{path.name}")
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "concat",
                "-safe",
                "0",
                "-i",
                str(listing),
                "-c",
                "copy",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(tmp),
            ],
            check=True,
        )
        listing.unlink()
        tmp.rename(path)
        return path
    if SHARED_CLIP.exists():
        source = ["-stream_loop", "-1", "-i", str(SHARED_CLIP)]
    else:
        from tests.conftest import make_astronaut_video

        still = make_astronaut_video(path.with_name("astronaut.mp4"), seconds=5)
        source = ["-stream_loop", "-1", "-i", str(still)]
    width, height = size.split("x")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}")
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            *source,
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-t",
            str(seconds),
            "-vf",
            f"scale={width}:{height},fps=30",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "mp4",
            str(tmp),
        ],
        check=True,
    )
    tmp.rename(path)
    return path


def plain_transcode(path: Path) -> tuple[float, float]:
    """(wall s, CPU s) of the plain transcode the goal is measured against."""
    out = path.with_name(f"plain-{path.name}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(path),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-c:a",
            "copy",
            str(out),
        ],
        check=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink(missing_ok=True)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += tree.get(current, [])
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and of their children they have waited for)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_job(url: str, clip: Path) -> tuple[float, dict]:
    """Upload, then follow the job's server-sent events until it ends, as the job page does: polling the
    status ten times a second would spend the gateway's CPU, on the cores being measured, for nothing."""
    with clip.open("rb") as handle:
        reply = httpx.post(
            f"{url}/api/v1/jobs", files={"file": (clip.name, handle, "video/mp4")}, timeout=600
        )
    reply.raise_for_status()
    accepted = time.perf_counter()
    job_id = reply.json()["id"]
    job = reply.json()
    with httpx.stream("GET", f"{url}/api/v1/jobs/{job_id}/events", timeout=600) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                job = json.loads(line[len("data: ") :])
                if job["status"] in ("succeeded", "failed"):
                    break
    elapsed = time.perf_counter() - accepted
    if job["status"] != "succeeded":
        raise SystemExit(f"job ended {job['status']}: {job.get('error')}")
    timeline = httpx.get(f"{url}/api/v1/jobs/{job_id}/timeline", timeout=120).json()
    return elapsed, timeline


def measure(clip: Path, workers: list[int], logs: Path) -> list[dict]:
    from tests.conftest import (
        MODEL_BASE_PATH,
        PYTHON,
        ServiceProcess,
        _model_available,
        _port_ready,
        free_port,
        start_gateway,
        start_worker,
    )

    redis_port, model_port = free_port(), free_port()
    redis = ServiceProcess(
        "redis",
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        dict(os.environ),
        logs,
        _port_ready(redis_port),
    ).start(30)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    model = ServiceProcess(
        "model_server",
        [
            PYTHON,
            "-m",
            "model_server",
            "--port",
            str(model_port),
            "--rest_api_port",
            "0",
            "--model_name",
            "emotion",
            "--model_base_path",
            str(MODEL_BASE_PATH),
        ],
        env,
        logs,
        _model_available(model_port),
    ).start(180)
    rows = []
    try:
        for n in workers:
            storage = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=CLIP_DIR))
            stack = {
                **env,
                "EMOJI_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{n}",
                "EMOJI_STORAGE_DIR": str(storage),
                "EMOJI_MODEL_SERVER_ADDRESS": f"127.0.0.1:{model_port}",
            }
            worker = start_worker(stack, logs, name=f"worker-{n}", queues="video", concurrency=n)
            gateway, url = start_gateway(stack, logs, name=f"gateway-{n}")
            try:
                time.sleep(2)  # let the pool processes settle after start-up
                pool = [p for p in process_tree(worker.proc.pid) if p != worker.proc.pid]
                # Where the stack's CPU goes, by process (the pool's includes the ffprobe and ffmpeg it ran).
                groups = {
                    "worker pool processes": pool,
                    "Celery's main worker process": [worker.proc.pid],
                    "model server": [model.proc.pid],
                    "gateway (upload, status polls)": [gateway.proc.pid],
                    "Redis": [redis.proc.pid],
                }
                gateway_before = peak_rss_mib(gateway.proc.pid)
                before = {name: cpu_s(pids) for name, pids in groups.items()}
                wall, timeline = run_job(url, clip)
                by_process = {name: cpu_s(pids) - before[name] for name, pids in groups.items()}
                rows.append(
                    {
                        "workers": n,
                        "wall": wall,
                        "frames": len(timeline["frames"]),
                        "stack_cpu": sum(by_process.values()),
                        "by_process": by_process,
                        "worker_rss": [peak_rss_mib(p) for p in pool],
                        "gateway_rss": (gateway_before, peak_rss_mib(gateway.proc.pid)),
                        "processing": timeline["processing"],
                    }
                )
            finally:
                gateway.stop()
                worker.stop()
                shutil.rmtree(storage, ignore_errors=True)
    finally:
        model.stop()
        redis.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--workers", default="1,2", help="worker pool sizes to measure, comma-separated")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    clip = make_clip(CLIP_DIR / f"bench-{args.size}-{args.seconds}s.mp4", args.seconds, args.size)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    plain_wall, plain_cpu = plain_transcode(clip)
    rows = measure(clip, [int(n) for n in args.workers.split(",")], logs)
    label = f"{args.seconds} s {args.size} 30 fps + AAC"
    print(
        f"plain transcode: {plain_wall:.1f} s wall, {plain_cpu:.1f} s CPU; load average before: "
        f"{os.getloadavg()[0]:.1f}; logs in {logs}\n"
    )
    print(
        "| clip | frames | worker processes | plain transcode | service (upload accepted → result ready) "
        "| ratio | stack CPU s/frame (plain: CPU s/frame) | peak RSS per worker process | gateway peak RSS |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        rss = ", ".join(f"{r:.0f}" for r in row["worker_rss"])
        g0, g1 = row["gateway_rss"]
        print(
            f"| {label} | {row['frames']} | {row['workers']} | {plain_wall:.1f} s | {row['wall']:.1f} s "
            f"| {row['wall'] / plain_wall:.2f}x | {row['stack_cpu'] / row['frames'] * 1000:.1f} ms "
            f"({plain_cpu / row['frames'] * 1000:.1f} ms) | {rss} MiB | {g0:.0f} → {g1:.0f} MiB |"
        )
    last = rows[-1]
    cpu = last["processing"]["cpu_s"]
    frames = last["frames"]
    print(f"\nCPU of the stack by process ({last['workers']} worker processes):\n")
    print("| process | CPU s | ms/frame |")
    print("|---|---:|---:|")
    for name, seconds in last["by_process"].items():
        print(f"| {name} | {seconds:.1f} | {seconds / frames * 1000:.2f} |")
    print(
        f"\nCPU per stage, as the worker reported it ({last['workers']} processes, "
        f"{last['processing']['batches']} batches):\n"
    )
    print("| stage | CPU s | ms/frame |")
    print("|---|---:|---:|")
    for stage, seconds in cpu.items():
        name = "**total (worker processes)**" if stage == "total" else stage
        print(f"| {name} | {seconds:.1f} | {seconds / frames * 1000:.2f} |")
    print(f"| plain transcode, for comparison | {plain_cpu:.1f} | {plain_cpu / frames * 1000:.2f} |")


if __name__ == "__main__":
    main()
