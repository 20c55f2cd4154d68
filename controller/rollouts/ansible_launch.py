"""Stands in for ``ansible-playbook`` in a wave's worker: asks the worker's zygote
(controller/rollouts/zygote.py), a process that has imported Ansible once, to fork a
ready ansible-playbook on this process's terminal, and exits with its status. Where
there is no zygote, or it declines, this becomes the real ansible-playbook.

Run as a file (``python -I -S ansible_launch.py ARGS``), it imports nothing of the
project and nothing beyond the standard library: it is what each wave still starts.
"""

from __future__ import annotations

import json
import os
import socket
import sys

# The zygote's socket and the real ansible-playbook, given by the worker.
ZYGOTE_ENV = "SCHOOLFLEET_ZYGOTE"
ANSIBLE_PLAYBOOK_ENV = "SCHOOLFLEET_ANSIBLE_PLAYBOOK"
_MAX_ANSWER = 65536


def _exec_real(why: str) -> None:
    if why:
        sys.stderr.write(f"[schoolfleet] ansible-playbook started afresh: {why}\n")
        sys.stderr.flush()
    real = os.environ.get(ANSIBLE_PLAYBOOK_ENV, "ansible-playbook")
    os.execv(real, [real, *sys.argv[1:]])  # noqa: S606 (the worker's own ansible-playbook)


def main() -> None:
    path = os.environ.get(ZYGOTE_ENV, "")
    if not path:
        _exec_real("")
    ask = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        socket.send_fds(conn, [json.dumps(ask).encode() + b"\n"], [0, 1, 2])
        reader = conn.makefile("rb")
        first = json.loads(reader.readline(_MAX_ANSWER) or b"{}")
    except (OSError, ValueError) as exc:
        _exec_real(f"no zygote ({exc})")
        return
    if "pid" not in first:
        _exec_real(str(first.get("declined", "the zygote did not answer")))
        return
    # The forked ansible-playbook runs on this terminal; its end is this one's.
    try:
        done = json.loads(reader.readline(_MAX_ANSWER) or b"{}")
    except (OSError, ValueError):
        done = {}
    sys.exit(int(done.get("exit", 255)))


if __name__ == "__main__":
    main()
