"""Many KubeVirtSpawner stops, without a hub, against the API server that
``KUBECONFIG`` names (test_stop_under_faults.py points it at the FaultProxy).

    python -m harness.stopper create --namespace NS --servers 100
    python -m harness.stopper stop --namespace NS --servers 100 --batch 20

``create`` makes, for users ``s000``…, what ``KubeVirtSpawner.start()``
makes, with the spawner's own code: the VM, its Secret, Service and
NetworkPolicy (owned by the VM), the notebook pod (``get_pod_manifest``) and
the VM's owner reference to that pod. ``stop`` calls ``KubeVirtSpawner.stop()``
for each, ``--batch`` at a time, and prints one JSON line per stop:
``{"user": "s000", "ok": true, "error": "", "seconds": 1.2}``.

A subprocess, so that kubernetes_asyncio reads this ``KUBECONFIG`` (it reads
the variable once, at import).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from harness.kubefakes import HUB, User, orm_spawner
from kubevirt_spawner import KubeVirtSpawner

IMAGES = {"debian-12": {"containerdisk": {"x86_64": "reg/debian:12"}, "vmlinux": "", "kdir": ""}}


def users(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


def spawner(user: str, args) -> KubeVirtSpawner:
    s = KubeVirtSpawner(
        user=User(user),
        hub=HUB,
        orm_spawner=orm_spawner(),
        namespace=args.namespace,
        vm_images=IMAGES,
        vm_memory="256Mi",
        image="quay.io/jupyter/minimal-notebook:2025-06-02",
        delete_grace_period=1,
        k8s_api_request_timeout=args.request_timeout,
        vm_delete_timeout=args.delete_timeout,
    )
    s.api_token = "not-used"
    return s


async def create(user: str, args) -> None:
    s = spawner(user, args)
    await s.load_user_options()
    await s._create_vm_objects()
    pod = await s.get_pod_manifest()
    made = await s.api.create_namespaced_pod(args.namespace, pod)
    await s._adopt_vm(made.metadata.uid)


async def stop(user: str, args) -> dict:
    s = spawner(user, args)
    t0 = time.monotonic()
    try:
        await s.stop()
        return {"user": user, "ok": True, "error": "", "seconds": time.monotonic() - t0}
    except Exception as e:  # reported, and the test fails on it
        return {"user": user, "ok": False, "error": repr(e), "seconds": time.monotonic() - t0}


async def main(args) -> int:
    names = users(args.servers)
    for i in range(0, len(names), args.batch):
        batch = names[i : i + args.batch]
        if args.action == "create":
            await asyncio.gather(*(create(u, args) for u in batch))
        else:
            for result in await asyncio.gather(*(stop(u, args) for u in batch)):
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("create", "stop"))
    p.add_argument("--namespace", required=True)
    p.add_argument("--servers", type=int, default=100)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--request-timeout", type=float, default=2.0)
    p.add_argument("--delete-timeout", type=float, default=300.0)
    sys.exit(asyncio.run(main(p.parse_args())))
