"""The one spawn error of both backends.

A JupyterHub SpawnException: the hub shows the message to the student, logs it
without a traceback, and answers a REST caller with ``status_code`` (500, a
failure of the machine, unless the request itself is at fault: 400). Kept out
of contract.py because it needs JupyterHub, which ``labvm`` does not load.
"""

from __future__ import annotations

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6 has none; the same shape on tornado's HTTPError
    from tornado.web import HTTPError

    class SpawnException(HTTPError):
        def __init__(self, message, *, reason, status_code=400, **_):
            super().__init__(status_code, message, reason=reason)
            self.jupyterhub_message = message
            self.message = message


class SpawnError(SpawnException):
    """A spawn failure whose message is meant for the student."""

    def __init__(self, message: str, *, reason: str = "spawn", status_code: int = 500):
        super().__init__(message, reason=reason, status_code=status_code)

    def __str__(self) -> str:
        return self.message
