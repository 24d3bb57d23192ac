"""Where a job's files live: a local folder, or an S3-compatible object store (EMOJI_STORAGE_URL).

Both backends name a file by (job id, name), e.g. ('3f..', 'input'), ('3f..', 'result.mp4'). The local one
hands out paths in a folder every process must share. The object store shares nothing but the bucket: the
gateway streams uploads into it in parts, workers copy what a task needs into a private scratch folder
and upload what it wrote (worker/task_files.py), and downloads are read in ranges or presigned.

`python -m common.storage create-bucket` makes the bucket of EMOJI_STORAGE_URL (compose and the local
Kubernetes overlay run it once).
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from common.errors import StorageError, StorageUnavailable
from common.settings import CommonSettings


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Finish: the file exists, whole, only after this returns."""

    def abort(self) -> None:
        """Give up: nothing of it stays (never raises)."""


class Storage(Protocol):
    """What the gateway and the sweep use; `path` only where `local` is true."""

    local: bool

    def exists(self, job_id: str, name: str) -> bool: ...

    def size(self, job_id: str, name: str) -> int | None:
        """Bytes of the job's file `name`, None when it does not exist."""

    def writer(self, job_id: str, name: str) -> Writer: ...

    def has_job(self, job_id: str) -> bool:
        """Whether any file of the job exists."""

    def delete_job(self, job_id: str) -> None:
        """Remove every file of the job; no error if there are none."""

    def job_ids(self) -> list[str]: ...

    def last_written(self, job_id: str) -> float: ...


def check_job_id(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


class _FileWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close() or abort()

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def close(self) -> None:
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class LocalStorage:
    """All jobs under one directory, one folder each; on several machines this folder must be shared."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def path(self, job_id: str, name: str) -> Path:
        """A local path for the job's file `name` (parent folders exist)."""
        target = self.job_dir(job_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self, job_id: str, name: str) -> bool:
        return (self.job_dir(job_id) / name).exists()

    def size(self, job_id: str, name: str) -> int | None:
        try:
            return (self.job_dir(job_id) / name).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self, job_id: str, name: str) -> Writer:
        return _FileWriter(self.path(job_id, name))

    def has_job(self, job_id: str) -> bool:
        return self.job_dir(job_id).exists()

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


# --- S3 ----------------------------------------------------------------------------------------------

# Codes S3 services answer when the request was fine and the service was not: worth a retry later.
_RETRYABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeTooSkewed"}
_CREDENTIAL_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "InvalidToken", "ExpiredToken"}


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3Writer:
    """A multipart upload fed by write(): holds at most one part in memory, never touches the disk."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage, self.key = storage, key
        self.buffer = bytearray()
        self.parts: list[dict] = []
        self.upload_id: str | None = None

    def write(self, data: bytes) -> None:
        self.buffer += data
        part = self.storage.part_bytes
        while len(self.buffer) >= part:
            self._send(bytes(self.buffer[:part]))
            del self.buffer[:part]

    def _send(self, chunk: bytes) -> None:
        s = self.storage
        with s.errors(f"uploading {self.key}"):
            if self.upload_id is None:
                self.upload_id = s.client.create_multipart_upload(Bucket=s.bucket, Key=self.key)["UploadId"]
            number = len(self.parts) + 1
            reply = s.client.upload_part(
                Bucket=s.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=chunk
            )
        self.parts.append({"PartNumber": number, "ETag": reply["ETag"]})

    def close(self) -> None:
        s = self.storage
        if self.upload_id is None:  # smaller than one part: a single PUT
            with s.errors(f"uploading {self.key}"):
                s.client.put_object(Bucket=s.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
        with s.errors(f"uploading {self.key}"):
            s.client.complete_multipart_upload(
                Bucket=s.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
            )

    def abort(self) -> None:
        self.buffer.clear()
        if self.upload_id is None:
            return
        try:
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id
            )
        except Exception:  # the store's lifecycle rules remove abandoned parts; nothing was served
            pass


class _Errors:
    """`with storage.errors(what):` turns boto's exceptions into StorageUnavailable / StorageError."""

    def __init__(self, storage: S3Storage, what: str) -> None:
        self.storage, self.what = storage, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, StorageError | StorageUnavailable):
            return False
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        s = self.storage
        where = f"the object store {s.endpoint or 'AWS S3'}"
        if isinstance(exc, ClientError):
            code = _client_error_code(exc)
            if code == "NoSuchBucket":
                raise StorageError(
                    f"{where} has no bucket {s.bucket!r} ({self.what}); create it "
                    "(python -m common.storage create-bucket) or fix EMOJI_STORAGE_URL"
                ) from exc
            if code in _CREDENTIAL_CODES:
                raise StorageError(
                    f"{where} refused our credentials for bucket {s.bucket!r} ({code}, {self.what}); "
                    "check EMOJI_S3_ACCESS_KEY_ID and EMOJI_S3_SECRET_ACCESS_KEY"
                ) from exc
            if code in _RETRYABLE_CODES:
                raise StorageUnavailable(f"{where} failed while {self.what}: {code}") from exc
            raise StorageError(f"{where} refused {self.what}: {code}: {exc}") from exc
        if isinstance(exc, NoCredentialsError):
            raise StorageError(
                f"no credentials for {where}; set EMOJI_S3_ACCESS_KEY_ID and EMOJI_S3_SECRET_ACCESS_KEY"
            ) from exc
        if isinstance(exc, BotoCoreError | ConnectionError | TimeoutError):
            raise StorageUnavailable(f"{where} did not answer while {self.what}: {exc}") from exc
        return False


class S3Storage:
    """Jobs as objects `<prefix>/<job id>/<name>` in one bucket of an S3-compatible store."""

    local = False

    def __init__(self, client, bucket: str, prefix: str = "", part_bytes: int = 8 * 1024 * 1024,
                 endpoint: str = "") -> None:
        self.client, self.bucket, self.part_bytes, self.endpoint = client, bucket, part_bytes, endpoint
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3Storage:
        import boto3
        from botocore.config import Config

        url = urlparse(settings.storage_url)
        if url.scheme != "s3" or not url.netloc:
            raise ValueError(
                f"EMOJI_STORAGE_URL must look like s3://bucket/prefix, got {settings.storage_url!r}"
            )
        secret = settings.s3_secret_access_key.get_secret_value()
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=secret or None,
            config=Config(
                s3={"addressing_style": settings.s3_addressing_style},
                signature_version="s3v4",  # presigned URLs too (boto3 would sign those with v2 here)
                connect_timeout=settings.s3_timeout_s,
                read_timeout=settings.s3_timeout_s,
                # A few quick retries inside one call; longer outages are the task's retries.
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
            ),
        )
        return cls(client, url.netloc, url.path, settings.s3_part_bytes, settings.s3_endpoint_url)

    def errors(self, what: str) -> _Errors:
        return _Errors(self, what)

    def key(self, job_id: str, name: str = "") -> str:
        parts = [self.prefix, check_job_id(job_id), name]
        return "/".join(p for p in parts if p) + ("" if name else "/")

    def _job_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def size(self, job_id: str, name: str) -> int | None:
        with self.errors(f"looking for {job_id}/{name}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, name))
                return int(head["ContentLength"])
            except Exception as exc:
                if _client_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def exists(self, job_id: str, name: str) -> bool:
        return self.size(job_id, name) is not None

    def writer(self, job_id: str, name: str) -> Writer:
        return S3Writer(self, self.key(job_id, name))

    def put_file(self, job_id: str, name: str, source: Path) -> None:
        """Upload a local file (in parts when large); the object appears whole or not at all."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes)
        # Stored with its type, so a presigned URL serves it right without overriding response headers.
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with self.errors(f"uploading {job_id}/{name}"):
            self.client.upload_file(
                str(source), self.bucket, self.key(job_id, name), Config=config,
                ExtraArgs={"ContentType": media_type},
            )

    def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        """Copy the object to `dest` (written beside it, then renamed); False when there is no such object."""
        with self.errors(f"fetching {job_id}/{name}"):
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, name))
            except Exception as exc:
                if _client_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in reply["Body"].iter_chunks(1024 * 1024):
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return True

    def read(self, job_id: str, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes [start, end] (end inclusive, None: to the end), as they arrive. The request
        is made now, so a missing object or a refusal raises here, before anything is sent on."""
        byte_range = f"bytes={start}-{'' if end is None else end}"
        with self.errors(f"reading {job_id}/{name}"):
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, name), Range=byte_range)

        def chunks() -> Iterator[bytes]:
            body = reply["Body"]
            try:
                with self.errors(f"reading {job_id}/{name}"):
                    yield from body.iter_chunks(256 * 1024)
            finally:
                body.close()

        return chunks()

    def presign(self, job_id: str, name: str, ttl_s: int) -> str:
        """A URL the store itself answers (with Range support) for `ttl_s` seconds, with the object's own
        Content-Type. No response-header overrides: SeaweedFS 4.48 rejects their signatures."""
        params = {"Bucket": self.bucket, "Key": self.key(job_id, name)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)

    def _objects(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def has_job(self, job_id: str) -> bool:
        with self.errors(f"looking for job {job_id}"):
            reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(job_id), MaxKeys=1)
        return bool(reply.get("KeyCount") or reply.get("Contents"))

    def delete_job(self, job_id: str) -> None:
        prefix = self.key(job_id)
        with self.errors(f"deleting job {job_id}"):
            keys = [{"Key": o["Key"]} for o in self._objects(prefix)]
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})
            # Uploads broken off mid-way hold parts that are no object yet.
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", [])
            for upload in uploads:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )

    def job_ids(self) -> list[str]:
        """Jobs with at least one object. From the keys themselves, not "folders": some stores (SeaweedFS)
        list a prefix whose objects are all deleted as a folder still."""
        ids = set()
        start = len(self._job_prefix())
        with self.errors("listing jobs"):
            for entry in self._objects(self._job_prefix()):
                job_id = entry["Key"][start:].split("/", 1)[0]
                if job_id and not job_id.startswith("."):
                    ids.add(job_id)
        return sorted(ids)

    def last_written(self, job_id: str) -> float:
        with self.errors(f"listing job {job_id}"):
            times = [o["LastModified"].timestamp() for o in self._objects(self.key(job_id))]
        if not times:
            raise FileNotFoundError(job_id)
        return max(times)

    def check(self) -> None:
        """Raise StorageError (no bucket, refused credentials) or StorageUnavailable (no answer)."""
        with self.errors("checking the bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                if _client_error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(
                        f"the object store {self.endpoint or 'AWS S3'} has no bucket {self.bucket!r}; create "
                        "it (python -m common.storage create-bucket) or fix EMOJI_STORAGE_URL"
                    ) from exc
                raise

    def create_bucket(self) -> bool:
        """Make the bucket unless it exists; True when it was made."""
        try:
            self.check()
            return False
        except StorageError as exc:
            if "no bucket" not in str(exc):
                raise
        with self.errors("creating the bucket"):
            self.client.create_bucket(Bucket=self.bucket)
        return True


def from_settings(settings: CommonSettings) -> LocalStorage | S3Storage:
    """The backend EMOJI_STORAGE_URL names: empty -> the folder EMOJI_STORAGE_DIR."""
    if settings.storage_url:
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_dir)


def main(argv: list[str]) -> int:
    if argv != ["create-bucket"]:
        print("usage: python -m common.storage create-bucket", file=sys.stderr)
        return 2
    settings = CommonSettings()
    if not settings.storage_url:
        print("EMOJI_STORAGE_URL is empty: local storage needs no bucket")
        return 0
    storage = S3Storage.from_settings(settings)
    made = storage.create_bucket()
    print(f"bucket {storage.bucket!r} {'created' if made else 'already exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
