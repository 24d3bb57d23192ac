"""The worker's private scratch folders: one per task, and one for the pool's metric files.

Names carry the id of the process that owns them (`task-<pid>-<random>`, `metrics-<pid>`), so the sweep
at worker start removes exactly the leftovers of processes that are gone (a SIGKILLed worker, a crashed
task) and never the folders of another worker sharing the same scratch directory. Nothing in here is
imported before prometheus_client learns where its multiprocess files go (worker/app.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

OWNED = re.compile(r"^(?:task|metrics)-(\d+)(?:-[0-9a-f]+)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep(root: Path) -> list[str]:
    """Remove the folders of dead processes, and this process's own (left by an earlier life with the
    same pid, e.g. pid 1 in a restarted container); called in the main process before the pool starts."""
    removed = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        match = OWNED.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("scratch: removed %d leftover folders of stopped processes under %s", len(removed), root)
    return removed


def metrics_dir(root: Path) -> Path:
    """A fresh, empty folder for prometheus_client's multiprocess files of this worker."""
    folder = root / f"metrics-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def task_dir(root: Path) -> Path:
    """A new folder for one task of this process; the caller removes it (see worker.tasks)."""
    folder = root / f"task-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder
