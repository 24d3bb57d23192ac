"""A client for the emoji video service: `Client` for Python, `emoji-video` on the command line."""

from emoji_video_client.client import ApiError, Client, ClientError, JobFailed

__all__ = ["ApiError", "Client", "ClientError", "JobFailed"]
