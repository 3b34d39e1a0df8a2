"""Declare the lab manager (kubevirt_spawner.manager) as a JupyterHub service.

Used from a hub config file, after ``c = get_config()``::

    from kubevirt_spawner.hubconfig import add_lab_manager
    add_lab_manager(c, args=["--idle-timeout=3600"])

``add_lab_manager`` appends to ``c.JupyterHub.services`` and
``c.JupyterHub.load_roles`` (so it composes with services declared before
it), grants the ``instructors`` group access to the dashboard, and gives
notebook servers ``LAB_MANAGER_URL`` (how ``labvm reset`` and check cells
reach the service).
"""

import os
import sys

from .. import hubchild


def add_lab_manager(
    c,
    *,
    name="lab-manager",
    port=10101,
    ip="127.0.0.1",
    public_host="127.0.0.1",
    instructors_group="instructors",
    notebook_url=None,
    args=(),
    environment=None,
    end_with_hub=True,
):
    """Start the lab manager with the hub; extra command-line ``args``
    (e.g. ``["--idle-timeout=3600", "--abuse-action=stop"]``) configure it;
    ``python -m kubevirt_spawner.manager --help-all`` lists them all.

    ``public_host`` is where the hub's proxy reaches the service;
    ``notebook_url`` is how notebook servers reach it (default: directly, at
    ``http://public_host:port/services/NAME/``; on a cluster use the proxy,
    e.g. ``http://proxy-public/services/lab-manager/``).

    ``end_with_hub``: the service gets SIGTERM when the hub process exits,
    however it exits (kubevirt_spawner.hubchild), so that a crashed or
    failed hub leaves no manager behind holding the port."""
    cmd = [sys.executable, "-m", "kubevirt_spawner.manager", f"--port={port}", f"--ip={ip}"]
    spawner_cfg = c.LocalVMSpawner
    if "runtime_root" in spawner_cfg:
        cmd.append(f"--runtime-root={spawner_cfg.runtime_root}")
    cmd += list(args)
    if end_with_hub:
        cmd = hubchild.command(os.getpid(), cmd)
    service = {
        "name": name,
        "url": f"http://{public_host}:{port}",
        "command": cmd,
        "oauth_no_confirm": True,
        "environment": {"PYTHONUNBUFFERED": "1", **(environment or {})},
    }
    c.JupyterHub.services.append(service)
    c.JupyterHub.load_roles.append(
        {
            "name": f"{name}-service",
            "services": [name],
            "scopes": [
                "list:users",
                "read:users",
                "read:users:activity",
                "read:servers",
                "admin:server_state",
                "servers",
                "read:groups",
            ],
        }
    )
    c.JupyterHub.load_roles.append(
        {
            "name": f"{name}-instructors",
            "groups": [instructors_group],
            "scopes": [f"access:services!service={name}"],
        }
    )
    url = notebook_url or f"http://{public_host}:{port}/services/{name}/"
    c.Spawner.environment.update({"LAB_MANAGER_URL": url})
    return service
