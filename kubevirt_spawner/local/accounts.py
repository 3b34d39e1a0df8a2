"""The system account a student's notebook and VM run as."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
from dataclasses import dataclass

from ..spawnerror import SpawnError

_POSIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def shared_account(home: str) -> Account:
    """The hub's own account, with ``home`` (created) as the student's directory."""
    pw = pwd.getpwuid(os.getuid())
    os.makedirs(home, mode=0o700, exist_ok=True)
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, home)


async def system_account(name: str, create: bool, log) -> Account:
    """The system account ``name``; created with useradd if missing and ``create``.

    Raises SpawnError, in words for the student, when it cannot be had.
    """
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise SpawnError(
                f"There is no system account named {name!r} on this server. Ask an "
                "administrator to create it, or set LocalVMSpawner.create_system_users = True.",
                reason="account",
                status_code=403,
            ) from None
        if not _POSIX_NAME.fullmatch(name):
            raise SpawnError(
                f"Cannot create a system account for {name!r}: account names must be "
                "lower-case letters, digits, '_' or '-', at most 32 characters.",
                reason="account",
                status_code=400,
            ) from None
        log.info("Creating system account %s", name)
        proc = await asyncio.create_subprocess_exec(
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--user-group",
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SpawnError(f"useradd {name} failed: {out.decode().strip()}") from None
        pw = pwd.getpwnam(name)
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
