"""``labvm snapshot`` and ``labvm suspend``: the student's side of saved VM states.

Checkpoints are QEMU internal snapshots (RAM and devices: the guest runs
from its initramfs, so that is the whole VM) in a qcow2 image that holds
nothing else, attached to every local VM (``qemu.STATE_NODE``); QMP's
snapshot-save/-load/-delete jobs act on the running VM, so its QEMU, gdb
socket and ssh port stay the same. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from urllib.parse import quote

from .contract import STATE_NODE
from .lab import LabEnv, LabError
from .qmp import QMP, QMPError
from .vmstate import human, usage

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
NO_SNAPSHOTS_ON_CLUSTER = (
    "KubeVirt has no memory snapshots: on the cluster your VM cannot be "
    "checkpointed or suspended (it keeps running until it is stopped; docs/local.md)."
)
REQUEST_FILE = "suspend-requested"  # kubevirt_spawner.local.suspend.REQUEST_FILE


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise LabError(
            f"Bad checkpoint name {name!r}: use letters, digits, '_', '.', '-' (at most 40)."
        )
    return name


class Checkpoints:
    """The checkpoints of the VM that ``env`` names."""

    def __init__(self, env: LabEnv):
        if env.backend != "local":
            raise LabError(NO_SNAPSHOTS_ON_CLUSTER)
        if not env.qmp_socket or not env.state_dir:
            raise LabError("This server's VM has no checkpoint storage (LAB_VM_STATE_DIR).")
        self.env = env

    def _qmp(self) -> QMP:
        try:
            return QMP(self.env.qmp_socket, timeout=120)
        except OSError:
            raise LabError(
                "Your VM is not running (its monitor does not answer); start your server "
                "again, or `labvm status`."
            ) from None

    def _list(self, q: QMP) -> list[dict]:
        for node in q.execute("query-named-block-nodes"):
            if node.get("node-name") == STATE_NODE:
                return node.get("image", {}).get("snapshots", [])
        raise LabError("This VM was started without a checkpoint image; restart your server.")

    def list(self) -> list[dict]:
        with self._qmp() as q:
            return self._list(q)

    def _job(self, q: QMP, command: str, name: str, **args) -> None:
        try:
            q.run_job(command, f"labvm-{command}", tag=name, devices=[STATE_NODE], **args)
        except QMPError as e:
            raise LabError(f"QEMU could not {command.split('-')[1]} {name!r}: {e}") from None

    def save(self, name: str) -> tuple[dict, bool]:
        """Checkpoint the running VM as ``name`` (replacing one of that name);
        return its entry and whether it replaced one."""
        check_name(name)
        quota = self.env.state_quota
        with self._qmp() as q:
            existing = {s["name"] for s in self._list(q)}
            used = usage(self.env.state_dir)
            if quota and used >= quota:
                raise LabError(
                    f"Your saved VM states are full ({human(used)} of {human(quota)}): "
                    "remove a checkpoint with `labvm snapshot rm NAME` first."
                )
            if name in existing:
                self._job(q, "snapshot-delete", name)
            self._job(q, "snapshot-save", name, vmstate=STATE_NODE)
            now_used = usage(self.env.state_dir)
            if quota and now_used > quota:
                self._job(q, "snapshot-delete", name)
                raise LabError(
                    f"The checkpoint did not fit in your quota ({human(now_used)} needed, "
                    f"{human(quota)} allowed); nothing was saved. Remove a checkpoint first."
                )
            entry = next(s for s in self._list(q) if s["name"] == name)
        return entry, name in existing

    def restore(self, name: str) -> None:
        check_name(name)
        with self._qmp() as q:
            if name not in {s["name"] for s in self._list(q)}:
                raise LabError(f"No checkpoint named {name!r} (`labvm snapshot list` shows yours).")
            self._job(q, "snapshot-load", name, vmstate=STATE_NODE)

    def remove(self, name: str) -> None:
        check_name(name)
        with self._qmp() as q:
            if name not in {s["name"] for s in self._list(q)}:
                raise LabError(f"No checkpoint named {name!r} (`labvm snapshot list` shows yours).")
            self._job(q, "snapshot-delete", name)


def format_list(snaps: list[dict], used: int, quota: int) -> str:
    """The table `labvm snapshot list` prints (pure)."""
    lines = [f"{'NAME':20} {'SIZE':>9}  {'SAVED':19}  VM UPTIME"]
    for s in sorted(snaps, key=lambda s: (s.get("date-sec", 0), s["name"])):
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.get("date-sec", 0)))
        lines.append(
            f"{s['name']:20} {human(s.get('vm-state-size', 0)):>9}  {saved:19}  "
            f"{s.get('vm-clock-sec', 0)} s"
        )
    if not snaps:
        lines.append("(no checkpoints: `labvm snapshot save NAME` makes one)")
    lines.append(f"storage used {human(used)}" + (f" of {human(quota)}" if quota else ""))
    return "\n".join(lines)


def request_suspend(env: LabEnv, environ: dict | None = None) -> None:
    """Ask for this server to be stopped with its VM saved (`labvm suspend`)."""
    environ = os.environ if environ is None else environ
    if env.backend != "local":
        raise LabError(NO_SNAPSHOTS_ON_CLUSTER)
    url, token = environ.get("JUPYTERHUB_API_URL"), environ.get("JUPYTERHUB_API_TOKEN")
    user = environ.get("JUPYTERHUB_USER")
    if environ.get("LAB_VM_SUSPEND") == "never":
        raise LabError(
            "Suspending is turned off on this hub (LocalVMSpawner.suspend_on_stop); "
            "stop your server from the hub's page instead."
        )
    if not (url and token and user and env.qmp_socket):
        raise LabError("This is not a hub-started server: there is nothing to suspend it into.")
    try:
        with QMP(env.qmp_socket, timeout=10):
            pass
    except OSError:
        raise LabError("Your VM is not running; there is nothing to suspend.") from None
    marker = os.path.join(os.path.dirname(env.qmp_socket), REQUEST_FILE)
    with open(marker, "w") as f:
        f.write(f"{time.time():.0f}\n")
    server = environ.get("JUPYTERHUB_SERVER_NAME", "")
    path = f"/users/{quote(user, safe='')}/server" + (
        f"s/{quote(server, safe='')}" if server else ""
    )
    req = urllib.request.Request(
        url.rstrip("/") + path, method="DELETE", headers={"Authorization": f"token {token}"}
    )
    try:
        urllib.request.urlopen(req, timeout=30).close()
    except urllib.error.HTTPError as e:
        os.unlink(marker)
        said = e.read().decode(errors="replace")
        try:
            said = json.loads(said).get("message", said)
        except ValueError:
            pass
        raise LabError(f"The hub refused to stop your server ({e.code}: {said}).") from None
    except OSError as e:
        os.unlink(marker)
        raise LabError(f"Cannot reach the hub to stop your server: {e}") from None
