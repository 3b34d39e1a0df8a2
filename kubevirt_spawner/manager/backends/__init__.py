"""The lab manager's view of a backend: one class per backend, one protocol.

``core.LabManager`` never asks which backend a server runs on; it asks the
backend that owns the server's saved state (``contract.backend_of_state``) to
measure, inspect, reset, describe or reap. A new backend adds a module here
with a class that fulfils :class:`ManagerBackend` and one line in
:func:`registered`; ``tests/unit/manager/test_manager_backends.py`` checks every
registered class against the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

log = logging.getLogger("kubevirt_spawner.manager")


class ActionError(Exception):
    """An action that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Usage:
    """One measurement of a server's VM.

    A backend gives either ``cores`` (already averaged, e.g. metrics.k8s.io) or
    ``cpu_seconds`` (a running total, e.g. /proc) with ``start``, the identity of
    what it counts: the manager turns two totals of the same ``start`` into cores.
    """

    memory: int
    cores: float | None = None
    cpu_seconds: float | None = None
    start: int = 0


@runtime_checkable
class ManagerBackend(Protocol):
    name: str  # "local", "kubevirt": the metrics' and the dashboard's label

    def owns(self, state: Mapping) -> bool:
        """Whether a server's saved state is this backend's."""

    def has_vm(self, state: Mapping) -> bool:
        """Whether the saved state says a VM was started (for the running-VMs gauge)."""

    async def usage(self, servers: list) -> dict[str, Usage]:
        """CPU and memory of these servers' VMs (keyed by ServerInfo.key); a VM
        that cannot be measured now is left out."""

    async def inspect(self, s, script: str) -> tuple[int, str] | None:
        """Run the abuse monitor's script inside the VM: (status, output), or
        None where this backend cannot look inside."""

    async def vm_state(self, s) -> str:
        """One word for the dashboard: running, stopped, resetting, paused, ..."""

    async def reset(self, s, wait: bool, timeout: float) -> str:
        """Restart the VM with a fresh root filesystem: "resetting" or, with
        ``wait``, "ready"; ActionError when it cannot."""

    async def reap(self, servers: list, grace: float, metrics) -> list:
        """Delete what carries our marks but belongs to none of ``servers``."""

    def spawn_phases(self, s, started: float, ready: float) -> tuple[float, float] | None:
        """(VM seconds, notebook seconds) of a spawn that started and became
        ready at these epochs, or None where the backend cannot tell."""

    def request_suspend(self, state: Mapping) -> None:
        """Make the stop that follows (the idle cull's) a suspend, where the
        backend can suspend; otherwise nothing."""

    def saved_states(self, user: str) -> list[dict]:
        """The user's suspended VMs: dicts with name, bytes, saved_at, restorable."""

    async def discard_state(self, user: str, name: str) -> int:
        """Delete one saved state; the bytes freed (ActionError if it cannot)."""


async def delete_each(deletions, delete: Callable[[object], Awaitable], metrics) -> list:
    """Run ``delete`` on each of a reaper's deletions, logging and counting each;
    one failure does not stop the round. Returns the deletions that were done."""
    done = []
    for d in deletions:
        try:
            await delete(d)
        except Exception as e:
            metrics.reaper_errors.inc()
            log.error("Reaper: deleting %s failed: %s", d.log_line(), e)
            continue
        log.warning("Reaper deleted %s", d.log_line())
        metrics.reaped.labels(d.kind, d.reason).inc()
        done.append(d)
    return done


def registered(settings) -> list[ManagerBackend]:
    """The backends a manager with these settings watches: always the local
    one (its reaper also clears what a crashed hub left); the cluster when configured."""
    from .local import LocalBackend

    backends: list[ManagerBackend] = [
        LocalBackend(settings.runtime_root, settings.vm_state_dir_template)
    ]
    if settings.cluster is not None:
        backends.append(settings.cluster)
    return backends


__all__ = ["ActionError", "ManagerBackend", "Usage", "delete_each", "registered"]
