"""JupyterHub spawners that give every student a debug-mode Linux VM beside
their JupyterLab: ``LocalVMSpawner`` (local QEMU, the embedded default) and
``KubeVirtSpawner`` (Kubernetes + KubeVirt)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily: `labvm` and the lab notebooks import this package in
    # environments that have neither JupyterHub's spawner machinery loaded nor
    # the Kubernetes client installed.
    if name == "LocalVMSpawner":
        from .local.spawner import LocalVMSpawner

        return LocalVMSpawner
    if name == "KubeVirtSpawner":
        from .kubevirt.spawner import KubeVirtSpawner

        return KubeVirtSpawner
    raise AttributeError(name)


__all__ = ["KubeVirtSpawner", "LocalVMSpawner"]
