"""Moved to :mod:`kubevirt_spawner.local.spawner`; this path stays for one release."""

from .local.spawner import LocalVMSpawner, default_runtime_root  # noqa: F401
