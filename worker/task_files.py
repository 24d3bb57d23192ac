"""A task's view of its job's files when they live in an object store: a private scratch folder.

The pipeline asks for paths, as with local storage. The first time it asks for a file, the file is
fetched from the store if the store has it (the upload, the plan, other batches' analysis, the pieces);
otherwise the path is simply where the task may write it. `publish()` uploads every file the task wrote or
changed, before the task records its progress and enqueues the next step, so the next step, on whatever
machine, finds them. The caller removes the folder when the task ends, however it ends.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from common.storage import S3Storage, check_job_id

log = logging.getLogger(__name__)


class TaskFiles:
    local = True  # to the pipeline, these are local paths

    def __init__(self, remote: S3Storage, folder: Path) -> None:
        self.remote = remote
        self.folder = folder
        # name -> (size, mtime_ns) as fetched; names looked for and not found are remembered too.
        self._fetched: dict[str, tuple[int, int]] = {}
        self._missing: set[str] = set()
        self.fetch_seconds = 0.0

    def path(self, job_id: str, name: str) -> Path:
        target = self.folder / check_job_id(job_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        key = f"{job_id}/{name}"
        if not target.exists() and key not in self._fetched and key not in self._missing:
            started = time.perf_counter()
            if self.remote.fetch(job_id, name, target):
                stat = target.stat()
                self._fetched[key] = (stat.st_size, stat.st_mtime_ns)
            else:
                self._missing.add(key)
            self.fetch_seconds += time.perf_counter() - started
        return target

    def exists(self, job_id: str, name: str) -> bool:
        return (self.folder / job_id / name).exists() or self.remote.exists(job_id, name)

    def delete_job(self, job_id: str) -> None:
        self.remote.delete_job(job_id)

    def written(self) -> list[tuple[str, str, Path]]:
        """(job id, name, path) of every file created or changed here since it was fetched."""
        out = []
        for path in sorted(self.folder.rglob("*")):
            parts = path.relative_to(self.folder).parts
            if not path.is_file() or any(part.startswith(".") for part in parts):
                continue  # dot-names are writes in progress (tempfile + rename)
            job_id, name = parts[0], "/".join(parts[1:])
            stat = path.stat()
            if self._fetched.get(f"{job_id}/{name}") != (stat.st_size, stat.st_mtime_ns):
                out.append((job_id, name, path))
        return out

    def publish(self) -> list[str]:
        """Upload what the task wrote; returns the names uploaded."""
        names = []
        for job_id, name, path in self.written():
            self.remote.put_file(job_id, name, path)
            stat = path.stat()
            self._fetched[f"{job_id}/{name}"] = (stat.st_size, stat.st_mtime_ns)
            names.append(name)
        if names:
            log.info("job files uploaded: %s", ", ".join(names))
        return names
