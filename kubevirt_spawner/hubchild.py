"""Run a process the hub starts (a managed service, the proxy) so that it
ends with the hub:

    python -m kubevirt_spawner.hubchild --parent-pid PID -- CMD [ARG...]

JupyterHub starts managed services and configurable-http-proxy in sessions
of their own and stops them only in its orderly shutdown: a hub that fails
at start or is killed leaves them running, holding their ports (a restarted
hub then starts a second lab manager beside the first). This sets the
kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``: sent when
the hub's thread that started the process exits), gives up if the hub is
already gone, and reads stdin from /dev/null, then execs CMD in place (same
pid, so the hub's own bookkeeping still holds). The last point is for
Ctrl-C: a Jupyter server whose stdin is a terminal answers SIGINT with a
"Shutdown this Jupyter server (y/[n])?" prompt and keeps running, so the
hub's shutdown waited out every timeout (a minute for two services).

ref: prctl(2), PR_SET_PDEATHSIG: the setting survives execve of a program
that is not set-user-ID, and is cleared by credential changes, which is why
it is set here, after JupyterHub has switched to the service's account.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def command(parent_pid: int, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` under this wrapper, for the hub's own pid."""
    return [
        sys.executable,
        "-m",
        "kubevirt_spawner.hubchild",
        f"--parent-pid={parent_pid}",
        "--",
        *argv,
    ]


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kubevirt_spawner.hubchild",
        description="Run CMD so that it ends (SIGTERM) when the hub that started it exits.",
    )
    parser.add_argument("--parent-pid", type=int, required=True, help="the hub's pid")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    ns = parser.parse_args(args)
    cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
    if not cmd:
        parser.error("no command given (usage: --parent-pid PID -- CMD [ARG...])")
    set_parent_death_signal()
    if os.getppid() != ns.parent_pid:
        sys.exit(f"hubchild: the hub (pid {ns.parent_pid}) is gone; not starting {cmd[0]}")
    # A hub started in the background by a shell inherits SIGINT ignored, and
    # an ignored signal stays ignored across exec: the hub's Ctrl-C (SIGINT
    # to each service) would then be lost.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.exit(f"hubchild: cannot run {cmd[0]}: {e.strerror}")


if __name__ == "__main__":
    main()
