"""A small synchronous QMP client (QEMU's JSON monitor), standard library only.

Used by the student's side (``labvm snapshot``, ``labvm reset``), by the
suspend helper that runs as the student (``kubevirt_spawner.vmstate``)
and by the lab manager; each reaches the monitor socket in the VM's runtime
directory.
ref: https://www.qemu.org/docs/master/interop/qemu-qmp-ref.html
"""

from __future__ import annotations

import json
import socket
import time

from .contract import LabError


class QMPError(Exception):
    """QEMU refused a command, or a job it ran failed; ``str()`` is QEMU's reason."""


class QMP:
    """One monitor connection: ``with QMP(path) as q: q.execute("query-status")``.

    Connecting raises OSError when no QEMU listens (the VM is down).
    """

    def __init__(self, path: str, timeout: float = 30.0):
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rwb")
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self._file.readline()
        if not line:
            raise OSError("QEMU closed its monitor connection")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> dict | list:
        """Run ``command``; return its ``return`` value (events in between are skipped)."""
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QMPError(reply["error"].get("desc", str(reply["error"])))
            return reply.get("return", {})

    def run_job(self, command: str, job_id: str, timeout: float = 300.0, **arguments) -> None:
        """Start a job command (snapshot-save, -load, -delete), wait until it
        concludes, dismiss it; raise QMPError with the job's error if it failed."""
        self.execute(command, **{"job-id": job_id, **arguments})
        deadline = time.monotonic() + timeout
        while True:
            jobs = {j["id"]: j for j in self.execute("query-jobs")}
            job = jobs.get(job_id)
            if job is None:
                return
            if job["status"] == "concluded":
                self.execute("job-dismiss", id=job_id)
                if job.get("error"):
                    raise QMPError(job["error"])
                return
            if time.monotonic() > deadline:
                raise QMPError(f"{command} did not finish within {timeout:.0f}s")
            time.sleep(0.05)

    def migrate_and_wait(self, uri: str, timeout: float = 300.0) -> dict:
        """Migrate the VM to ``uri``; wait until it completed; return query-migrate's answer."""
        self.execute("migrate", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            info = self.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QMPError(info.get("error-desc", f"migration {status}"))
            if time.monotonic() > deadline:
                self.execute("migrate_cancel")
                raise QMPError(f"saving the VM did not finish within {timeout:.0f}s")
            time.sleep(0.02)

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def qmp_command(socket_path: str, command: str, timeout: float = 10.0) -> dict:
    """Send one QMP command to QEMU's monitor socket; return its reply
    (``{"return": ...}``). OSError when no QEMU listens; LabError, in one
    sentence, when QEMU refuses the command."""
    with QMP(socket_path, timeout) as q:
        try:
            return {"return": q.execute(command)}
        except QMPError as e:
            raise LabError(f"QEMU refused {command}: {e}") from None
