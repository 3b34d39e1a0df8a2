"""The student's side of the lab manager's API, for ``labvm`` and check cells.

Standard library only (it runs in the notebook environment). Authenticates
with the token JupyterHub gives the single-user server
(``JUPYTERHUB_API_TOKEN``); finds the service at ``LAB_MANAGER_URL``.

In a check cell::

    from kubevirt_spawner.managerclient import report_check
    report_check("lab7-edu", "reads-id-register", passed=ok)
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import quote


class ManagerError(Exception):
    """The lab manager could not be reached or refused; one sentence for the student."""


def _config(environ: Mapping[str, str] | None) -> tuple[str, str, str]:
    env = os.environ if environ is None else environ
    url, token, user = (
        env.get(k, "") for k in ("LAB_MANAGER_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER")
    )
    if not url or not token:
        raise ManagerError(
            "This server does not know the lab manager (LAB_MANAGER_URL or "
            "JUPYTERHUB_API_TOKEN is missing); ask your instructor."
        )
    return url.rstrip("/") + "/", token, user


def call(
    method: str,
    path: str,
    body: dict | None = None,
    timeout: float = 30,
    environ: Mapping[str, str] | None = None,
) -> dict:
    url, token, _ = _config(environ)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            message = e.reason
        raise ManagerError(f"The lab manager refused ({e.code}): {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ManagerError(f"Cannot reach the lab manager at {url}: {e}") from None


#: How much longer than the wait it asked for the client gives the manager to answer.
ANSWER_MARGIN = 30


def reset_vm(timeout: float = 600, environ: Mapping[str, str] | None = None) -> dict:
    """Ask the lab manager to reset this user's VM and wait until it is back
    (the manager answers within ``timeout`` seconds, 504 if the VM is not)."""
    _, _, user = _config(environ)
    if not user:
        raise ManagerError("JUPYTERHUB_USER is not set; is this a JupyterHub server?")
    path = f"api/users/{quote(user, safe='')}/reset?wait={timeout:g}"
    try:
        return call("POST", path, {}, timeout + ANSWER_MARGIN, environ)
    except ManagerError as e:
        if "timed out" not in str(e):
            raise
        raise ManagerError(
            f"The lab manager did not answer within {timeout + ANSWER_MARGIN:g}s; the reset "
            "may still be under way: `labvm status` shows when your VM is back."
        ) from None


def report_check(
    lab: str,
    check: str,
    passed: bool,
    message: str = "",
    when: float | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 15,
) -> dict:
    """Record one check result for this user (shown live on the dashboard).
    kubevirt_spawner.checks.report calls this for every check cell."""
    body = {
        "lab": lab,
        "check": check,
        "passed": bool(passed),
        "message": message[:2000],
        "time": time.time() if when is None else when,
    }
    return call("POST", "api/progress", body, timeout, environ)
