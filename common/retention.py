"""Removing the files of jobs that Redis has forgotten: a job's record expires `job_ttl_s` after it ends,
and without a record its files can no longer be reached through the API, so they only fill the disk."""

from __future__ import annotations

import logging
import time

from common.jobs import JobStore
from common.storage import LocalStorage

log = logging.getLogger(__name__)


def sweep_orphaned_files(storage: LocalStorage, store: JobStore, grace_s: float) -> list[str]:
    """Delete the folders of jobs with no record in Redis and nothing written for `grace_s` seconds.

    The grace period spares an upload still streaming in, whose record is made once the file is checked.
    A Redis error stops the sweep (it raises) rather than reading "no record" for every job.
    """
    removed = []
    cutoff = time.time() - grace_s
    for job_id in storage.job_ids():
        try:
            if store.exists(job_id) or storage.last_written(job_id) > cutoff:
                continue
        except FileNotFoundError:  # deleted meanwhile, e.g. by DELETE /api/v1/jobs/{id}
            continue
        storage.delete_job(job_id)
        removed.append(job_id)
    if removed:
        log.info("removed the files of %d expired jobs: %s", len(removed), ", ".join(removed))
    return removed
