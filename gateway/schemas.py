"""What the API sends and receives; the job record itself is `common.jobs.Job`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from common.jobs import Job, JobError, JobStatus, JobWarning
from common.render_options import RenderOptions
from common.url_guard import MAX_URL_CHARS


class JobLinks(BaseModel):
    self: str
    video: str
    timeline: str
    timeline_csv: str
    events: str
    page: str
    # A photo job's result: the photo with its emoji, in the upload's format (null for a video job).
    image: str | None = None

    @classmethod
    def for_job(cls, job_id: str, media: dict | None = None) -> JobLinks:
        base = f"/api/v1/jobs/{job_id}"
        return cls(
            self=base,
            image=f"{base}/image" if (media or {}).get("kind") == "image" else None,
            video=f"{base}/video",
            timeline=f"{base}/timeline",
            timeline_csv=f"{base}/timeline.csv",
            events=f"{base}/events",
            page=f"/jobs/{job_id}",
        )


class UrlJob(BaseModel):
    """A job from a video at a URL (POST /api/v1/jobs as JSON) instead of an uploaded file."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_CHARS, description="https:// address of the video; fetched once")
    callback_url: str | None = Field(
        default=None, max_length=MAX_URL_CHARS, description="POSTed the job when it succeeds or fails"
    )
    style: str | None = Field(default=None, description="badge (default) or cover")
    labels: bool | None = Field(default=None, description="the emotion's name under each emoji")

    def options(self) -> RenderOptions:
        return RenderOptions.from_fields(self.style, self.labels)


class JobCreated(BaseModel):
    """The answer to an accepted upload."""

    id: str
    status: JobStatus
    links: JobLinks


class WebhookAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null when it did not answer")
    error: str | None = Field(description="why the attempt counts as failed; null when delivered")
    duration_ms: float


class WebhookState(BaseModel):
    """The deliveries of the job's callback_url."""

    url: str
    status: str = Field(description="pending, retrying, delivered or failed (gave up after 24 h)")
    attempts: list[WebhookAttempt]


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
    video: dict | None = Field(
        default=None,
        description="what the upload is: a video as ffprobe found it, or a photo (kind 'image': format, "
        "width, height, orientation, has_alpha) as its header says",
    )
    warnings: list[JobWarning] = Field(
        default=[], description="what went less than well in a job that still succeeded (e.g. frames lost)"
    )
    webhook: WebhookState | None = Field(default=None, description="only for a job with a callback_url")
    options: RenderOptions = Field(default=RenderOptions(), description="how the emoji are drawn")
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job, webhook: dict | None = None) -> JobPublic:
        data = job.model_dump(include=set(cls.model_fields) - {"links", "webhook"})
        return cls(**data, webhook=webhook, links=JobLinks.for_job(job.id, job.video))


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
    # Photos (JPEG, PNG, WebP, HEIC/HEIF where installed): one-frame jobs, the result in the same format.
    photo_formats: list[str] = []
    live: LiveLimits


class Health(BaseModel):
    status: str
    redis: bool


class LimitsPublic(BaseModel):
    """0 means no limit."""

    max_active_jobs: int
    uploads_per_minute: int
    max_stored_bytes: int
    max_live_viewers: int


class Usage(BaseModel):
    active_jobs: int
    stored_bytes: int


class Me(BaseModel):
    """Who the service thinks you are, your limits and what you use of them."""

    owner: str = Field(description="key:<id>, anon:<session> (a browser) or local (the shared local owner)")
    kind: str
    name: str
    limits: LimitsPublic
    usage: Usage
    webhook_secret: str = Field(description="signs your webhooks (HMAC-SHA256); keep it secret")


class SignedIn(BaseModel):
    """The owner a browser now acts as, after signing in with a key."""

    owner: str = Field(description="key:<id>")
    name: str = Field(description="the key's name")
