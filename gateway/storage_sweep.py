"""Removing the files of jobs that Redis has forgotten: a job's record expires `job_ttl_s` after it ends,
and without a record its files can no longer be reached through the API, so they only fill the disk.
The gateway, which makes the folders and deletes them on request, sweeps the rest now and then."""

from __future__ import annotations

import asyncio
import logging
import time

from common.jobs import JobStore
from common.storage import Storage

log = logging.getLogger(__name__)


def sweep_orphaned_files(storage: Storage, store: JobStore, grace_s: float) -> list[str]:
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


async def sweep_forever(storage: Storage, store: JobStore, interval_s: float, grace_s: float) -> None:
    """Sweep now and every `interval_s`; in a thread, as a big storage folder takes a while to walk."""
    while True:
        try:
            await asyncio.to_thread(sweep_orphaned_files, storage, store, grace_s)
        except Exception:  # Redis down or a disk error: try again next time, the gateway carries on
            log.warning("storage sweep failed; next try in %.0f s", interval_s, exc_info=True)
        await asyncio.sleep(interval_s)
