"""The real KubeVirt cluster as the tests see it (see conftest.kubevirt_cluster).

:func:`real_cluster` brings up scripts/kubevirt-cluster.sh's cluster for the
session (or takes a running one named by ``KVS_KUBEVIRT_CLUSTER``);
:class:`RealCluster` gives the tests API clients, the node's network
namespace, the images, and diagnostics that say what the cluster said when
a test fails: events, pod states, virt-handler's and virt-launcher's logs,
the VM's serial console.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from harness import kvcluster
from harness.kube import Cluster, wait_for
from harness.nodens import NetnsDialer

TEST_NAME = "kvs-test"


@dataclass
class RealCluster:
    node: kvcluster.Node
    kube: Cluster
    images: dict
    dialer: NetnsDialer
    started_here: bool
    timings: dict = field(default_factory=dict)

    @property
    def core(self) -> client.CoreV1Api:
        return self.kube.core

    @property
    def netns(self) -> str:
        return self.node.netns

    # -- namespaces -----------------------------------------------------------
    @contextmanager
    def namespace(self, request=None, *, hook: bool = True) -> Iterator[str]:
        """A fresh namespace with the debug hook's ConfigMap applied (as an
        instructor applies kubevirt-build/sidecar/configmap.yaml); deleted after."""
        name = f"kvs-r-{secrets.token_hex(3)}"
        self.core.create_namespace({"metadata": {"name": name, "labels": {"kvs-test": "true"}}})
        wait_for(
            f"ServiceAccount {name}/default",
            lambda: self.core.read_namespaced_service_account("default", name),
            60,
        )
        if hook:
            cm = yaml.safe_load(kvcluster.HOOK_CONFIGMAP.read_text())
            self.core.create_namespaced_config_map(name, cm)
        try:
            yield name
        finally:
            rep = getattr(getattr(request, "node", None), "rep_call", None) if request else None
            if rep is not None and rep.failed:
                print(self.diagnostics(name))
            try:
                self.core.delete_namespace(name)
            except ApiException:
                pass

    # -- what the cluster said -------------------------------------------------
    def pod_log(
        self, namespace: str, pod: str, container: str | None = None, lines: int = 40
    ) -> str:
        try:
            kw = {"container": container} if container else {}
            text = self.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines, **kw)
        except ApiException as e:
            text = f"({e.status} {e.reason})"
        return f"--- log {namespace}/{pod}{'/' + container if container else ''} ---\n{text}"

    def diagnostics(self, namespace: str) -> str:
        """What the node, KubeVirt and each VM said, most telling last.

        The node's and virt-handler's logs come first and each VM's guest
        console at the very end: a report cut to its tail (CI shows only the
        end of a run) still says why a guest never came up.
        """
        out = []
        for p in self.core.list_namespaced_pod(
            kvcluster.KUBEVIRT_NS, label_selector="kubevirt.io=virt-handler"
        ).items:
            out.append(self.pod_log(kvcluster.KUBEVIRT_NS, p.metadata.name, "virt-handler", 40))
        out.append(self.node.log_tail("kubelet", 30))
        out += [f"--- events in {namespace} ---", *self.kube.events(namespace)]
        consoles = []
        try:
            pods = self.core.list_namespaced_pod(namespace).items
        except ApiException as e:
            pods = []
            out.append(f"(pods: {e.status})")
        for p in pods:
            states = []
            for cs in (p.status.init_container_statuses or []) + (
                p.status.container_statuses or []
            ):
                st = cs.state
                s = (
                    (st.waiting and f"waiting {st.waiting.reason}: {st.waiting.message or ''}")
                    or (
                        st.terminated
                        and f"terminated {st.terminated.reason} ({st.terminated.exit_code})"
                    )
                    or "running"
                )
                states.append(f"{cs.name}={s}")
            out.append(
                f"pod {p.metadata.name} {p.status.phase} ip={p.status.pod_ip} {'; '.join(states)}"
            )
            if p.metadata.name.startswith("virt-launcher-"):
                out.append(self.pod_log(namespace, p.metadata.name, "compute", 60))
                for c in p.spec.containers:
                    if c.name.startswith("hook-sidecar"):
                        out.append(self.pod_log(namespace, p.metadata.name, c.name, 20))
                consoles.append(self.pod_log(namespace, p.metadata.name, "guest-console-log", 60))
        try:
            for vm in self.kube.custom.list_namespaced_custom_object(
                "kubevirt.io", "v1", namespace, "virtualmachineinstances"
            )["items"]:
                st = vm.get("status") or {}
                out.append(
                    f"vmi {vm['metadata']['name']} phase={st.get('phase')} "
                    f"conditions={json.dumps(st.get('conditions'))}"
                )
        except ApiException:
            pass
        return "\n".join(out + consoles)

    def qemu_processes(self) -> list[tuple[int, str]]:
        """QEMU processes of the node (seen from the machine's /proc), with their command lines."""
        root = self.node.cfg["cgroup_root"]
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
                cg = Path(f"/proc/{d}/cgroup").read_text()
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"qemu-system-x86_64") and f":{root}/" in cg:
                found.append((int(d), " ".join(c.decode(errors="replace") for c in cmd)))
        return found


def _images() -> dict:
    cache = kvcluster.cache_dir() / "images"
    project = json.loads((cache / "current.json").read_text())
    kv = json.loads((cache / "kubevirt.json").read_text())
    return {
        "notebook": project["notebook"],
        "vm-debian": project["vm-debian"],
        "kernel_release": project["vm_kernel"]["release"],
        "blank-disk": kv["images"]["blank-disk"],
        "kubevirt_version": kv["kubevirt_version"],
        "missing": f"{kv['registry']}/no-such-containerdisk:{kv['tag']}",
    }


@contextmanager
def real_cluster() -> Iterator[RealCluster]:
    name = os.environ.get("KVS_KUBEVIRT_CLUSTER")
    if name:
        node = kvcluster.Node(kvcluster.default_state(name).resolve())
        if not node.alive():
            raise RuntimeError(
                f"KVS_KUBEVIRT_CLUSTER={name}: that cluster is not running "
                f"(scripts/kubevirt-cluster.sh up --name {name})"
            )
        started = False
        # Images rebuilt since that cluster came up (e.g. the notebook image
        # after a change to the package) are imported now.
        index = json.loads((kvcluster.cache_dir() / "images" / "kubevirt.json").read_text())
        imgs = _images()
        node.load_images(
            [imgs["notebook"], imgs["vm-debian"], imgs["blank-disk"]], index["storage"]
        )
    else:
        node = kvcluster.up(TEST_NAME, attached=True)
        started = True
    try:
        kube = Cluster(
            node.kubeconfig,
            f"https://127.0.0.1:{node.api_port}",
            str(node.state / "pki" / "ca.crt"),
        )
        timings = {}
        if (node.state / "timings.json").exists():
            timings = json.loads((node.state / "timings.json").read_text())
            sys.stderr.write(f"\nkubevirt cluster up: {timings}\n")
        yield RealCluster(node, kube, _images(), NetnsDialer(node.netns), started, timings)
    finally:
        if started:
            left = kvcluster.down(state=node.state)
            if left:
                raise AssertionError(f"the real cluster left behind: {left}")
