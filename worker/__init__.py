"""The Celery worker: face detection, the emotion model over gRPC, tracking, smoothing, emoji, ffmpeg."""
