"""A real `playledger run` end to end, compared with an independent recorder in the same run."""

from __future__ import annotations

from collections import Counter

from conftest import Env

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: items
      command: echo {{ item }}
      loop: [a, b, c]
      changed_when: false
"""


def test_run_records_every_callback_once(env: Env) -> None:
    env.inventory([f"node-{i}" for i in range(5)])
    env.write("site.yml", PLAYBOOK)
    env.vars.update(env.with_recorder())
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini", "-f", "5")
    assert proc.returncode == 0, proc.stderr
    assert "complete, chain ok" in proc.stdout.splitlines()[-1]

    store = env.store()
    run = store.run("latest")
    stored = list(store.events(run.id))
    assert [e.counter for e in stored] == list(range(1, len(stored) + 1))
    assert run.emitted == len(stored)
    seen = Counter((r["event"], r["host"]) for r in env.recorded())
    ours = Counter((e.event, e.host) for e in stored)
    assert seen, "the independent recorder saw nothing"
    assert ours == seen
