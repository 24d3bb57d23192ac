"""The Celery worker: face detection, the emotion model over gRPC, tracking, smoothing, emoji, ffmpeg."""

import os

# OpenCV's own cap on what cv2.imdecode/imread may allocate (its default is 2^30 pixels, 3 GB as BGR):
# read when it first decodes, so set before any worker module imports cv2. The largest image the worker
# decodes with OpenCV is a live frame (checked on its header first) or an emoji sprite; 4K is plenty.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(3840 * 2160))
