"""What the API sends and receives; the job record itself is `common.jobs.Job`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from common.jobs import Job, JobError, JobStatus, JobWarning


class JobLinks(BaseModel):
    self: str
    video: str
    timeline: str
    timeline_csv: str
    events: str
    page: str

    @classmethod
    def for_job(cls, job_id: str) -> JobLinks:
        base = f"/api/v1/jobs/{job_id}"
        return cls(
            self=base,
            video=f"{base}/video",
            timeline=f"{base}/timeline",
            timeline_csv=f"{base}/timeline.csv",
            events=f"{base}/events",
            page=f"/jobs/{job_id}",
        )


class JobCreated(BaseModel):
    """The answer to an accepted upload."""

    id: str
    status: JobStatus
    links: JobLinks


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    status: JobStatus
    filename: str
    progress: float = Field(ge=0.0, le=1.0)
    frames_done: int
    frames_total: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    video: dict | None = Field(default=None, description="what ffprobe found in the upload")
    warnings: list[JobWarning] = Field(
        default=[], description="what went less than well in a job that still succeeded (e.g. frames lost)"
    )
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        data = job.model_dump(include=set(cls.model_fields) - {"links"})
        return cls(**data, links=JobLinks.for_job(job.id))


class JobsPublic(BaseModel):
    jobs: list[JobPublic]


class LiveLimits(BaseModel):
    max_frame_bytes: int
    timeout_s: float
    max_clients: int


class Limits(BaseModel):
    """What the pages check before sending."""

    max_upload_bytes: int
    accepted_formats: list[str]
    live: LiveLimits


class Health(BaseModel):
    status: str
    redis: bool
