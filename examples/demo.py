"""`make demo`: record a real playbook run on 20 local hosts, then look at it and verify it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOSTS = 20


def playledger(*args: str) -> int:
    print(f"\n$ playledger {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "playledger", *args])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="playledger-demo-") as tmp:
        inventory = Path(tmp) / "hosts.ini"
        lines = ["[fleet]"] + [f"server-{i:04d} ansible_connection=local" for i in range(HOSTS)]
        lines += ["[all:vars]", f"ansible_python_interpreter={sys.executable}"]
        inventory.write_text("\n".join(lines) + "\n")
        playbook = HERE / "demo" / "site.yml"
        rc = playledger("run", str(playbook), "-i", str(inventory), "-f", "10")
    playledger("runs", "--limit", "5")
    playledger("hosts", "latest")
    playledger("events", "latest", "--event", "runner_on_failed")
    verified = playledger("verify", "latest")
    print(
        "\nNext: `playledger show latest` for the job output, "
        "`playledger export latest --format jsonl` for every field.",
    )
    # The demo asserts fail on purpose (ignored), so Ansible exits 0; the record must verify.
    return rc or verified


if __name__ == "__main__":
    sys.exit(main())
