"""Run commands in a pod's container through the API server (``kubectl exec``),
the way a student's JupyterLab terminal runs them in the notebook pod."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from kubernetes import client
from kubernetes.stream import stream


@dataclass
class ExecResult:
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.rc}\n--- stdout ---\n{self.out[-4000:]}\n--- stderr ---\n{self.err[-4000:]}"


def pod_exec(
    core: client.CoreV1Api,
    namespace: str,
    pod: str,
    command: str,
    *,
    container: str | None = None,
    timeout: float = 120,
) -> ExecResult:
    """``bash -lc COMMAND`` in the pod; its exit status, stdout and stderr.

    A login shell, as a terminal would start, so the image's PATH and the
    pod's environment (``LAB_*``) apply.
    """
    kw = {"container": container} if container else {}
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=["bash", "-lc", command],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
        **kw,
    )
    out, err = [], []
    deadline = time.monotonic() + timeout
    try:
        while resp.is_open():
            resp.update(timeout=1)
            if resp.peek_stdout():
                out.append(resp.read_stdout())
            if resp.peek_stderr():
                err.append(resp.read_stderr())
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"exec in {namespace}/{pod} did not finish in {timeout:.0f}s: {command!r}\n"
                    f"stdout so far:\n{''.join(out)[-3000:]}\nstderr so far:\n{''.join(err)[-3000:]}"
                )
        status = resp.read_channel(3)  # the API's error channel: the exit status
    finally:
        resp.close()
    rc = 0
    if status:
        st = json.loads(status)
        if st.get("status") != "Success":
            rc = 1
            for cause in (st.get("details") or {}).get("causes") or []:
                if cause.get("reason") == "ExitCode":
                    rc = int(cause.get("message", 1))
    return ExecResult(rc, "".join(out), "".join(err))
