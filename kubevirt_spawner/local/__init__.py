"""The embedded default backend: one QEMU per server on this machine
(``LocalVMSpawner`` in :mod:`.spawner`, its settings in :mod:`.settings`).
Imported lazily, so that :mod:`.qemu` or :mod:`.guest` load without JupyterHub's
spawner machinery."""


def __getattr__(name):
    if name == "LocalVMSpawner":
        from .spawner import LocalVMSpawner

        return LocalVMSpawner
    raise AttributeError(name)
