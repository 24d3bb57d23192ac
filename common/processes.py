"""External processes (ffprobe probing an upload, ffmpeg joining the pieces) with a wall-clock deadline.

Frames are decoded and encoded in the worker's own process (PyAV), so no caller streams frames through a
pipe any more: each program here runs to its end under `run`, its output read by `communicate()`. What
`subprocess.run(timeout=...)` alone would not give: a timer SIGKILLs the child's whole process group at the
deadline, whatever the caller is doing (blocked on a pipe too), and the end is told apart as TimedOut or
StorageFull. Each child also dies with the process that started it (the parent-death signal, set by
util-linux's `setpriv` before it becomes ffmpeg), so a worker killed by the OOM killer or a hard time limit
leaves no ffmpeg behind. Not with a `preexec_fn`: that forces a plain fork(), whose fork handlers gRPC's
threads (the worker's model client) do not survive.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass

from common.errors import StorageFull, TimedOut

_SETPRIV = shutil.which("setpriv")
DIE_WITH_PARENT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()


class DeadlineProcess:
    """`subprocess.Popen` in its own process group, SIGKILLed (group and all) `timeout_s` after its start.

    Use as a context manager: leaving the block kills whatever is still running and reaps it, so no path
    leaves a child behind. `timed_out` says whether the deadline fired.
    """

    def __init__(self, cmd: list[str], timeout_s: float, what: str = "ffmpeg", **popen_kwargs) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.timed_out = False
        self.proc = subprocess.Popen([*DIE_WITH_PARENT, *cmd], start_new_session=True, **popen_kwargs)
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _expire(self) -> None:
        if self.proc.poll() is None:
            self.timed_out = True
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group (a stopped process dies too); harmless once it has ended."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """Wait for the end (the deadline bounds it); the exit code, negative when a signal killed it."""
        code = self.proc.wait()
        self._timer.cancel()
        return code

    def check(self, code: int, stderr_tail: str = "") -> None:
        """Raise TimedOut if the deadline fired, StorageFull if the disk or the file-size limit stopped it."""
        if self.timed_out:
            raise TimedOut(
                f"{self.what} did not finish within its {self.timeout_s:.0f} s deadline "
                "(EMOJI_FFMPEG_TIMEOUT_S) and was stopped; the video may be damaged or too long"
            )
        if code == -signal.SIGXFSZ or "No space left on device" in stderr_tail:
            raise StorageFull(f"{self.what} ran out of disk space; try again later")

    def __enter__(self) -> DeadlineProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.proc.poll() is None:
            self.kill()
        self.wait()


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def run(cmd: list[str], timeout_s: float, what: str = "ffmpeg") -> Completed:
    """Run to the end, capturing output; raises TimedOut or StorageFull as `DeadlineProcess.check` says."""
    with DeadlineProcess(cmd, timeout_s, what, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        # communicate() returns once the pipes close: at the end, or when the deadline kills the group.
        stdout, stderr = proc.proc.communicate()
        code = proc.wait()
    proc.check(code, stderr.decode(errors="replace")[-500:])
    return Completed(code, stdout, stderr)
