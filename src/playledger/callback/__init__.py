"""The Ansible side of playledger: a thin callback plugin that appends events to the spool."""

from __future__ import annotations

from pathlib import Path


def plugin_path() -> Path:
    """The folder to add to ANSIBLE_CALLBACK_PLUGINS (it holds `playledger.py`)."""
    return Path(__file__).resolve().parent / "plugins"
