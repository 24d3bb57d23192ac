"""Log lines as text or JSON, with the job id of the task that logged them (common/logs.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common import logs


@pytest.fixture(autouse=True)
def restore_root_logger():
    """configure() replaces the root logger's handlers: give pytest its own back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def capture(log_format: str) -> tuple[logging.Logger, io.StringIO]:
    logs.configure(log_format, "INFO")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    return logging.getLogger("worker.test"), stream


def test_json_lines_carry_the_current_job_id():
    logger, stream = capture("json")
    logger.info("before any job")
    token = logs.current_job_id.set("ab" * 16)
    logger.warning("inside job %d", 7)
    logs.current_job_id.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    # Celery's "received" line: the arguments come as `data`, the job id first.
    logger.info("Task x received", extra={"data": {"args": f"('{'cd' * 16}', 0, 0, 30)"}})
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in entries] == ["before any job", "inside job 7", "failed", "Task x received"]
    assert "job_id" not in entries[0]
    assert entries[1]["job_id"] == "ab" * 16 and entries[1]["level"] == "WARNING"
    assert "ValueError: boom" in entries[2]["exception"] and "job_id" not in entries[2]
    assert entries[3]["job_id"] == "cd" * 16
    assert entries[1]["logger"] == "worker.test" and entries[1]["time"].endswith("+00:00")


def test_text_lines_name_the_job():
    logger, stream = capture("text")
    token = logs.current_job_id.set("ef" * 16)
    logger.info("working")
    logs.current_job_id.reset(token)
    logger.info("idle")
    working, idle = stream.getvalue().splitlines()
    assert working.endswith(f"worker.test [job {'ef' * 16}]: working")
    assert idle.endswith("worker.test: idle")
