"""Shared fixtures: isolated settings per test, real ansible-playbook runs on local hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from playledger.settings import Settings
from playledger.store import Store, open_store

# Fixtures of the API tests (a store per backend, the app in process with tokens).
pytest_plugins = ["apitest"]

TESTS = Path(__file__).resolve().parent
PLUGINS = TESTS / "plugins"
PYTHON = sys.executable


@dataclass
class Env:
    """One isolated playledger installation: its own store, spool and working folder."""

    root: Path
    vars: dict[str, str]

    @property
    def db(self) -> str:
        return self.vars["PLAYLEDGER_DB"]

    @property
    def spool_dir(self) -> Path:
        return Path(self.vars["PLAYLEDGER_SPOOL_DIR"])

    @property
    def recorder_file(self) -> Path:
        return Path(self.vars["INDEPENDENT_RECORDER_FILE"])

    def settings(self) -> Settings:
        return Settings.load(environ=self.vars)

    def store(self) -> Store:
        return open_store(self.db)

    def playledger(
        self, *args: str, timeout: float = 600, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI in a child process (`python -m playledger ...`)."""
        return subprocess.run(
            [PYTHON, "-m", "playledger", *args],
            env=self.vars,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
        )

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def inventory(self, hosts: Sequence[str], name: str = "hosts.ini", extra: str = "") -> Path:
        lines = ["[all]"]
        lines += [f"{h} ansible_connection=local" for h in hosts]
        lines += ["[all:vars]", f"ansible_python_interpreter={PYTHON}", extra]
        return self.write(name, "\n".join(lines) + "\n")

    def recorded(self) -> list[dict[str, str | None]]:
        """What the independent recorder saw (enable it with `with_recorder`)."""
        if not self.recorder_file.exists():
            return []
        return [json.loads(line) for line in self.recorder_file.read_text().splitlines()]

    def with_recorder(self) -> dict[str, str]:
        """Env that enables the independent recorder next to playledger in the same run."""
        env = dict(self.vars)
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(PLUGINS)
        env["ANSIBLE_CALLBACKS_ENABLED"] = "independent_recorder"
        return env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    root = tmp_path / "work"
    root.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYLEDGER_", "ANSIBLE_"))}
    variables = {
        **keep,
        "PLAYLEDGER_DB": str(tmp_path / "store" / "playledger.db"),
        "PLAYLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
        "PLAYLEDGER_SHIP_TIMEOUT": "60",
        "INDEPENDENT_RECORDER_FILE": str(tmp_path / "independent.jsonl"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    yield Env(root, variables)
