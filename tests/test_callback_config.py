"""How the callback gets enabled: plain ansible-playbook via ansible.cfg, and `playledger run`
adding itself to what the user configured (environment or ansible.cfg) without replacing it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PLUGINS, Env
from test_callback_events import (
    assert_gapless,
    assert_matches_recorder,
    assert_recorded_complete,
    stored_events,
)

PLAYBOOK = """
- name: config play
  hosts: all
  gather_facts: false
  tasks:
    - name: hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: change something
      command: echo changed
    - name: items
      command: echo {{ item }}
      loop: [a, b]
      changed_when: false
    - name: skipped
      debug: msg=never
      when: false
"""
HOSTS = ["node-a", "node-b"]
# 1 playbook + 1 play + 4 tasks + 2 hosts x (4 starts + 4 results + 2 items) + stats
EXPECTED_EVENTS = 1 + 1 + 4 + 2 * (4 + 4 + 2) + 1
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def plugin_dir(env: Env) -> str:
    proc = env.playledger("callback-path", check=True)
    path = proc.stdout.strip()
    assert (Path(path) / "playledger.py").is_file()
    return path


def ansible_playbook(env: Env, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "site.yml", "-i", "hosts.ini"],
        env={**env.vars, **extra_env},
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_until_verified(env: Env, seconds: float = 60) -> subprocess.CompletedProcess[str]:
    """`playledger verify latest` until it succeeds (the callback's own shipper is storing)."""
    deadline = time.monotonic() + seconds
    while True:
        proc = env.playledger("verify", "latest")
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc
        time.sleep(0.3)


def write_cfg(env: Env, callbacks: str, paths: list[str]) -> None:
    plugins = os.pathsep.join(paths)
    env.write(
        "ansible.cfg",
        f"[defaults]\ncallbacks_enabled = {callbacks}\ncallback_plugins = {plugins}\n",
    )


@pytest.fixture
def site(env: Env) -> Env:
    env.inventory(HOSTS)
    env.write("site.yml", PLAYBOOK)
    return env


def test_plain_ansible_playbook_with_ansible_cfg_ships_by_itself(site: Env) -> None:
    write_cfg(site, "playledger, independent_recorder", [plugin_dir(site), str(PLUGINS)])
    proc = ansible_playbook(site, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PLAY RECAP" in proc.stdout
    verified = wait_until_verified(site)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_gapless(site, events)
    assert_matches_recorder(site, events)


def test_plain_ansible_playbook_then_playledger_ship(site: Env) -> None:
    proc = ansible_playbook(
        site,
        {
            "ANSIBLE_CALLBACK_PLUGINS": os.pathsep.join([plugin_dir(site), str(PLUGINS)]),
            "ANSIBLE_CALLBACKS_ENABLED": "playledger,independent_recorder",
            "PLAYLEDGER_SHIP": "off",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert site.playledger("verify", "latest").returncode != 0  # nothing stored yet
    ship = site.playledger("ship")
    assert ship.returncode == 0, ship.stdout + ship.stderr
    assert f"{EXPECTED_EVENTS} stored" in ship.stdout
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_gapless(site, events)
    assert_matches_recorder(site, events)
    again = site.playledger("ship")  # nothing left: shipping twice stores nothing twice
    assert again.returncode == 0 and "nothing to ship" in again.stdout
    assert len(stored_events(site)) == EXPECTED_EVENTS


def test_run_adds_itself_to_callbacks_from_the_environment(site: Env, tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-plugins"
    elsewhere.mkdir()
    site.vars["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join([str(elsewhere), str(PLUGINS)])
    site.vars["ANSIBLE_CALLBACKS_ENABLED"] = "independent_recorder"
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_gapless(site, events)
    assert_matches_recorder(site, events)


def test_run_adds_itself_to_callbacks_from_ansible_cfg(site: Env) -> None:
    write_cfg(site, "independent_recorder", [str(PLUGINS)])
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_gapless(site, events)
    assert_matches_recorder(site, events)


def test_run_adds_itself_to_a_relative_path_in_ansible_cfg(site: Env) -> None:
    recorder = (PLUGINS / "independent_recorder.py").read_text()
    site.write("callbacks/independent_recorder.py", recorder)
    write_cfg(site, "independent_recorder", ["callbacks"])  # relative to the ansible.cfg
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    assert_matches_recorder(site, stored_events(site))


def test_run_adds_itself_to_callbacks_from_ansible_config_env(site: Env, tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere" / "custom.cfg"
    cfg.parent.mkdir()
    cfg.write_text(
        f"[defaults]\ncallbacks_enabled = independent_recorder\ncallback_plugins = {PLUGINS}\n"
    )
    site.vars["ANSIBLE_CONFIG"] = str(cfg)
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    assert_matches_recorder(site, stored_events(site))


def test_run_with_playledger_already_enabled_records_once(site: Env) -> None:
    write_cfg(site, "playledger,independent_recorder", [plugin_dir(site), str(PLUGINS)])
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_matches_recorder(site, events)
    store = site.store()
    try:
        assert len(store.runs()) == 1
    finally:
        store.close()


@pytest.mark.parametrize(
    ("stdout_callback", "marker"),
    [("minimal", "node-a | CHANGED"), ("oneline", "node-a | CHANGED")],
)
def test_run_works_with_another_stdout_callback(
    site: Env, stdout_callback: str, marker: str
) -> None:
    site.vars.update(site.with_recorder())
    site.vars["ANSIBLE_STDOUT_CALLBACK"] = stdout_callback
    proc = site.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    assert marker in proc.stdout  # the user's stdout callback printed the run ...
    assert "TASK [hello]" not in proc.stdout
    events = stored_events(site)
    assert len(events) == EXPECTED_EVENTS
    assert_gapless(site, events)
    assert_matches_recorder(site, events)
    shown = site.playledger("show", "latest").stdout  # ... and the record is the same
    assert "TASK [hello] ***" in shown and "changed: [node-a]" in shown
