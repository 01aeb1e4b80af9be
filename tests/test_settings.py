"""The settings table is the one source: docs, CLI help and the callback's options follow it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from playledger.callback import plugin_path
from playledger.errors import SettingError
from playledger.settings import SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "settings.md").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in docs]
    assert missing == [], f"add to docs/settings.md: {missing}"
    assert "PLAYLEDGER_DB" in readme and "PLAYLEDGER_SPOOL_DIR" in readme


def _callback_options() -> dict[str, dict[str, object]]:
    tree = ast.parse((plugin_path() / "playledger.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCUMENTATION":
            doc = yaml.safe_load(ast.literal_eval(node.value))
            options: dict[str, dict[str, object]] = doc["options"]
            return options
    raise AssertionError("no DOCUMENTATION in the callback plugin")


def test_callback_options_match_the_settings_table() -> None:
    by_name = {s.name: s for s in SETTINGS}
    for name, option in _callback_options().items():
        assert name in by_name, f"callback option {name} is not in the settings table"
        envs = [e["name"] for e in option["env"]]  # type: ignore[attr-defined]
        assert envs == [by_name[name].env]
        if "default" in option:
            assert str(option["default"]) == by_name[name].default()


def test_cli_help_lists_every_setting() -> None:
    from click.testing import CliRunner

    from playledger.cli import cli

    out = CliRunner().invoke(cli, ["--help"]).output
    assert all(s.env in out for s in SETTINGS)


def test_bad_values_are_refused_with_the_variable_named() -> None:
    with pytest.raises(SettingError, match="PLAYLEDGER_FSYNC"):
        Settings.load(environ={"PLAYLEDGER_FSYNC": "sometimes"})
    with pytest.raises(SettingError, match="PLAYLEDGER_BATCH_SIZE"):
        Settings.load(environ={"PLAYLEDGER_BATCH_SIZE": "0"})
    with pytest.raises(SettingError, match="PLAYLEDGER_REDACT"):
        Settings.load(environ={"PLAYLEDGER_REDACT": "(unclosed"})


def test_environment_and_overrides() -> None:
    s = Settings.load(environ={"PLAYLEDGER_DB": "/tmp/x.db", "PLAYLEDGER_BATCH_SIZE": "10"})
    assert (s.db, s.batch_size) == ("/tmp/x.db", 10)
    assert Settings.load(environ={"PLAYLEDGER_DB": "/tmp/x.db"}, db="/tmp/y.db").db == "/tmp/y.db"
