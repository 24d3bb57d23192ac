"""Where a job's files live. A local directory now; the interface is what a shared store must provide."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    def path(self, job_id: str, name: str) -> Path:
        """A local path for the job's file `name` (parent folders exist); e.g. 'input', 'result.mp4'."""

    def exists(self, job_id: str, name: str) -> bool:
        """Whether the job's file `name` has been written."""

    def delete_job(self, job_id: str) -> None:
        """Remove every file of the job; no error if there are none."""


class LocalStorage:
    """All jobs under one directory, one folder each; on several machines this folder must be shared."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def path(self, job_id: str, name: str) -> Path:
        target = self.job_dir(job_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self, job_id: str, name: str) -> bool:
        return (self.job_dir(job_id) / name).exists()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def job_ids(self) -> list[str]:
        """Every job that has a folder here (dot-names are in-progress writes, not jobs)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def last_written(self, job_id: str) -> float:
        """When anything in the job's folder last changed (epoch seconds); an upload being streamed counts."""
        folder = self.job_dir(job_id)
        times = [folder.stat().st_mtime]
        times += [p.stat().st_mtime for p in folder.rglob("*")]
        return max(times)
