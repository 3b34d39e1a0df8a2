"""The cluster backend: a KubeVirt VirtualMachine beside each notebook pod
(``KubeVirtSpawner`` in :mod:`.spawner`). Imported lazily: the pure builders
(:mod:`.manifests`, :mod:`.cloudinit`) load without kubespawner installed."""


def __getattr__(name):
    if name == "KubeVirtSpawner":
        from .spawner import KubeVirtSpawner

        return KubeVirtSpawner
    raise AttributeError(name)
