"""Secrets stay out: no_log results and PLAYLEDGER_REDACT matches never reach a disk or a screen.

Each test searches the raw bytes of every file playledger wrote (spool folder, SQLite db, -wal,
-shm) and the output of every reading command, and first proves that the search finds a value
that is meant to be there.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from conftest import Env
from test_callback_events import assert_gapless, assert_recorded_complete, data, stored_events

NO_LOG = """
- hosts: all
  gather_facts: false
  tasks:
    - name: hand the secret to a command
      command: echo {{ lookup('env', 'PL_SECRET') }}
      no_log: true
      register: echoed
    - name: secret as a loop item
      debug:
        msg: "item {{ item }}"
      loop:
        - "{{ lookup('env', 'PL_SECRET') }}"
        - plain
      no_log: true
    - name: use the registered secret
      debug:
        msg: "{{ echoed.stdout }}"
      no_log: true
    - name: fail with the secret
      shell: echo {{ echoed.stdout }}; echo {{ echoed.stdout }} >&2; exit 3
      no_log: true
      ignore_errors: true
    - name: retry with the secret
      shell: echo {{ echoed.stdout }}; exit 1
      register: retried
      until: retried.rc == 0
      retries: 1
      delay: 0
      no_log: true
      ignore_errors: true
    - name: failing loop item with the secret
      command: sh -c "echo {{ item }}; exit 2"
      loop: ["{{ echoed.stdout }}"]
      no_log: true
      ignore_errors: true
    - name: polled async job with the secret
      command: sh -c "sleep 2; echo {{ echoed.stdout }}"
      async: 30
      poll: 1
      no_log: true
    - name: the secret stays usable
      assert:
        that: echoed.stdout == lookup('env', 'PL_SECRET')
    - name: a visible value, to prove the search finds what is there
      debug:
        msg: "{{ lookup('env', 'PL_VISIBLE') }}"

# The secret written literally in task arguments, hidden by no_log inherited or templated.
- hosts: all
  gather_facts: false
  no_log: true
  tasks:
    - name: play-level no_log
      command: echo @SECRET@
- hosts: all
  gather_facts: false
  tasks:
    - block:
        - name: block-level no_log
          command: echo @SECRET@
        - name: block-level no_log loop
          debug: msg="{{ item }}"
          loop: [@SECRET@]
      no_log: true
    - name: templated no_log
      command: echo @SECRET@
      no_log: "{{ hide }}"
      vars:
        hide: true
    - name: include in a no_log loop
      include_tasks: inc.yml
      loop: [@SECRET@]
      no_log: true
"""

REDACT = """
- hosts: all
  gather_facts: false
  tasks:
    - name: print a token
      command: echo token is {{ lookup('env', 'PL_TOKEN') }}
    - name: show a token
      debug:
        msg: "{{ lookup('env', 'PL_TOKEN') }} and {{ lookup('env', 'PL_VISIBLE') }}"
    - name: token as an item
      debug:
        msg: "{{ item }}"
      loop: ["{{ lookup('env', 'PL_TOKEN') }}"]
    - name: fail with the token
      fail:
        msg: "bad {{ lookup('env', 'PL_TOKEN') }}"
      ignore_errors: true
"""


def snapshot(env: Env) -> dict[str, bytes]:
    """Every file under the spool folder, and the SQLite db with its -wal and -shm files."""
    db = Path(env.db)
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    assert db in files
    files += sorted(p for p in env.spool_dir.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


def containing(files: dict[str, bytes], needle: str) -> list[str]:
    return [path for path, content in files.items() if needle.encode() in content]


def record_twice(env: Env) -> tuple[subprocess.CompletedProcess[str], dict[str, bytes]]:
    """`playledger run` (its output is checked), then plain ansible-playbook with the spool kept
    (PLAYLEDGER_SHIP=off) so that the spool can be read before `playledger ship` drains it.
    Returns the first run's process and the files as they were before and after shipping."""
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    assert_gapless(env, stored_events(env))

    plugins = env.playledger("callback-path", check=True).stdout.strip()
    ansible_env = {
        **env.vars,
        "ANSIBLE_CALLBACK_PLUGINS": plugins,
        "ANSIBLE_CALLBACKS_ENABLED": "playledger",
        "PLAYLEDGER_SHIP": "off",
    }
    ansible = Path(sys.executable).parent / "ansible-playbook"
    plain = subprocess.run(
        [str(ansible), "site.yml", "-i", "hosts.ini"],
        env=ansible_env,
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    before = snapshot(env)
    spooled = [p for p in before if p.startswith(str(env.spool_dir)) and p.endswith(".spool")]
    assert len(spooled) == 1, sorted(before)
    ship = env.playledger("ship")
    assert ship.returncode == 0, ship.stdout + ship.stderr
    assert_gapless(env, stored_events(env))
    after = snapshot(env)
    return proc, {**{f"before ship: {p}": b for p, b in before.items()}, **after}


def reader_outputs(env: Env) -> dict[str, str]:
    """The output of every command that prints recorded data."""
    commands = {
        "show": ("show", "latest"),
        "events": ("events", "latest"),
        "events --json": ("events", "latest", "--json"),
        "export jsonl": ("export", "latest", "--format", "jsonl"),
        "export csv": ("export", "latest", "--format", "csv"),
        "verify": ("verify", "latest"),
        "verify --json": ("verify", "latest", "--json"),
        "hosts": ("hosts", "latest"),
    }
    outputs = {}
    for label, args in commands.items():
        proc = env.playledger(*args)
        assert proc.returncode == 0, (label, proc.stderr)
        assert proc.stdout.strip(), label
        outputs[label] = proc.stdout + proc.stderr
    return outputs


def test_no_log_secrets_appear_nowhere(env: Env) -> None:
    secret = f"pl-s3cr3t-{secrets.token_hex(8)}"
    visible = f"pl-visible-{secrets.token_hex(8)}"
    env.inventory(["node-a"])
    env.write("site.yml", NO_LOG.replace("@SECRET@", secret))
    env.write("inc.yml", "- debug: msg=included\n")
    env.vars.update(PL_SECRET=secret, PL_VISIBLE=visible)
    env.vars["ANSIBLE_ASYNC_DIR"] = str(env.root.parent / "async")
    proc, files = record_twice(env)
    events = stored_events(env)

    # The tasks ran and were recorded, censored.
    censored = [e for e in events if data(e).get("res", {}).get("censored")]
    names = {e.event for e in censored}
    assert {
        "runner_on_ok",
        "runner_on_failed",
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_retry",
        "runner_on_async_ok",
    } <= names, names
    items = [data(e)["item"] for e in events if e.event.startswith("runner_item_on_")]
    assert items and set(items) == {"(censored due to no_log)"}

    outputs = reader_outputs(env)
    outputs["run"] = proc.stdout + proc.stderr
    # The search works: the visible value is found on disk and in the outputs.
    assert len(containing(files, visible)) >= 2  # the spool before shipping, the db
    assert visible in outputs["show"] and visible in outputs["export csv"]
    # ... and the secret is nowhere.
    assert containing(files, secret) == []
    leaks = [label for label, text in outputs.items() if secret in text]
    assert leaks == []


def test_redact_setting_masks_a_value_everywhere(env: Env) -> None:
    token = f"tok-{secrets.token_hex(6)}"
    visible = f"pl-visible-{secrets.token_hex(8)}"
    env.inventory(["node-a"])
    env.write("site.yml", REDACT)
    env.vars.update(PL_TOKEN=token, PL_VISIBLE=visible, PLAYLEDGER_REDACT=r"tok-[0-9a-f]{12}")
    proc, files = record_twice(env)
    # Ansible itself prints the token (no no_log): redaction is about what playledger keeps.
    assert token in proc.stdout

    outputs = reader_outputs(env)
    outputs["run summary"] = proc.stdout.splitlines()[-1] + proc.stderr
    assert len(containing(files, visible)) >= 2
    assert visible in outputs["show"]
    assert containing(files, token) == []
    assert [label for label, text in outputs.items() if token in text] == []
    # Masked, not dropped.
    shown = outputs["show"]
    assert '"msg": "******** and ' + visible + '"' in shown
    assert "(item=********)" in shown
    printed = [
        data(e)["res"]
        for e in stored_events(env)
        if e.event == "runner_on_ok" and e.task == "print a token"
    ]
    assert printed and printed[0]["stdout"] == "token is ********"
    assert printed[0]["cmd"] == ["echo", "token", "is", "********"]
