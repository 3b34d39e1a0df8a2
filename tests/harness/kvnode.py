"""The node of the one-machine KubeVirt cluster: its namespaces and its processes.

Two roles, both started by ``kvcluster`` (scripts/kubevirt-cluster.sh):

``monitor STATE``
    Runs in the machine's namespaces. Binds the API server's forwarded port
    on 127.0.0.1, takes the image store's lock, and forks ``init`` as PID 1
    of a new PID namespace (init then makes its own mount, network and UTS
    namespaces). It waits for ``init``; when ``init`` ends, however it ended
    (also SIGKILLed: the kernel then kills every process of its PID
    namespace), it removes the node's cgroups and records the end.

``init STATE``
    PID 1 of the node: every other process of the cluster is its
    descendant. Makes the mounts (its own /run, /var/lib and /var/log from
    the state directory, a fresh sysfs for its network namespace), the
    network (loopback, the node address on a veth pair whose peer leads
    nowhere, forwarding and bridge netfilter on), then starts and
    supervises etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler, containerd, kubelet, kube-proxy, kube-router (network
    policy only) and CoreDNS, imports the images, reaps orphans, and forwards
    the monitor's 127.0.0.1 port to the API server. SIGTERM stops it all.

Every address of the cluster (node 10.0.0.2, pods 10.244.0.0/24, services
10.96.0.0/16) exists only inside the node's network namespace; the only way
in from the machine is the forwarded API port (and what a test forwards
itself, see ``nodens.Forwarder``). Nothing routes out: the default route
leads into the veth peer, which forwards nothing.

The configuration is ``STATE/node.json`` (written by ``kvcluster``); every
component logs to ``STATE/logs/<name>.log``; ``STATE/status.json`` says
where the node is.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import module_command, nodens

NODE_IP = "10.0.0.2"
NODE_PREFIX = 24
POD_CIDR = "10.244.0.0/16"
NODE_POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS = NODE_IP  # CoreDNS listens on the node's address
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
VETH, VETH_PEER = "kvs-node", "kvs-sink"

# Mount points the node keeps from the machine; everything else the machine
# had mounted when the node's mount namespace was made is detached there.
KEEP_MOUNTS = ("/proc", "/sys", "/dev", "/dev/shm", "/dev/pts", "/dev/mqueue", "/dev/hugepages")


def load(state: Path) -> dict:
    return json.loads((state / "node.json").read_text())


def write_status(state: Path, **fields) -> None:
    path = state / "status.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    old.update(fields, time=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------
# configuration files of the node's components (pure: cfg -> {path: text})
# ---------------------------------------------------------------------------
def render_configs(cfg: dict) -> dict[str, str]:
    state = Path(cfg["state"])
    pki = state / "pki"
    kc = state / "kubeconfigs"
    etc = state / "etc"
    node = cfg["node_name"]
    files: dict[str, str] = {}

    files[str(etc / "containerd.toml")] = f"""\
version = 2
root = "{cfg["containerd_root"]}"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{state / "containerd-opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{cfg["pause_image"]}"
  # No CAP_SYS_RESOURCE here: raising a child's oom_score_adj would fail.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{etc / "cni"}"
"""
    files[str(etc / "cni" / "10-kvs-bridge.conflist")] = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "kvs-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": NODE_POD_SUBNET, "gateway": POD_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(state / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=1,
    )
    # Pods get the cluster DNS; the node itself and dnsPolicy=Default pods get
    # no upstream server: nothing resolves outside the cluster.
    files[str(etc / "resolv.conf")] = "# kubevirt-spawner test node: no upstream DNS\n"
    files[str(etc / "kubelet.yaml")] = json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": cfg["cgroup_root"],
            # The machines here have cgroup v1 (plus an empty v2 mount).
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [CLUSTER_DNS],
            "resolvConf": str(etc / "resolv.conf"),
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "volumePluginDir": str(state / "volume-plugins"),
            "serializeImagePulls": False,
            # A shared machine's disk fills and empties with other work: no
            # evictions, and never garbage-collect the imported images (they
            # cannot be pulled again).
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 110,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "shutdownGracePeriod": "0s",
        },
        indent=1,
    )
    files[str(etc / "kube-proxy.yaml")] = json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kc / "kube-proxy")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": node,
            "bindAddress": NODE_IP,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the conntrack sysctls alone (nf_conntrack_max is not
            # per network namespace).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        },
        indent=1,
    )
    files[str(etc / "Corefile")] = f"""\
.:53 {{
    bind {CLUSTER_DNS}
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kc / "coredns"}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""
    return files


# ---------------------------------------------------------------------------
# the components
# ---------------------------------------------------------------------------
@dataclass
class Component:
    name: str
    argv: list[str]
    ready: object = None  # callable -> bool
    env: dict = field(default_factory=dict)
    pid: int | None = None
    restarts: int = 0
    exited: int | None = None
    started_at: float = 0.0


def _https_ok(url: str, cfg: dict, client: bool = True) -> bool:
    pki = Path(cfg["state"]) / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
        return r.status == 200


def _which(name: str) -> str:
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    raise FileNotFoundError(name)


def _zombie_children(parent: int = 1) -> list[int]:
    """Zombie processes whose parent is ``parent`` (from /proc/PID/stat)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields and fields[0] == "Z" and int(fields[1]) == parent:
            out.append(int(d))
    return out


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


def components(cfg: dict) -> dict[str, Component]:
    state = Path(cfg["state"])
    cb, nb = Path(cfg["bins"]["cluster"]), Path(cfg["bins"]["node"])
    pki, kc, etc = state / "pki", state / "kubeconfigs", state / "etc"
    node = cfg["node_name"]
    etcd_url = "http://127.0.0.1:2379"
    v = ["--v=1"]
    c = [
        Component(
            "etcd",
            [
                str(cb / "etcd"),
                "--name=node",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=node=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            lambda: _http_ok(f"{etcd_url}/health"),
        ),
        Component(
            "kube-apiserver",
            [
                str(cb / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=0.0.0.0",
                f"--secure-port={API_PORT}",
                f"--advertise-address={NODE_IP}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={cfg['issuer']}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--api-audiences={cfg['issuer']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # virt-handler and virt-launcher run privileged.
                "--allow-privileged=true",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                # virt-api is an aggregated API server: the front proxy's client
                # certificate and request headers, and routing to its endpoints
                # (pod IPs) rather than through its Service.
                "--enable-aggregator-routing=true",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--cert-dir={pki}",
                "--profiling=false",
                *cfg.get("apiserver_extra", []),
                *v,
            ],
            lambda: _https_ok(f"https://127.0.0.1:{API_PORT}/readyz", cfg),
        ),
        Component(
            "kube-controller-manager",
            [
                str(cb / "kube-controller-manager"),
                f"--kubeconfig={kc / 'kcm'}",
                f"--authentication-kubeconfig={kc / 'kcm'}",
                f"--authorization-kubeconfig={kc / 'kcm'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--profiling=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-cidr={POD_CIDR}",
                "--controllers=*,-cloud-node-lifecycle-controller",
                *v,
            ],
            lambda: _https_ok("https://127.0.0.1:10257/healthz", cfg, client=False),
        ),
        Component(
            "kube-scheduler",
            [
                str(cb / "kube-scheduler"),
                f"--kubeconfig={kc / 'scheduler'}",
                f"--authentication-kubeconfig={kc / 'scheduler'}",
                f"--authorization-kubeconfig={kc / 'scheduler'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--profiling=false",
                *v,
            ],
            lambda: _https_ok("https://127.0.0.1:10259/healthz", cfg, client=False),
        ),
        Component(
            "containerd",
            ["containerd", f"--config={etc / 'containerd.toml'}"],
            lambda: Path("/run/containerd/containerd.sock").is_socket(),
        ),
        Component(
            "kubelet",
            [
                str(nb / "kubelet"),
                f"--config={etc / 'kubelet.yaml'}",
                f"--kubeconfig={kc / 'kubelet'}",
                f"--hostname-override={node}",
                f"--node-ip={NODE_IP}",
                *v,
            ],
            lambda: _http_ok("http://127.0.0.1:10248/healthz"),
        ),
        Component(
            "kube-proxy",
            [str(nb / "kube-proxy"), f"--config={etc / 'kube-proxy.yaml'}", *v],
            lambda: _http_ok("http://127.0.0.1:10256/livez"),
        ),
        Component(
            "kube-router",
            [
                str(nb / "kube-router"),
                f"--kubeconfig={kc / 'kube-router'}",
                # Network policy only: pods are wired by the bridge CNI plugin and
                # Services by kube-proxy (iptables mode).
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                f"--hostname-override={node}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--health-port=20244",
                "--metrics-port=0",
            ],
            lambda: _http_ok("http://127.0.0.1:20244/healthz"),
        ),
        Component(
            "coredns",
            [str(nb / "coredns"), "-conf", str(etc / "Corefile")],
            lambda: _http_ok("http://127.0.0.1:8181/ready"),
        ),
    ]
    return {x.name: x for x in c}


# ---------------------------------------------------------------------------
# init: PID 1 of the node
# ---------------------------------------------------------------------------
class Init:
    def __init__(self, state: Path, api_fd: int | None, lock_fd: int | None):
        self.state = state
        self.cfg = load(state)
        self.logs = state / "logs"
        self.comps = components(self.cfg)
        self.exits: dict[int, int] = {}
        self.stopping = False
        self.api_fd = api_fd
        self.lock_fd = lock_fd
        self.lock = threading.Lock()
        self.protected: set[int] = set()

    def log(self, msg: str, *args) -> None:
        line = time.strftime("%H:%M:%S ") + (msg % args if args else msg)
        with open(self.logs / "init.log", "a") as f:
            f.write(line + "\n")

    # -- namespaces ---------------------------------------------------------
    def setup_mounts(self) -> None:
        st = self.state
        dropped = nodens.prune_mounts(
            lambda mp: any(mp == k or mp.startswith(k + "/") for k in KEEP_MOUNTS)
        )
        if dropped:
            self.log("detached %d mounts inherited from the machine", len(dropped))
        # procfs of this PID namespace (the node sees its own processes, and
        # virt-handler finds the node's mount namespace at /proc/1/ns/mnt).
        nodens.mount("proc", "/proc", "proc", nodens.MS_NOSUID | nodens.MS_NODEV | nodens.MS_NOEXEC)
        # sysfs shows the network devices of the namespace that mounts it;
        # keep the machine's cgroup hierarchies across the remount.
        keep = st / "mnt-cgroup"
        keep.mkdir(exist_ok=True)
        nodens.mount("/sys/fs/cgroup", keep, None, nodens.MS_BIND | nodens.MS_REC)
        nodens.mount(
            "sysfs", "/sys", "sysfs", nodens.MS_NOSUID | nodens.MS_NODEV | nodens.MS_NOEXEC
        )
        nodens.mount(str(keep), "/sys/fs/cgroup", None, nodens.MS_MOVE)
        # The node's own /run, /var/lib and /var/log, so that nothing the
        # kubelet, containerd or KubeVirt write lands on the machine's.
        nodens.mount("tmpfs", "/run", "tmpfs", nodens.MS_NOSUID | nodens.MS_NODEV, "mode=755")
        for d in ("varlib", "varlog", "etcd"):
            (st / d).mkdir(exist_ok=True)
        nodens.mount(str(st / "varlib"), "/var/lib", None, nodens.MS_BIND)
        nodens.mount(str(st / "varlog"), "/var/log", None, nodens.MS_BIND)
        # etcd's data is disposable: memory, no fsync.
        nodens.mount("tmpfs", st / "etcd", "tmpfs", nodens.MS_NOSUID | nodens.MS_NODEV, "mode=700")
        Path("/var/lib/kubelet").mkdir(exist_ok=True)
        # The kubelet's bidirectional mounts (virt-handler's container disks)
        # need shared propagation inside the node.
        nodens.mount("none", "/", None, nodens.MS_REC | nodens.MS_SHARED)

    def setup_network(self) -> None:
        socket.sethostname(self.cfg["node_name"])
        nodens.ip("link", "set", "lo", "up")
        nodens.ip("link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER)
        nodens.ip("addr", "add", f"{NODE_IP}/{NODE_PREFIX}", "dev", VETH)
        nodens.ip("link", "set", VETH, "up")
        nodens.ip("link", "set", VETH_PEER, "up")
        # Components want a default route; this one ends in the peer, which
        # has no address and forwards nothing.
        nodens.ip("route", "add", "default", "dev", VETH)
        nodens.sysctl("net.ipv4.ip_forward", "1")
        nodens.sysctl(f"net.ipv4.conf.{VETH_PEER}.forwarding", "0")
        # Bridged pod-to-pod traffic through iptables: kube-proxy's Service
        # rules and kube-router's policy chains see it.
        nodens.sysctl("net.bridge.bridge-nf-call-iptables", "1")
        nodens.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")

    def write_configs(self) -> None:
        for path, text in render_configs(self.cfg).items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        (self.state / "volume-plugins").mkdir(exist_ok=True)
        (self.state / "cni-ipam").mkdir(exist_ok=True)

    # -- processes ------------------------------------------------------------
    def start(self, comp: Component) -> None:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.state),
            **comp.env,
        }
        log = str(self.logs / f"{comp.name}.log")
        # posix_spawn, not subprocess: this process reaps every child itself
        # (it is PID 1), which subprocess.Popen objects must not race.
        with self.lock:
            pid = os.posix_spawn(
                comp.argv[0] if "/" in comp.argv[0] else _which(comp.argv[0]),
                comp.argv,
                env,
                setsid=True,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
            )
        comp.pid, comp.exited, comp.started_at = pid, None, time.monotonic()
        self.log("started %s (pid %d)", comp.name, pid)

    def run_cmd(
        self, argv: list[str], timeout: float = 120, stdin=None
    ) -> subprocess.CompletedProcess:
        """subprocess.run whose child the reaper leaves to subprocess."""
        with self.lock:
            p = subprocess.Popen(
                argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            self.protected.add(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        finally:
            with self.lock:
                self.protected.discard(p.pid)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def reap(self) -> None:
        """Collect exited children: the components (noting their exit) and
        orphans the node's processes left to PID 1; never a child that
        run_cmd waits for."""
        with self.lock:
            for pid in _zombie_children():
                if pid in self.protected:
                    continue
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if got == 0:
                    continue
                code = os.waitstatus_to_exitcode(status)
                for comp in self.comps.values():
                    if comp.pid == pid:
                        comp.exited = code
                        self.log("%s (pid %d) exited %d", comp.name, pid, code)

    def wait_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        last: dict[str, str] = {}
        while pending:
            self.reap()
            for name in list(pending):
                comp = self.comps[name]
                if comp.exited is not None:
                    raise RuntimeError(
                        f"{name} exited {comp.exited} while starting "
                        f"(log: {self.logs / (name + '.log')})"
                    )
                try:
                    if comp.ready():
                        pending.remove(name)
                        self.log("%s ready after %.1fs", name, time.monotonic() - comp.started_at)
                except Exception as e:  # a probe failing is the normal "not yet"
                    last[name] = str(e)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(
                    f"not ready within {timeout:.0f}s: "
                    + ", ".join(f"{n} ({last.get(n, 'no answer')})" for n in pending)
                )
            time.sleep(0.2)

    def wait_node_registered(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.kubectl("get", "node", self.cfg["node_name"])
                return
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the kubelet did not register node {self.cfg['node_name']}: {e}"
                    ) from None
            self.reap()
            time.sleep(0.5)

    def kubectl(self, *args: str) -> None:
        kubectl = Path(self.cfg["bins"]["node"]) / "kubectl"
        argv = [str(kubectl), f"--kubeconfig={self.state / 'kubeconfigs' / 'admin-node'}", *args]
        r = self.run_cmd(argv, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")

    def ctr(self, *args: str, stdin=None, timeout: float = 600) -> str:
        r = self.run_cmd(
            ["ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", *args],
            timeout=timeout,
            stdin=stdin,
        )
        if r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    # -- images ---------------------------------------------------------------
    def clear_old_containers(self) -> None:
        """Containers a previous run of this image store left (its processes
        died with its node): remove them before the kubelet starts."""
        ids = self.ctr("containers", "ls", "-q").split()
        if ids:
            self.log("removing %d containers left by an earlier run", len(ids))
            for i in ids:
                try:
                    self.ctr("containers", "rm", i)
                except RuntimeError as e:
                    self.log("could not remove container %s: %s", i, e)

    def import_images(self) -> None:
        images = self.state / "images"
        images.mkdir(exist_ok=True)
        present = set(self.ctr("images", "ls", "-q").split())
        (images / "present.json").write_text(json.dumps(sorted(present)))
        deadline = time.monotonic() + self.cfg.get("image_timeout", 1800)
        while not (images / "export.json").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the images were never exported (see the kvcluster output)")
            time.sleep(0.2)
        export = json.loads((images / "export.json").read_text())
        t0 = time.monotonic()
        if export["refs"]:
            # ctr reads an OCI layout as a tar stream; the layout's shared
            # blobs (one Debian root filesystem under six KubeVirt images)
            # are imported once.
            r = self.run_cmd(
                [
                    "sh",
                    "-c",
                    'tar -C "$1" -cf - . | ctr --address '
                    "/run/containerd/containerd.sock -n k8s.io images import -",
                    "import",
                    export["dir"],
                ],
                timeout=1800,
            )
            if r.returncode != 0:
                raise RuntimeError(f"ctr images import: {r.stderr.strip()[-2000:]}")
            self.run_cmd(["rm", "-rf", export["dir"]])
            self.log("imported %d images in %.1fs", len(export["refs"]), time.monotonic() - t0)
        present = set(self.ctr("images", "ls", "-q").split())
        missing = [r for r in self.cfg["images"] if r not in present]
        if missing:
            raise RuntimeError(f"images missing from containerd after the import: {missing}")
        write_status(self.state, images_imported_s=round(time.monotonic() - t0, 1))

    # -- forwarding -------------------------------------------------------------
    def forward_api(self) -> None:
        if self.api_fd is None:
            return
        listener = socket.socket(fileno=self.api_fd)
        nodens.Forwarder(listener, lambda: nodens.connect_tcp("127.0.0.1", API_PORT))

    # -- lifecycle --------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        t0 = time.monotonic()
        write_status(self.state, phase="starting", init_pid_in_ns=os.getpid())
        try:
            nodens.unshare(nodens.CLONE_NEWNS | nodens.CLONE_NEWNET | nodens.CLONE_NEWUTS)
            # Nothing mounted in the node may propagate back to the machine.
            nodens.mount("none", "/", None, nodens.MS_REC | nodens.MS_PRIVATE)
            self.setup_mounts()
            self.setup_network()
            nodens.make_cgroup_root(self.cfg["cgroup_root"])
            self.write_configs()
            self.forward_api()
            c = self.comps
            self.start(c["etcd"])
            self.start(c["containerd"])
            self.wait_ready(["etcd"], 60)
            self.start(c["kube-apiserver"])
            self.wait_ready(["containerd"], 60)
            self.clear_old_containers()
            importer = threading.Thread(target=self._import_thread, daemon=True)
            importer.start()
            self.wait_ready(["kube-apiserver"], 180)
            write_status(self.state, phase="apiserver", apiserver_s=round(time.monotonic() - t0, 1))
            bootstrap = self.state / "etc" / "bootstrap.json"
            if bootstrap.exists():
                self.kubectl("apply", "-f", str(bootstrap))
            for name in (
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
                "coredns",
            ):
                self.start(c[name])
            self.wait_ready([n for n in c if n != "kube-router"], 300)
            # kube-router finds its node by name: only once the kubelet registered it.
            self.wait_node_registered(120)
            self.start(c["kube-router"])
            self.wait_ready(["kube-router"], 120)
            importer.join(self.cfg.get("image_timeout", 1800) + 60)
            if self._import_error:
                raise self._import_error
            if importer.is_alive():
                raise RuntimeError("the image import did not finish")
            write_status(
                self.state,
                phase="ready",
                ready_s=round(time.monotonic() - t0, 1),
                components={n: x.pid for n, x in c.items()},
            )
            self.log("node ready in %.1fs", time.monotonic() - t0)
        except Exception as e:
            self.log("start failed: %s\n%s", e, traceback.format_exc())
            write_status(self.state, phase="failed", error=str(e))
            self.teardown()
            return 1
        return self.supervise()

    _import_error: BaseException | None = None

    def _import_thread(self) -> None:
        try:
            self.import_images()
        except BaseException as e:  # reported by run()
            self._import_error = e
            self.log("image import failed: %s", e)

    def supervise(self) -> int:
        while not self.stopping:
            self.reap()
            for comp in self.comps.values():
                if comp.exited is not None and not self.stopping:
                    # As a service manager would: restart, with a back-off.
                    delay = min(30, 2 ** min(comp.restarts, 5))
                    if time.monotonic() - comp.started_at > delay:
                        comp.restarts += 1
                        self.log("restarting %s (restart %d)", comp.name, comp.restarts)
                        self.start(comp)
                        write_status(
                            self.state, restarts={n: x.restarts for n, x in self.comps.items()}
                        )
            time.sleep(0.5)
        self.teardown()
        return 0

    def _on_term(self, signum, frame) -> None:
        self.stopping = True

    def teardown(self) -> None:
        write_status(self.state, phase="stopping")
        self.log("stopping")
        order = [
            "kubelet",
            "kube-router",
            "kube-proxy",
            "coredns",
            "kube-scheduler",
            "kube-controller-manager",
            "containerd",
            "kube-apiserver",
            "etcd",
        ]
        for name in order:
            comp = self.comps[name]
            if comp.pid and comp.exited is None:
                try:
                    os.kill(comp.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            x.pid and x.exited is None for x in self.comps.values()
        ):
            self.reap()
            time.sleep(0.1)
        # Everything else of the node (containers, QEMU, shims): as PID 1,
        # kill(-1) reaches every other process of this PID namespace.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(-1, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + (5 if sig == signal.SIGTERM else 30)
            while time.monotonic() < deadline:
                self.reap()
                if not [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]:
                    break
                time.sleep(0.1)
        self.reap()
        left = nodens.remove_cgroup_tree(self.cfg["cgroup_root"])
        if left:
            self.log("cgroups still busy: %s", left)
        self.log("stopped")


# ---------------------------------------------------------------------------
# monitor: in the machine's namespaces, the parent of init
# ---------------------------------------------------------------------------
def monitor(state: Path) -> int:
    cfg = load(state)
    (state / "logs").mkdir(exist_ok=True)
    listener = nodens.listening_socket("127.0.0.1", cfg["api_host_port"])
    listener.set_inheritable(True)
    lock_fd = None
    if cfg.get("containerd_lock"):
        lock_fd = os.open(cfg["containerd_lock"], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            write_status(
                state,
                phase="failed",
                error=(
                    f"the image store {cfg['containerd_root']} is in use by another cluster "
                    f"(lock {cfg['containerd_lock']})"
                ),
            )
            return 1
        os.set_inheritable(lock_fd, True)
    nodens.unshare(
        nodens.CLONE_NEWNS | nodens.CLONE_NEWNET | nodens.CLONE_NEWUTS | nodens.CLONE_NEWPID
    )
    # Nothing mounted in the node may propagate back to the machine.
    nodens.mount("none", "/", None, nodens.MS_REC | nodens.MS_PRIVATE)
    argv = module_command("kvnode", "init", str(state), f"--api-fd={listener.fileno()}")
    if lock_fd is not None:
        argv.append(f"--lock-fd={lock_fd}")
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    listener.close()
    (state / "init.pid").write_text(str(pid))
    write_status(state, init_pid=pid, monitor_pid=os.getpid(), netns=f"/proc/{pid}/ns/net")

    def forward(signum, frame):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    left = nodens.remove_cgroup_tree(cfg["cgroup_root"])
    try:
        phase = json.loads((state / "status.json").read_text()).get("phase")
    except (OSError, ValueError):
        phase = None
    write_status(
        state,
        phase="failed" if phase in ("starting", "apiserver", "failed") else "stopped",
        init_exit=code,
        cgroups_left=[str(x) for x in left],
    )
    (state / "init.pid").unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("monitor", "init"):
        print(
            "usage: kvnode.py monitor|init STATE_DIR (started by scripts/kubevirt-cluster.sh)",
            file=sys.stderr,
        )
        return 2
    state = Path(argv[1]).resolve()
    if argv[0] == "monitor":
        return monitor(state)
    opts = dict(a[2:].split("=", 1) for a in argv[2:] if a.startswith("--"))
    api_fd = int(opts["api-fd"]) if "api-fd" in opts else None
    lock_fd = int(opts["lock-fd"]) if "lock-fd" in opts else None
    return Init(state, api_fd, lock_fd).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
