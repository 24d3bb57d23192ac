"""`emoji-video`: the service from a terminal.

    emoji-video process a.mp4 b.mov --out results/     upload, follow, download (one progress bar per file)
    emoji-video submit a.mp4 | --from-url URL          queue and print the job ids
    emoji-video status|download|delete JOB_ID...       one job at a time, or several
    emoji-video list                                   your recent jobs

The service's address comes from --url or EMOJI_API_URL, the API key from --api-key or EMOJI_API_KEY.
--json prints what the API answered, for scripts. The exit status is 0 only when every file (or job) went
well; an error from the API is shown as its message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

from tqdm import tqdm

from emoji_video_client.client import DEFAULT_URL, Client, ClientError, JobFailed

STYLES = ("badge", "cover")
MAX_PARALLEL = 4


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2, like argparse's own errors)."""


@dataclass
class Outcome:
    """What became of one input (a file or a URL)."""

    source: str
    job_id: str | None = None
    status: str = "not submitted"
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emoji-video", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help=f"the service's address (default: $EMOJI_API_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key (default: $EMOJI_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (for scripts)")
    p.add_argument("-v", "--verbose", action="store_true", help="say when a request is retried")
    commands = p.add_subparsers(dest="command", required=True)

    def with_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("files", nargs="*", type=Path, help="video files")
        sub.add_argument(
            "--from-url",
            action="append",
            default=[],
            metavar="URL",
            help="a video the service fetches itself (may be repeated)",
        )
        sub.add_argument(
            "--style", choices=STYLES, help="badge (beside the face, default) or cover (over it)"
        )
        sub.add_argument(
            "--labels", action="store_true", default=None, help="write the emotion under each emoji"
        )

    process = commands.add_parser("process", help="upload, wait, download the video and timelines")
    with_options(process)
    process.add_argument("--out", type=Path, default=Path("results"), help="folder for the results")
    with_options(commands.add_parser("submit", help="queue and print the job ids"))
    for name, text in (("status", "show jobs"), ("delete", "delete jobs and their files")):
        commands.add_parser(name, help=text).add_argument("job_ids", nargs="+")
    download = commands.add_parser("download", help="save finished jobs' video and timelines")
    download.add_argument("job_ids", nargs="+")
    download.add_argument("--out", type=Path, default=Path("results"))
    commands.add_parser("list", help="your recent jobs").add_argument("--limit", type=int)
    return p


class Bars:
    """One tqdm bar per input, on stderr: bytes uploaded, then the job's progress in percent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.lock, self.next = enabled, Lock(), 0

    def new(self, name: str, total: int) -> tqdm:
        with self.lock:
            position, self.next = self.next, self.next + 1
        return tqdm(
            total=total,
            desc=name[:30],
            unit="B",
            unit_scale=True,
            position=position,
            leave=True,
            disable=not self.enabled,
            file=sys.stderr,
        )


def follow(bar: tqdm) -> Callable[[dict], None]:
    """An on_update for Client.wait that turns the bar into the job's progress."""

    def update(job: dict) -> None:
        if bar.unit != "%":
            bar.reset(total=100)
            bar.unit, bar.unit_scale = "%", False
            bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
        bar.set_postfix_str(job["status"], refresh=False)
        bar.n = round(job["progress"] * 100)
        bar.refresh()

    return update


def process_one(client: Client, source: str, is_url: bool, args, bars: Bars, stem: str | None) -> Outcome:
    outcome = Outcome(source)
    size = 0 if is_url else Path(source).stat().st_size
    bar = bars.new(Path(source).name if not is_url else source.rsplit("/", 1)[-1], size)
    try:
        if is_url:
            created = client.submit_url(source, style=args.style, labels=args.labels)
        else:
            created = client.submit(source, style=args.style, labels=args.labels, on_bytes=bar.update)
        outcome.job_id, outcome.status = created["id"], created["status"]
        if args.command == "submit":
            return outcome
        job = client.wait(created["id"], on_update=follow(bar))
        outcome.status = job["status"]
        if job["status"] == "failed":
            raise JobFailed(job)
        saved = client.download(created["id"], args.out, stem=stem)
        outcome.files = {name: str(path) for name, path in saved.items()}
    except (ClientError, OSError) as exc:
        outcome.error = str(exc)
    finally:
        bar.close()
    return outcome


def unique_stems(files: list[Path]) -> list[str]:
    """Result names from the files' stems; a.mp4 and a.mov become a-mp4 and a-mov, not one overwriting."""
    stems = [f.stem for f in files]
    return [f"{f.stem}-{f.suffix.lstrip('.')}" if stems.count(f.stem) > 1 else f.stem for f in files]


def run_inputs(client: Client, args) -> list[Outcome]:
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    if not args.files and not args.from_url:
        raise UsageError("give at least one video file or --from-url URL")
    inputs = [(str(f), False, stem) for f, stem in zip(args.files, unique_stems(args.files), strict=True)]
    inputs += [(url, True, None) for url in args.from_url]
    bars = Bars(enabled=not args.json)
    with ThreadPoolExecutor(min(len(inputs), MAX_PARALLEL)) as pool:
        futures = [
            pool.submit(process_one, client, src, is_url, args, bars, stem) for src, is_url, stem in inputs
        ]
        return [f.result() for f in futures]


def report(outcomes: list[Outcome], as_json: bool) -> None:
    if as_json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=2))
        return
    for o in outcomes:
        if o.error:
            print(f"{o.source}: failed: {o.error}", file=sys.stderr)
        elif o.files:
            print(f"{o.source}: done")
            for path in o.files.values():
                print(f"  {path}")
        else:
            print(f"{o.source}: job {o.job_id} {o.status}")


def per_job(client: Client, args) -> int:
    """status, download and delete: each job id in turn; the exit status says whether all went well."""
    failures, answers = 0, []
    for job_id in args.job_ids:
        try:
            if args.command == "status":
                job = client.job(job_id)
                answers.append(job)
                if not args.json:
                    print(f"{job_id}  {job['status']:<9} {job['progress']:>4.0%}  {job['filename']}")
                    if job.get("error"):
                        print(f"  {job['error']['message']}")
            elif args.command == "download":
                saved = client.download(job_id, args.out)
                answers.append({"id": job_id, "files": {k: str(v) for k, v in saved.items()}})
                if not args.json:
                    print("\n".join(f"{job_id}: {path}" for path in saved.values()))
            else:
                client.delete(job_id)
                answers.append({"id": job_id, "deleted": True})
                if not args.json:
                    print(f"{job_id}: deleted")
        except ClientError as exc:
            failures += 1
            answers.append({"id": job_id, "error": str(exc)})
            print(f"{job_id}: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(answers, indent=2))
    return 1 if failures else 0


def list_jobs(client: Client, args) -> int:
    jobs = client.jobs(args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
    for job in [] if args.json else jobs:
        when = job["created_at"][:19].replace("T", " ")
        print(f"{job['id']}  {job['status']:<9} {job['progress']:>4.0%}  {when}  {job['filename']}")
    return 0


def main(argv: list[str] | None = None, transport=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR, format="%(message)s")
    try:
        with Client(args.url, args.api_key, transport=transport) as client:
            if args.command in ("process", "submit"):
                outcomes = run_inputs(client, args)
                report(outcomes, args.json)
                return 0 if all(o.ok for o in outcomes) else 1
            if args.command == "list":
                return list_jobs(client, args)
            return per_job(client, args)
    except ClientError as exc:
        print(f"emoji-video: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"emoji-video: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emoji-video: interrupted; jobs already queued go on (see `emoji-video list`)", file=sys.stderr)
        return 130
