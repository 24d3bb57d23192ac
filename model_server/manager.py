"""Which versions of which models are served: file-system polling, loading, hot-swap, drop-free unloading.

Like TF Serving's AvailabilityPreservingPolicy: a new version is loaded while the old one keeps serving;
the old one leaves the routing table only once a newer aspired version is available, and is unloaded only
after the requests already running on it have finished.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from model_server.batching import BatchStats
from model_server.config import BatchingOptions
from model_server.errors import ServingError, invalid_argument, not_found, unavailable
from model_server.servable import LoadedVersion

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
Loader = Callable[[str, int, Path], LoadedVersion]


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    state: int = State.START
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""
    failures: int = 0


def list_versions(base_path: Path) -> dict[int, Path]:
    """Numeric version folders holding a saved_model.pb; anything else (e.g. `.2.tmp` staging) is ignored."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return {}
    return {
        int(child.name): child
        for child in children
        if child.name.isdigit() and child.is_dir() and (child / "saved_model.pb").is_file()
    }


def aspired_versions(
    policy: model_server_config_pb2.FileSystemStoragePathSourceConfig, found: list[int]
) -> set[int]:
    """Apply a ServableVersionPolicy (default: latest 1) to the versions found on disk."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(found)
    if kind == "specific":
        return set(found) & set(policy.specific.versions)
    num_versions = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return set(sorted(found)[-num_versions:])


class ManagedModel:
    """One configured model: its base path, version policy and labels, and the versions it serves."""

    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.name = config.name
        self.base_path = Path(config.base_path)
        self.policy = config.model_version_policy
        self.labels = dict(config.version_labels)
        self.served: dict[int, LoadedVersion] = {}
        self.statuses: dict[int, VersionStatus] = {}
        self.polled = False


class ModelManager:
    """Polls every model's base path and keeps the routing table of servable versions up to date."""

    def __init__(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        batching: BatchingOptions | None = None,
        poll_wait_s: float = 1.0,
        max_load_retries: int = 5,
        loader: Loader | None = None,
    ):
        self.models = {model.name: ManagedModel(model) for model in config.model_config_list.config}
        self.batch_stats = BatchStats()
        self._batching = batching
        self._poll_wait_s = poll_wait_s
        self._max_load_retries = max_load_retries
        self._loader = loader or self._load
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[], None] = lambda: None

    def _load(self, name: str, version: int, path: Path) -> LoadedVersion:
        return LoadedVersion(name, version, path, self._batching, self.batch_stats)

    def start(self) -> None:
        """Poll once now (in the background) and then every poll_wait_s, as TF Serving does."""
        self._thread = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            # TF Serving: a wait of 0 polls exactly once; negative never polls again either.
            if self._poll_wait_s <= 0:
                return
            self._stop.wait(self._poll_wait_s)

    def poll_once(self) -> None:
        """Load newly aspired versions, then retire versions no longer aspired."""
        for model in self.models.values():
            try:
                self._poll_model(model)
            except Exception:  # one broken model must not stop serving the others
                log.exception("polling model %s failed", model.name)
            model.polled = True
        self.on_change()

    def _poll_model(self, model: ManagedModel) -> None:
        on_disk = list_versions(model.base_path)
        if not on_disk and not model.served and not model.polled:
            log.warning("No versions of servable %s found under base path %s", model.name, model.base_path)
        aspired = aspired_versions(model.policy, list(on_disk))
        for version in sorted(aspired - set(model.served), reverse=True):
            status = model.statuses.setdefault(version, VersionStatus())
            if status.failures >= self._max_load_retries:
                continue
            self._load_version(model, version, on_disk[version], status)
        # Keep the old version while no aspired one is available (never leave the model with nothing).
        if aspired & set(model.served) or not aspired:
            for version in sorted(set(model.served) - aspired):
                self._unload_version(model, version)

    def _load_version(self, model: ManagedModel, version: int, path: Path, status: VersionStatus) -> None:
        log.info("Loading servable version {name: %s version: %d} from %s", model.name, version, path)
        with self._lock:
            status.state = State.LOADING
        self.on_change()
        try:
            loaded = self._loader(model.name, version, path)
        except Exception as exc:
            with self._lock:
                status.failures += 1
                status.state = State.END
                status.error_code = grpc.StatusCode.UNKNOWN
                status.error_message = f"Failed to load {path}: {exc}"
            log.exception("loading %s version %d failed (attempt %d)", model.name, version, status.failures)
            return
        with self._lock:
            model.served[version] = loaded
            status.state = State.AVAILABLE
            status.error_code, status.error_message = grpc.StatusCode.OK, ""
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, version)

    def _unload_version(self, model: ManagedModel, version: int) -> None:
        with self._lock:
            loaded = model.served.pop(version)
            model.statuses[version].state = State.UNLOADING
        log.info("Unloading servable version {name: %s version: %d}", model.name, version)
        loaded.unload()  # blocks until the requests already running on it are answered
        with self._lock:
            model.statuses[version].state = State.END
        log.info("Done unloading servable version {name: %s version: %d}", model.name, version)

    def acquire(self, name: str, version: int | None = None, label: str = "") -> LoadedVersion:
        """Pick the servable for a model spec and count the request in; call `release()` on it after."""
        model = self.models.get(name)
        if model is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {request}")
        with self._lock:
            if label:
                if label not in model.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if version is not None:
                loaded = model.served.get(version)
                if loaded is None:
                    status = model.statuses.get(version)
                    if status is not None and status.state in (State.START, State.LOADING):
                        raise unavailable(f"Servable {{name: {name} version: {version}}} is still loading")
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
            elif model.served:
                loaded = model.served[max(model.served)]
            elif not model.polled or any(s.state == State.LOADING for s in model.statuses.values()):
                raise unavailable(f"Servable {name} is loading; no version is available yet")
            else:
                raise not_found(f"Servable not found for request: Latest({name})")
            loaded.acquire()
        return loaded

    def version_statuses(self, name: str, version: int | None = None) -> dict[int, VersionStatus]:
        """Statuses for GetModelStatus; NOT_FOUND as in TF Serving when there is nothing to report."""
        model = self.models.get(name)
        with self._lock:
            statuses = dict(model.statuses) if model else {}
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {name}")
            return {version: statuses[version]}
        return statuses

    def ready(self) -> bool:
        """True once the first poll loaded what it aspired to and every model serves a version (SERVING)."""
        with self._lock:
            return all(model.polled and model.served for model in self.models.values())

    def stop(self) -> None:
        """Stop polling and unload everything, letting requests in flight finish first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for model in self.models.values():
            for version in list(model.served):
                self._unload_version(model, version)


def check_serving_error(exc: Exception) -> ServingError:
    """Anything unexpected becomes INTERNAL, the way TF Serving reports an unknown failure."""
    if isinstance(exc, ServingError):
        return exc
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
