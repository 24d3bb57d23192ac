"""The model server through gRPC against the same SavedModel in process: faces/s and latency p50/p99.

Batch sizes 1, 16, 64 at client concurrency 1, 4, 16, through the worker's own client (EmotionClient);
then the SavedModel called in this process at the same batch sizes. Starts `python -m model_server` with
model_server/batching.config unless --address is given. Prints a markdown table; about a minute.

    .venv/bin/python -m bench.bench_model_server [--address HOST:PORT] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_BASE = REPO_ROOT / "model_server" / "models" / "emotion"
BATCHES = (1, 16, 64)
CONCURRENCIES = (1, 4, 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_base: Path, batching_file: Path | None) -> tuple[subprocess.Popen, str]:
    """`python -m model_server` on a free port, the way deploy/run-local.sh starts it."""
    port = _free_port()
    args = [
        sys.executable,
        "-m",
        "model_server",
        "--port",
        str(port),
        "--rest_api_port",
        "0",
        "--model_name",
        "emotion",
        "--model_base_path",
        str(model_base),
    ]
    if batching_file:
        args += ["--enable_batching", "--batching_parameters_file", str(batching_file)]
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"127.0.0.1:{port}"


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    values = np.asarray(latencies) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def run_load(call, batch: int, concurrency: int, seconds: float, warmup_s: float = 0.5):
    """`concurrency` threads calling `call(faces)` back to back; returns faces/s, p50 ms, p99 ms."""
    faces = np.random.default_rng(0).integers(0, 256, (batch, 48, 48, 1), dtype=np.uint8)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            while (now := time.perf_counter()) < stop_at:
                call(faces)
                done = time.perf_counter()
                if now >= measure_from:
                    latencies[index].append(done - now)
        except BaseException as exc:  # surfaced below: a benchmark with failed calls is no benchmark
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    flat = [x for per_thread in latencies for x in per_thread]
    p50, p99 = _percentiles(flat)
    return len(flat) * batch / seconds, p50, p99


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", help="a running server (default: start one)")
    parser.add_argument("--model-base", type=Path, default=MODEL_BASE)
    parser.add_argument("--batching-file", type=Path, default=REPO_ROOT / "model_server" / "batching.config")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from worker.model_client import EmotionClient

    versions = sorted(int(p.name) for p in args.model_base.glob("[0-9]*") if (p / "saved_model.pb").exists())
    if not versions:
        print(f"no SavedModel under {args.model_base}; export one first (python -m training export)")
        return 1
    process = None
    address = args.address
    if address is None:
        process, address = start_server(args.model_base, args.batching_file)
    import tensorflow as tf

    try:
        client = EmotionClient(address, timeout_s=30)
        version = client.wait_until_available(timeout_s=180)
        signature = tf.saved_model.load(str(args.model_base / str(version))).signatures["serving_default"]

        def in_process(faces: np.ndarray) -> np.ndarray:
            return signature(faces=tf.constant(faces))["probabilities"].numpy()

        in_process(np.zeros((1, 48, 48, 1), np.uint8))
        # In process before and after the gRPC rows (the server idles meanwhile); the better run is the
        # baseline, so that load from other processes on the machine cannot flatter the gRPC ratio.
        before = {batch: run_load(in_process, batch, 1, args.seconds / 2) for batch in BATCHES}
        rows = []
        for batch in BATCHES:
            for concurrency in CONCURRENCIES:
                rows.append(
                    ("gRPC", batch, concurrency, *run_load(client.predict, batch, concurrency, args.seconds))
                )
        client.close()
        after = {batch: run_load(in_process, batch, 1, args.seconds / 2) for batch in BATCHES}
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    baseline = {batch: max(before[batch], after[batch]) for batch in BATCHES}
    for batch in BATCHES:
        rows.append(("in process", batch, 1, *baseline[batch]))

    print(
        f"\nmodel emotion version {version}; {os.cpu_count()} CPU cores; batching {args.batching_file.name}"
    )
    print(f"{args.seconds:.0f} s per row after 0.5 s warm-up; latency per call (one call = `batch` faces)")
    # Other work on the machine shows up in the tails: the load average says how much there was.
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + "\n")
    print("| path | batch | concurrency | faces/s | p50 ms | p99 ms | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, batch, concurrency, rate, p50, p99 in rows:
        ratio = rate / baseline[batch][0]
        print(f"| {path} | {batch} | {concurrency} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {ratio:.0%} |")
    best64 = max(rate for path, batch, _, rate, _, _ in rows if path == "gRPC" and batch == 64)
    p99_1 = next(p99 for path, batch, c, _, _, p99 in rows if path == "gRPC" and batch == 1 and c == 1)
    print(
        f"\ngRPC at batch 64: {best64 / baseline[64][0]:.0%} of in-process throughput (target >= 80%); "
        f"batch-1 p99 at concurrency 1: {p99_1:.2f} ms (target <= 10 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
