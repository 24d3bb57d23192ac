"""The shipped emotion model as the worker uses it: served by `python -m model_server`, asked through the
worker's gRPC client, on a face found by the worker's detector and cropped by the worker's crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from common.classes import EMOTION_INDEX, NUM_CLASSES
from common.face_crop import crop_faces
from tests.conftest import MODEL_BASE_PATH
from worker.detection import make_detector
from worker.model_client import EmotionClient
from worker.settings import WorkerSettings

pytestmark = pytest.mark.slow


def test_shipped_version_answers_through_the_worker_client_and_a_smile_is_happy(model_server):
    shipped = max(int(p.name) for p in MODEL_BASE_PATH.iterdir() if (p / "saved_model.pb").is_file())
    client = EmotionClient(model_server)
    assert client.wait_until_available(timeout_s=60) == shipped
    # skimage's astronaut (Eileen Collins) smiles at the camera.
    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    found = make_detector(WorkerSettings()).detect(image)
    assert len(found) == 1
    faces = crop_faces(image, found.xyxy)
    probabilities = client.predict(np.concatenate([faces, faces[:, :, ::-1]]))  # and mirrored
    assert probabilities.shape == (2, NUM_CLASSES)
    assert probabilities.argmax(axis=1).tolist() == [EMOTION_INDEX["happy"]] * 2
    assert client.model_version == shipped
