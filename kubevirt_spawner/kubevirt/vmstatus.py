"""Reading a KubeVirt VM's state: pure functions over the VM, VMI and event
dicts the reflectors cache, used by ``KubeVirtSpawner`` for progress, fast
failure and ``poll()``.

ref: kubevirt.io/api/core/v1 types.go (VirtualMachinePrintableStatus,
VirtualMachineInstancePhase, VirtualMachineInstanceConditionType).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# printableStatus values that mean "this start will not succeed by waiting",
# with the sentence the student sees.
SPAWN_FAILURES = {
    "ErrImagePull": "the VM image could not be pulled",
    "ImagePullBackOff": "the VM image could not be pulled",
    "ErrorUnschedulable": "no node can run the VM",
    "CrashLoopBackOff": "the VM keeps crashing",
    "ErrorPvcNotFound": "a volume of the VM does not exist",
    "DataVolumeError": "a volume of the VM failed",
}

# printableStatus values of a runStrategy-Always VM that will not run again
# by waiting (for poll()). Stopped, Stopping and Starting are left out, and so
# is a Failed instance: KubeVirt replaces an instance that ended (a guest
# poweroff or crash, `labvm reset` deleting it) and shows the VM "Stopped"
# between the two instances (seen on KubeVirt v1.8.4); repeated crashes end in
# CrashLoopBackOff.
NOT_RUNNING = set(SPAWN_FAILURES)

# Launcher pod names come from generateName "virt-launcher-<vmi>-", which the
# API server truncates to 58 characters before adding 5 random ones.
_GENERATE_NAME_MAX = 58


def _status(obj: Mapping | None) -> Mapping:
    return (obj or {}).get("status") or {}


def _condition(obj: Mapping | None, ctype: str) -> Mapping | None:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def printable_status(vm: Mapping | None) -> str:
    return _status(vm).get("printableStatus", "")


def vmi_phase(vmi: Mapping | None) -> str:
    return _status(vmi).get("phase", "")


def is_launcher_event(event: Mapping, vm_name: str, vmi: Mapping | None = None) -> bool:
    """Whether a Pod event is about this VM's virt-launcher pod."""
    obj = event.get("involvedObject") or {}
    if obj.get("kind") != "Pod":
        return False
    if obj.get("uid") and obj["uid"] in (_status(vmi).get("activePods") or {}):
        return True
    prefix = f"virt-launcher-{vm_name}-"[:_GENERATE_NAME_MAX]
    name = obj.get("name", "")
    return name.startswith(prefix) and len(name) == len(prefix) + 5


def is_vm_event(event: Mapping, vm_name: str) -> bool:
    """Whether an event is about this VM or its VMI (they share the name)."""
    obj = event.get("involvedObject") or {}
    return obj.get("kind") in ("VirtualMachine", "VirtualMachineInstance") and (
        obj.get("name") == vm_name
    )


def format_event(event: Mapping) -> str:
    when = event.get("lastTimestamp") or event.get("eventTime") or ""
    kind = (event.get("involvedObject") or {}).get("kind", "")
    return f"{when} [{event.get('type', '')}] {kind}: {event.get('message', '')}".strip()


def spawn_failure(
    vm: Mapping | None, vmi: Mapping | None, events: Iterable[Mapping] = ()
) -> str | None:
    """A sentence saying why this VM will not start, or None while it still may.

    ``events`` are the VM's, VMI's and launcher pod's events (oldest first);
    the last warning among them is added as the detail.
    """
    printable = printable_status(vm)
    reason = None
    if printable in SPAWN_FAILURES:
        reason = f"{SPAWN_FAILURES[printable]} ({printable})"
    else:
        scheduled = _condition(vmi, "PodScheduled")
        if (
            scheduled
            and scheduled.get("status") == "False"
            and scheduled.get("reason") == "Unschedulable"
        ):
            reason = f"no node can run the VM (Unschedulable: {scheduled.get('message', '')})"
        elif vmi_phase(vmi) == "Failed":
            reason = "the VM failed to start (VMI phase Failed)"
    if reason is None:
        return None
    warnings = [e for e in events if e.get("type") == "Warning" and e.get("message")]
    if warnings and "Unschedulable:" not in reason:
        reason += f": {warnings[-1]['message']}"
    return reason


def vm_ready(vmi: Mapping | None) -> bool:
    """The guest is up: VMI Running and Ready (its readiness probe on ssh passed)."""
    ready = _condition(vmi, "Ready")
    return vmi_phase(vmi) == "Running" and bool(ready) and ready.get("status") == "True"


def vm_exit_reason(vm: Mapping | None, vmi: Mapping | None) -> str | None:
    """For ``poll()``: why a started VM is no longer running, or None if it is."""
    if vm is None:
        return "its VirtualMachine was deleted"
    if (vm.get("metadata") or {}).get("deletionTimestamp"):
        return "its VirtualMachine is being deleted"
    run_strategy = (vm.get("spec") or {}).get("runStrategy", "")
    if run_strategy != "Always":
        return f"its VM was set to runStrategy {run_strategy or 'none'} (stopped)"
    printable = printable_status(vm)
    if printable in NOT_RUNNING:
        return f"its VM is {printable}"
    return None


def describe(vm: Mapping | None, vmi: Mapping | None) -> str:
    """One line of progress: the VM's printable status and the VMI's phase."""
    parts = []
    if printable_status(vm):
        parts.append(f"VM {printable_status(vm)}")
    if vmi_phase(vmi):
        parts.append(f"instance {vmi_phase(vmi)}")
    if vm_ready(vmi):
        parts.append("guest ssh ready")
    return ", ".join(parts) or "VM requested"


# KubeVirt's launcher pods carry this label with their VMI's uid, and (unless
# the KubeVirt CR sets virtualMachineOptions.disableSerialConsoleLog) a
# container of this name that prints the guest's serial console.
LAUNCHER_VMI_LABEL = "kubevirt.io/created-by"
CONSOLE_CONTAINER = "guest-console-log"


def console_tail(text: str, lines: int = 12, width: int = 160) -> list[str]:
    """The last ``lines`` non-blank lines of a serial console's output, with
    terminal escapes and other control characters taken out and each line cut
    to ``width`` characters: what a spawn error shows of why a guest never
    came up."""
    out = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _ESCAPE.sub("", raw)
        line = "".join(c for c in line if c.isprintable() or c == "\t").strip()
        if line:
            out.append(line if len(line) <= width else line[: width - 1] + "…")
    return out[-lines:] if lines > 0 else []


# CSI sequences (ESC [ ... final), then any other ESC sequence (ESC, intermediates, final).
_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[ -/]*[0-~])")
