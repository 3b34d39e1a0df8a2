"""A one-machine Kubernetes cluster running real KubeVirt (scripts/kubevirt-cluster.sh).

``up`` builds what is missing (scripts/build-cluster-bins.sh,
scripts/build-kubevirt-node.sh, images/build.sh, images/kubevirt/build.sh;
all cached by their inputs), writes the node's certificates and
configuration, starts the node (``kvnode``: its own mount, network, UTS and
PID namespaces), exports the images containerd does not have yet, installs
KubeVirt through its own virt-operator and a KubeVirt CR, and waits until
KubeVirt reports ``Deployed``. ``down`` stops it and checks that nothing is
left: no process, mount, network namespace or cgroup of the node.

The tests use the same functions (``up``, ``down``, :class:`Node`); a person
uses the script. Imports beyond the standard library happen inside the
functions that need them, so ``--help`` and argument errors work anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

from harness import (  # noqa: E402
    kvnode,
    module_command,
    nodens,
)

DEFAULT_NAME = "kvs"
NODE_NAME = "kvs-node"
KUBEVIRT_NS = "kubevirt"
KUBEVIRT_CR = REPO / "kubevirt-build" / "kubevirt-cr.yaml"
HOOK_CONFIGMAP = REPO / "kubevirt-build" / "sidecar" / "configmap.yaml"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# Gates the test cluster adds to kubevirt-build/kubevirt-cr.yaml's: Root runs
# virt-launcher as root, which the virtqemud shim needs (images/kubevirt).
EXTRA_GATES = ["Root"]


class ClusterError(RuntimeError):
    """Bring-up or teardown failed; the message says what and where to look."""


def log(msg: str, *args) -> None:
    print("kubevirt-cluster: " + (msg % args if args else msg), file=sys.stderr, flush=True)


def cache_dir() -> Path:
    if os.environ.get("KVS_CACHE_DIR"):
        return Path(os.environ["KVS_CACHE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/cache/kubevirt-spawner")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubevirt-spawner"


def default_state(name: str) -> Path:
    return Path(os.environ.get("KVS_CLUSTER_DIR", "/var/tmp/kubevirt-cluster")) / name


def _last_line(argv: list[str], what: str) -> str:
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise ClusterError(
            f"{what} failed ({' '.join(argv)} exited {r.returncode}; see its output above)"
        )
    took = time.monotonic() - t0
    if took > 5:
        log("%s took %.0fs", what, took)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


def build_all() -> dict:
    """Build (or find cached) every binary and image; return their locations."""
    cluster_bins = Path(
        _last_line([str(REPO / "scripts/build-cluster-bins.sh")], "control-plane build")
    )
    kv_index = json.loads(
        subprocess.run(
            [str(REPO / "images/kubevirt/build.sh"), "--print-index"],
            cwd=REPO,
            check=False,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        or "{}"
    )
    if not kv_index.get("images"):
        raise ClusterError("images/kubevirt/build.sh failed (see its output above)")
    r = subprocess.run(
        [str(REPO / "images/build.sh"), "--print-index", "vm-debian", "notebook"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    if r.returncode != 0:
        raise ClusterError("images/build.sh vm-debian notebook failed (see its output above)")
    project = json.loads(r.stdout)
    return {
        "cluster_bins": cluster_bins,
        "node_bins": Path(kv_index["node"]),
        "kubevirt": kv_index,
        "project": project,
    }


# ---------------------------------------------------------------------------
# certificates, kubeconfigs, the node's configuration
# ---------------------------------------------------------------------------
def write_pki(state: Path, api_port: int) -> None:
    from harness.controlplane import write_kubeconfig
    from harness.pki import CertificateAuthority, write_service_account_keys

    pki = state / "pki"
    ca = CertificateAuthority(pki, validity_days=30)
    ca.issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=("127.0.0.1", kvnode.NODE_IP, "10.96.0.1"),
    )
    ca.issue(
        "kubelet-serving",
        f"system:node:{NODE_NAME}",
        server=True,
        dns_names=(NODE_NAME,),
        ip_addresses=(kvnode.NODE_IP,),
    )
    ca.issue(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organization="system:masters",
        client=True,
    )
    front = CertificateAuthority(
        pki, name="kubevirt-spawner-front-proxy-ca", stem="front-proxy-ca", validity_days=30
    )
    front.issue("front-proxy-client", "front-proxy-client", client=True)
    write_service_account_keys(pki)
    users = {
        "admin": ("kvs-admin", "system:masters"),
        "kcm": ("system:kube-controller-manager", None),
        "scheduler": ("system:kube-scheduler", None),
        "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
        "kube-proxy": ("system:kube-proxy", None),
        "kube-router": ("system:kube-router", None),
        "coredns": ("system:coredns", None),
    }
    kc = state / "kubeconfigs"
    kc.mkdir(exist_ok=True)
    inside = f"https://{kvnode.NODE_IP}:{kvnode.API_PORT}"
    for stem, (cn, org) in users.items():
        pair = ca.issue(stem, cn, organization=org, client=True)
        write_kubeconfig(kc / stem, inside, ca.cert_path, user=stem, cert=pair)
        if stem == "admin":
            # The same identity from the machine, through the forwarded port.
            write_kubeconfig(
                kc / "admin-host",
                f"https://127.0.0.1:{api_port}",
                ca.cert_path,
                user=stem,
                cert=pair,
            )
    # kvnode's own calls (kubectl apply at start) use the node-side admin config.
    shutil.copy(kc / "admin", kc / "admin-node")


def bootstrap_objects() -> list[dict]:
    """RBAC for the node's host processes that have no built-in role
    (kube-proxy's, system:node-proxier, comes with the API server)."""

    def role(name: str, rules: list[dict]) -> list[dict]:
        return [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}
                ],
            },
        ]

    read = ["get", "list", "watch"]
    return [
        # What CoreDNS's kubernetes plugin reads (its deployment's ClusterRole).
        *role(
            "system:coredns",
            [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        ),
        # kube-router's network-policy controller (its daemonset's ClusterRole,
        # without the routing and service-proxy parts this node does not run).
        *role(
            "system:kube-router",
            [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": read,
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                },
            ],
        ),
    ]


def image_refs(built: dict) -> list[str]:
    kv = built["kubevirt"]["images"]
    return [*kv.values(), built["project"]["vm-debian"], built["project"]["notebook"]]


def prepare(name: str, state: Path, built: dict, api_port: int, minimal: bool = False) -> dict:
    if state.exists():
        shutil.rmtree(state)
    for d in ("logs", "etc", "images"):
        (state / d).mkdir(parents=True, exist_ok=True)
    state.chmod(0o711)
    write_pki(state, api_port)
    (state / "etc" / "bootstrap.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": bootstrap_objects()}, indent=1)
    )
    store = cache_dir() / "kubevirt-cluster"
    store.mkdir(parents=True, exist_ok=True)
    root, lock = store / "containerd", store / "containerd.lock"
    if minimal or not _lock_free(lock):
        # Its own image store: only the pause image, or another cluster holds the shared one.
        if not minimal:
            log("the shared image store is in use (%s): this cluster imports into its own", lock)
        root, lock = state / "containerd", None
    cfg = {
        "name": name,
        "state": str(state),
        "node_name": NODE_NAME,
        "bins": {"cluster": str(built["cluster_bins"]), "node": str(built["node_bins"])},
        "cgroup_root": f"/kvs-{name}",
        # The image store outlives the cluster (imports are the slow part of a
        # bring-up); one cluster at a time holds its lock.
        "containerd_root": str(root),
        "containerd_lock": str(lock) if lock else None,
        "pause_image": built["kubevirt"]["images"]["pause"],
        "images": [built["kubevirt"]["images"]["pause"]] if minimal else image_refs(built),
        "issuer": ISSUER,
        "api_host_port": api_port,
    }
    (state / "node.json").write_text(json.dumps(cfg, indent=1))
    return cfg


def _lock_free(path: Path) -> bool:
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def push_image(storage: dict, ref: str, layout: Path) -> None:
    """buildah push ``ref`` into the OCI layout ``layout`` (blobs shared, uncompressed)."""
    store = ["--root", storage["root"], "--runroot", storage["runroot"]]
    store += ["--storage-driver", storage["driver"]]
    r = subprocess.run(
        ["buildah", *store, "push", "-q", "--disable-compression", ref, f"oci:{layout}:{ref}"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise ClusterError(f"buildah push {ref}: {r.stderr.strip()}")


def export_images(
    state: Path, cfg: dict, storage: dict, monitor=None, timeout: float = 600
) -> list[str]:
    """Push the images containerd lacks into one OCI layout for kvnode to import."""
    images = state / "images"
    deadline = time.monotonic() + timeout
    while not (images / "present.json").exists():
        _check_node(state, monitor)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"the node did not start containerd within {timeout:.0f}s (see {state / 'logs'})"
            )
        time.sleep(0.2)
    present = set(json.loads((images / "present.json").read_text()))
    missing = [r for r in cfg["images"] if r not in present]
    layout = images / "oci"
    t0 = time.monotonic()
    for ref in missing:
        log("exporting %s", ref)
        push_image(storage, ref, layout)
    tmp = images / "export.tmp"
    tmp.write_text(json.dumps({"dir": str(layout), "refs": missing}))
    tmp.replace(images / "export.json")
    if missing:
        log("exported %d images in %.0fs", len(missing), time.monotonic() - t0)
    return missing


# ---------------------------------------------------------------------------
# the running node
# ---------------------------------------------------------------------------
@dataclass
class Node:
    """A started cluster, from its state directory."""

    state: Path

    @property
    def status(self) -> dict:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def cfg(self) -> dict:
        return kvnode.load(self.state)

    @property
    def kubeconfig(self) -> Path:
        """For clients on the machine (through the forwarded port)."""
        return self.state / "kubeconfigs" / "admin-host"

    @property
    def kubeconfig_inside(self) -> Path:
        """For processes in the node's network namespace (e.g. a hub)."""
        return self.state / "kubeconfigs" / "admin"

    @property
    def api_port(self) -> int:
        return self.cfg["api_host_port"]

    @property
    def init_pid(self) -> int | None:
        return self.status.get("init_pid")

    @property
    def netns(self) -> str:
        return f"/proc/{self.init_pid}/ns/net"

    def alive(self) -> bool:
        pid = self.init_pid
        if not pid:
            return False
        try:
            return str(self.state) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                errors="replace"
            )
        except OSError:
            return False

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.state / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return f"({name}: no log)"
        return f"--- {name}.log (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def nsenter(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` on the machine's filesystem inside the node's network namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns}", "--", *argv], **kw)

    def ctr(self, *args: str, stdin=None, timeout: float = 900) -> str:
        """The node's containerd client (in the node's mount namespace, where its socket is)."""
        r = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-m", "--", "ctr", "-n", "k8s.io", *args],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)}: {r.stderr.strip()[-2000:]}")
        return r.stdout

    def load_images(self, refs: list[str], storage: dict) -> list[str]:
        """Import into the running node the images of ``refs`` it does not have."""
        present = set(self.ctr("images", "ls", "-q").split())
        missing = [r for r in refs if r not in present]
        if not missing:
            return []
        layout = self.state / "images" / "load"
        shutil.rmtree(layout, ignore_errors=True)
        try:
            for ref in missing:
                log("exporting %s", ref)
                push_image(storage, ref, layout)
            tar = subprocess.Popen(
                ["tar", "-C", str(layout), "-cf", "-", "."], stdout=subprocess.PIPE
            )
            try:
                self.ctr("images", "import", "-", stdin=tar.stdout)
            finally:
                tar.stdout.close()
                tar.wait()
        finally:
            shutil.rmtree(layout, ignore_errors=True)
        log("loaded %d images into the node", len(missing))
        return missing


def _check_node(state: Path, monitor=None) -> None:
    node = Node(state)
    st = node.status
    if st.get("phase") == "failed":
        raise ClusterError(f"the node failed to start: {st.get('error')} (logs: {state / 'logs'})")
    if monitor is not None and monitor.poll() is not None:
        raise ClusterError(
            f"the node's monitor exited {monitor.returncode}\n{node.log_tail('monitor', 20)}"
        )


def start_node(state: Path, attached: bool) -> subprocess.Popen:
    log_f = open(state / "logs" / "monitor.log", "ab")
    kw = {"preexec_fn": lambda: nodens.die_with_parent(signal.SIGTERM)} if attached else {}
    p = subprocess.Popen(
        module_command("kvnode", "monitor", str(state)),
        stdin=subprocess.DEVNULL,
        stdout=log_f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kw,
    )
    log_f.close()
    return p


def wait_phase(state: Path, phase: str, timeout: float, monitor=None) -> dict:
    deadline = time.monotonic() + timeout
    node = Node(state)
    while True:
        st = node.status
        if st.get("phase") != phase:
            _check_node(state, monitor)
        if st.get("phase") == phase:
            return st
        if st.get("phase") in ("failed", "stopped"):
            raise ClusterError(
                f"the node {st.get('phase')}: {st.get('error', '')} "
                f"(logs: {state / 'logs'})\n{node.log_tail('init', 25)}"
            )
        if time.monotonic() > deadline:
            raise ClusterError(
                f"the node was not {phase} within {timeout:.0f}s (now {st.get('phase')}); "
                f"logs: {state / 'logs'}\n{node.log_tail('init', 25)}"
            )
        time.sleep(0.3)


def wait_for(what: str, fn, timeout: float, interval: float = 1.0, describe=None):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the API answering an error is "not yet"
            last = e
        if time.monotonic() > deadline:
            extra = f"\n{describe()}" if describe else ""
            raise ClusterError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}"
            )
        time.sleep(interval)


# ---------------------------------------------------------------------------
# KubeVirt, the way a cluster administrator installs it
# ---------------------------------------------------------------------------
def apply_objects(api, objects: list[dict]) -> None:
    from kubernetes import utils
    from kubernetes.client.rest import ApiException

    for obj in objects:
        try:
            utils.create_from_dict(api, obj)
        except utils.FailToCreateError as e:
            if not all(isinstance(x, ApiException) and x.status == 409 for x in e.api_exceptions):
                raise ClusterError(
                    f"creating {obj['kind']} {obj['metadata']['name']}: {e}"
                ) from None


def kubevirt_cr(built: dict) -> dict:
    import yaml

    cr = yaml.safe_load(KUBEVIRT_CR.read_text())
    dev = cr["spec"]["configuration"]["developerConfiguration"]
    dev["featureGates"] = sorted(set(dev.get("featureGates", [])) | set(EXTRA_GATES))
    # Images are imported into containerd, never pulled; one replica of
    # virt-api and virt-controller on one node.
    cr["spec"]["imagePullPolicy"] = "IfNotPresent"
    cr["spec"]["infra"] = {"replicas": 1}
    return cr


def kubevirt_summary(api) -> str:
    from kubernetes import client

    core = client.CoreV1Api(api)
    lines = []
    try:
        for p in core.list_namespaced_pod(KUBEVIRT_NS).items:
            states = []
            for cs in (p.status.container_statuses or []) + (
                p.status.init_container_statuses or []
            ):
                w = cs.state.waiting
                states.append(
                    f"{cs.name}:{w.reason if w else ('ready' if cs.ready else 'running')}"
                )
            lines.append(f"  pod {p.metadata.name} {p.status.phase} {' '.join(states)}")
        for e in core.list_namespaced_event(KUBEVIRT_NS).items[-12:]:
            if e.type == "Warning":
                lines.append(
                    f"  event {e.involved_object.kind}/{e.involved_object.name}: {e.reason}: {e.message}"
                )
    except Exception as e:  # only for the message
        lines.append(f"  (cannot list: {e})")
    return "\n".join(lines)


def deploy_kubevirt(node: Node, built: dict, timeout: float) -> float:
    from kubernetes import client

    t0 = time.monotonic()
    api = node.api_client()
    core = client.CoreV1Api(api)
    kv = built["kubevirt"]
    manifests = subprocess.run(
        [
            str(built["node_bins"] / "operator-manifests"),
            f"--image-registry={kv['registry']}",
            f"--tag={kv['tag']}",
            "--replicas=1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if manifests.returncode != 0:
        raise ClusterError(f"operator-manifests: {manifests.stderr.strip()}")
    objects = json.loads(manifests.stdout)["items"]
    # virt-operator (and through it virt-api and virt-controller) only run on
    # control-plane nodes; this node is both.
    core.patch_node(
        NODE_NAME, {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}
    )
    apply_objects(api, objects)
    custom = client.CustomObjectsApi(api)
    wait_for(
        "the KubeVirt CRD",
        lambda: (
            client.ApiextensionsV1Api(api)
            .read_custom_resource_definition("kubevirts.kubevirt.io")
            .status.accepted_names.kind
        ),
        60,
    )
    cr = kubevirt_cr(built)
    wait_for("the KubeVirt CR created", lambda: _create_cr(custom, cr), 60)
    log("KubeVirt %s: operator and CR applied; waiting for phase Deployed", kv["kubevirt_version"])

    def phase():
        obj = custom.get_namespaced_custom_object(
            "kubevirt.io", "v1", KUBEVIRT_NS, "kubevirts", "kubevirt"
        )
        return (obj.get("status") or {}).get("phase") == "Deployed"

    wait_for(
        "KubeVirt phase Deployed",
        phase,
        timeout,
        interval=2,
        describe=lambda: kubevirt_summary(api),
    )
    took = time.monotonic() - t0
    log("KubeVirt Deployed in %.0fs", took)
    return took


def _create_cr(custom, cr: dict) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        custom.create_namespaced_custom_object("kubevirt.io", "v1", KUBEVIRT_NS, "kubevirts", cr)
    except ApiException as e:
        if e.status != 409:
            raise
    return True


# ---------------------------------------------------------------------------
# up / down
# ---------------------------------------------------------------------------
def up(
    name: str = DEFAULT_NAME,
    state: Path | None = None,
    *,
    api_port: int = 0,
    kubevirt: bool = True,
    attached: bool = False,
    timeout: float = 900,
) -> Node:
    """Bring the cluster up; return its :class:`Node`. A stale cluster of the
    same name (a killed run) is cleared first.

    ``attached``: the node stops when this process ends (the tests), else it
    runs on (a person's ``up``). Without ``kubevirt``: Kubernetes only, with
    only the pause image, in an image store of its own."""
    from harness.controlplane import free_port

    if os.geteuid() != 0:
        raise ClusterError("needs root (namespaces, mounts, cgroups, containerd)")
    state = (state or default_state(name)).resolve()
    node = Node(state)
    if (state / "node.json").exists():
        if node.alive():
            raise ClusterError(
                f"cluster {name!r} is already up (state {state}); "
                f"`scripts/kubevirt-cluster.sh down --name {name}` first"
            )
        report = clean_stale(state)
        if report:
            log("cleared what a previous run left: %s", report)
    t0 = time.monotonic()
    built = build_all()
    builds_s = time.monotonic() - t0
    cfg = prepare(name, state, built, api_port or free_port(), minimal=not kubevirt)
    monitor = start_node(state, attached)
    timings = {"builds_s": round(builds_s, 1)}
    try:
        export_images(state, cfg, built["kubevirt"]["storage"], monitor)
        st = wait_phase(state, "ready", timeout, monitor)
        timings.update(
            node_ready_s=round(time.monotonic() - t0 - builds_s, 1),
            images_import_s=st.get("images_imported_s"),
        )
        wait_node_ready(node, 120)
        wait_default_service_account(node, 120)
        if kubevirt:
            timings["kubevirt_s"] = round(deploy_kubevirt(node, built, timeout), 1)
    except BaseException:
        log("bring-up failed; stopping the node")
        down(state=state, quiet=True)
        raise
    timings["total_s"] = round(time.monotonic() - t0, 1)
    (state / "timings.json").write_text(json.dumps(timings, indent=1))
    log("up in %.0fs: %s", timings["total_s"], timings)
    return node


def wait_node_ready(node: Node, timeout: float) -> None:
    from kubernetes import client

    core = client.CoreV1Api(node.api_client())

    def ready():
        n = core.read_node(NODE_NAME)
        return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])

    wait_for(
        f"node {NODE_NAME} Ready", ready, timeout, describe=lambda: node.log_tail("kubelet", 20)
    )


def wait_default_service_account(node: Node, timeout: float) -> None:
    """Until the controller manager has made ``default/default``: before that
    the API server refuses every pod in ``default`` ("serviceaccount default
    not found"). A second bring-up over a killed one is ready in seconds, ahead
    of that controller (seen in CI)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(node.api_client())

    def made():
        try:
            return core.read_namespaced_service_account("default", "default")
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    wait_for(
        "the default ServiceAccount",
        made,
        timeout,
        describe=lambda: node.log_tail("kube-controller-manager", 20),
    )


def clean_stale(state: Path) -> dict:
    """After a run that was killed: end what is left of it, remove its cgroups."""
    report: dict = {}
    node = Node(state)
    st = node.status
    for key in ("init_pid", "monitor_pid"):
        pid = st.get(key)
        if pid and _is_ours(pid, state):
            os.kill(pid, signal.SIGKILL)
            report.setdefault("killed", []).append(pid)
    if report.get("killed"):
        time.sleep(1)
    try:
        cfg = kvnode.load(state)
    except (OSError, ValueError):
        return report
    left = nodens.remove_cgroup_tree(cfg["cgroup_root"])
    if left:
        report["cgroups_busy"] = [str(x) for x in left]
    # An export the node never imported (it is the size of the images).
    shutil.rmtree(state / "images" / "oci", ignore_errors=True)
    return report


def _is_ours(pid: int, state: Path) -> bool:
    try:
        return str(state) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def leftovers(state: Path, cfg: dict | None = None) -> dict:
    """What a stopped cluster still has on the machine (empty when clean)."""
    cfg = cfg or kvnode.load(state)
    out: dict = {}
    procs = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_ours(int(p), state)]
    if procs:
        out["processes"] = procs
    tasks = nodens.cgroup_tasks(cfg["cgroup_root"])
    if tasks:
        out["cgroup_tasks"] = tasks
    groups = [str(p) for p in nodens.cgroup_paths(cfg["cgroup_root"])]
    if groups:
        out["cgroups"] = groups
    mounts = [m for m in nodens.mountpoints() if m.startswith(str(state)) or "kubelet" in m]
    if mounts:
        out["mounts"] = mounts
    return out


def down(
    name: str = DEFAULT_NAME, state: Path | None = None, timeout: float = 90, quiet: bool = False
) -> dict:
    """Stop the cluster (SIGTERM, then SIGKILL), then return :func:`leftovers`."""
    state = (state or default_state(name)).resolve()
    node = Node(state)
    if not (state / "node.json").exists():
        raise ClusterError(f"no cluster {name!r} (no {state / 'node.json'})")
    cfg = node.cfg
    st = node.status
    monitor_pid = st.get("monitor_pid")
    if monitor_pid and _is_ours(monitor_pid, state):
        os.kill(monitor_pid, signal.SIGTERM)
    elif node.alive():
        os.kill(node.init_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        node.alive() or (monitor_pid and _is_ours(monitor_pid, state))
    ):
        time.sleep(0.2)
    if node.alive():
        log("the node did not stop in %.0fs: SIGKILL", timeout)
        os.kill(node.init_pid, signal.SIGKILL)
        time.sleep(1)
    clean_stale(state)
    left = leftovers(state, cfg)
    if not quiet:
        log("down%s", f"; left behind: {left}" if left else ": nothing left")
    return left


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
USAGE = """\
usage: scripts/kubevirt-cluster.sh COMMAND [--name NAME] [--state-dir DIR] [options]

A one-machine Kubernetes cluster with real KubeVirt (emulation, no KVM needed):
etcd, kube-apiserver, controller-manager, scheduler, a kubelet with containerd
and runc, the CNI bridge plugin, kube-proxy (iptables), kube-router (network
policy), CoreDNS, and KubeVirt installed by its own virt-operator. Everything
runs as root in its own mount, network and PID namespaces; the API server is
reachable on 127.0.0.1 only. See docs/cluster.md.

commands:
  up            build what is missing, start the cluster, install KubeVirt
                  --api-port PORT   127.0.0.1 port of the API server (default: any free one)
                  --no-kubevirt     only Kubernetes (and only the pause image)
                  --timeout SECONDS (default 900)
  down          stop it and remove everything it made (exit 1 if something is left)
  kubeconfig    print the kubeconfig for clients on this machine
  status        print the node's status (JSON)
  kubectl ARGS  run the cluster's kubectl with that kubeconfig
  exec CMD...   run CMD in the node's network namespace (reach pod and Service IPs)
  load-images   build what is missing and import the current images into the running
                cluster (after images/build.sh rebuilt one)

options:
  --name NAME       cluster name (default kvs); state in $KVS_CLUSTER_DIR/NAME
                    (default /var/tmp/kubevirt-cluster/NAME)
  --state-dir DIR   state directory instead
  -h, --help        this text
"""

COMMANDS = ("up", "down", "kubeconfig", "status", "kubectl", "exec", "load-images")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(print(USAGE, end="") or 0)
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        raise UsageError(f"unknown command {cmd!r}")
    passthrough: list[str] = []
    if cmd in ("kubectl", "exec"):
        # Options of ours come first; the rest is the command's.
        i = 0
        while i < len(rest) and rest[i] in ("--name", "--state-dir"):
            i += 2
        rest, passthrough = rest[:i], rest[i:]
        if passthrough[:1] == ["--"]:
            passthrough = passthrough[1:]
        if cmd == "exec" and not passthrough:
            raise UsageError("exec needs a command")
    p = _Parser(prog="kubevirt-cluster", add_help=False)
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("-h", "--help", action="store_true")
    if cmd == "up":
        p.add_argument("--api-port", type=int, default=0)
        p.add_argument("--no-kubevirt", action="store_true")
        p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(rest)
    if args.help:
        raise SystemExit(print(USAGE, end="") or 0)
    if (
        not args.name
        or not all(ch.isalnum() or ch == "-" for ch in args.name)
        or len(args.name) > 20
    ):
        raise UsageError(f"--name must be 1-20 letters, digits or '-', not {args.name!r}")
    if cmd == "up" and not 0 <= args.api_port < 65536:
        raise UsageError(f"--api-port must be a port number, not {args.api_port}")
    args.cmd = cmd
    return args, passthrough


def main(argv: list[str]) -> int:
    try:
        args, rest = parse(argv)
    except UsageError as e:
        print(f"kubevirt-cluster: {e} (try --help)", file=sys.stderr)
        return 2
    state = (args.state_dir or default_state(args.name)).resolve()
    node = Node(state)
    try:
        if args.cmd == "up":
            node = up(
                args.name,
                state,
                api_port=args.api_port,
                kubevirt=not args.no_kubevirt,
                timeout=args.timeout,
            )
            print(node.kubeconfig)
            return 0
        if not (state / "node.json").exists():
            print(f"kubevirt-cluster: no cluster {args.name!r} (state {state})", file=sys.stderr)
            return 1
        if args.cmd == "down":
            return 1 if down(args.name, state) else 0
        if args.cmd == "status":
            print(json.dumps({**node.status, "alive": node.alive()}, indent=1))
            return 0 if node.alive() else 1
        if not node.alive():
            print(f"kubevirt-cluster: cluster {args.name!r} is not running", file=sys.stderr)
            return 1
        if args.cmd == "kubeconfig":
            print(node.kubeconfig)
            return 0
        if args.cmd == "kubectl":
            kubectl = Path(node.cfg["bins"]["node"]) / "kubectl"
            return subprocess.run(
                [str(kubectl), f"--kubeconfig={node.kubeconfig}", *rest]
            ).returncode
        if args.cmd == "exec":
            return node.nsenter(rest).returncode
        if args.cmd == "load-images":
            built = build_all()
            refs = [built["kubevirt"]["images"]["pause"]]
            if node.cfg["images"] != refs:
                refs = image_refs(built)
            node.load_images(refs, built["kubevirt"]["storage"])
            return 0
    except ClusterError as e:
        print(f"kubevirt-cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
