"""The docs stay true: every setting a service reads is listed in docs/settings.md, and nothing else is."""

import re

import pytest

from common.settings import REPO_ROOT, CommonSettings
from gateway.settings import GatewaySettings
from worker.settings import WorkerSettings

SETTINGS_DOC = (REPO_ROOT / "docs" / "settings.md").read_text()


@pytest.mark.parametrize("settings_class", [CommonSettings, GatewaySettings, WorkerSettings])
def test_every_setting_is_documented(settings_class):
    documented = set(re.findall(r"`EMOJI_([A-Z0-9_]+)`", SETTINGS_DOC))
    missing = {name.upper() for name in settings_class.model_fields} - documented
    assert not missing, f"add these to docs/settings.md: {sorted(missing)}"


def test_no_setting_is_documented_that_does_not_exist():
    known = {
        name.upper()
        for cls in (CommonSettings, GatewaySettings, WorkerSettings)
        for name in cls.model_fields
    }
    documented = set(re.findall(r"`EMOJI_([A-Z0-9_]+)`", SETTINGS_DOC))
    assert documented <= known, f"docs/settings.md lists settings nobody reads: {sorted(documented - known)}"


def test_readme_has_exactly_the_two_setup_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make (\w+)", setup, flags=re.M)
    assert commands == ["run", "test"]
