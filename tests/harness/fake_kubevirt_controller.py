"""StandInKubeVirtController: a TEST DOUBLE for KubeVirt's controllers.

The real KubeVirt runs in tests too (scripts/kubevirt-cluster.sh's one-node
cluster, tests/cluster/test_kubevirt_real*.py), and every behaviour it can
show on demand is tested there. This double stays for what it cannot give
cheaply or on demand: a fast API-server tier with three nodes that starts in
seconds (garbage collection, RBAC, schema, the fault proxy, the 100-student
benchmark, which a 2-core machine cannot run as 100 real VMs), and a guest
that crashes again and again on request. It imitates the *API-visible*
behaviour the spawner depends on, against a real API server, as the real
KubeVirt v1.8.4 shows it:

* VirtualMachine  -> a VirtualMachineInstance of the same name, owned by the VM
  (``spec.runStrategy`` Always/RerunOnFailure/Once/Manual/Halted, or the older
  ``spec.running``), a finalizer on VM and VMI as KubeVirt sets them, and
  ``status.printableStatus`` / ``created`` / ``ready`` / conditions.
* VirtualMachineInstance -> a virt-launcher pod owned by the VMI and labelled as
  KubeVirt labels it: the VMI's (template) labels, ``kubevirt.io=virt-launcher``,
  ``kubevirt.io/created-by=<vmi uid>``, ``vm.kubevirt.io/name=<hostname>``,
  ``vmi.kubevirt.io/id=<vmi name, hashed past 63 chars>``; the real
  kube-scheduler places it and KWOK (the stand-in kubelet) runs it.
* VMI phases Pending -> Scheduling -> Scheduled -> Running, with
  ``status.interfaces[0].ipAddress`` = the pod's IP, ``nodeName`` and a Ready
  condition; Failed/Succeeded when the VM is crashed or stopped.

Failure modes are asked for per VM with the annotation
``kubevirt-spawner.test/failure`` on the VM (or its template), or per VM name in
the ConfigMap ``stand-in-failures`` of the VM's namespace (key = VM name), so a
test can target a VM the spawner names itself:

``image-pull``     the launcher pod's container waits in ErrImagePull, then
                   ImagePullBackOff; VM printableStatus says the same.
``unschedulable``  the launcher pod asks for more memory than any node has; the
                   real scheduler leaves it Pending (PodScheduled=False,
                   Unschedulable); printableStatus ErrorUnschedulable.
``guest-crash``    the VMI reaches Running (never Ready), then fails a moment later; the VM
                   restarts it after a back-off and shows CrashLoopBackOff.
``never-ready``    the VMI runs and has an IP but its Ready condition stays False.

What it does NOT imitate: admission webhooks (KubeVirt's defaulting and
cross-field validation; only the CRDs' OpenAPI schemas validate here),
migrations, instance types, DataVolumes, the domain itself. Against a real
cluster (``KUBECONFIG`` set) the tests do not start it.

Run: ``PYTHONPATH=tests python -m harness.fake_kubevirt_controller --kubeconfig FILE``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import signal
import threading
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger("stand-in-kubevirt")

GROUP, VERSION = "kubevirt.io", "v1"
FAILURE_ANNOTATION = "kubevirt-spawner.test/failure"
FAILURE_CONFIGMAP = "stand-in-failures"
FAILURE_MODES = ("image-pull", "unschedulable", "guest-crash", "never-ready")
# Pods of image-pull VMs are bound here: a node no kubelet (and no KWOK)
# manages, so the stand-in can write the status a kubelet would.
KUBELETLESS_NODE = "kvs-image-pull-node"
VM_FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"
VMI_FINALIZER = "kubevirt.io/foregroundDeleteVirtualMachine"
LAUNCHER_IMAGE = "quay.io/kubevirt/virt-launcher:v1.8.4"
CRASH_AFTER_S = 2.0
CRASH_BACKOFF_S = 10.0
RUNNING_STRATEGIES = {"Always", "RerunOnFailure", "Once"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def vmi_id_label(name: str) -> str:
    """KubeVirt's ``vmi.kubevirt.io/id``: the name, or past 63 chars a prefix + hash."""
    if len(name) <= 63:
        return name
    return name[:54] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def owner_ref(obj: dict, kind: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def wants_running(vm: dict) -> bool:
    spec = vm.get("spec", {})
    if "runStrategy" in spec:
        return spec["runStrategy"] in RUNNING_STRATEGIES
    return bool(spec.get("running", False))


def condition(ctype: str, status: bool, reason: str = "", message: str = "") -> dict:
    c = {"type": ctype, "status": "True" if status else "False", "lastTransitionTime": now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def make_launcher_pod(vmi: dict, failure: str | None) -> dict:
    """The virt-launcher pod KubeVirt would create for ``vmi`` (the parts the API sees)."""
    meta, spec = vmi["metadata"], vmi.get("spec", {})
    hostname = (spec.get("hostname") or meta["name"])[:63]
    labels = dict(meta.get("labels") or {})
    labels.update(
        {
            "kubevirt.io": "virt-launcher",
            "kubevirt.io/created-by": meta["uid"],
            "vm.kubevirt.io/name": hostname,
            "vmi.kubevirt.io/id": vmi_id_label(meta["name"]),
        }
    )
    domain = spec.get("domain", {})
    requests = dict((domain.get("resources") or {}).get("requests") or {})
    memory = (domain.get("memory") or {}).get("guest") or requests.get("memory") or "128Mi"
    requests.setdefault("memory", memory)
    if failure == "unschedulable":
        requests["memory"] = "64Ti"
    node_selector = dict(spec.get("nodeSelector") or {})
    node_selector["kubevirt.io/schedulable"] = "true"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # As KubeVirt names it; the API server cuts the prefix at 58 chars.
            "generateName": f"virt-launcher-{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {"kubevirt.io/domain": meta["name"], "stand-in/failure": failure or ""},
            "ownerReferences": [owner_ref(vmi, "VirtualMachineInstance")],
        },
        "spec": {
            "hostname": hostname,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "nodeSelector": node_selector,
            "readinessGates": [{"conditionType": "kubevirt.io/virtual-machine-unpaused"}],
            "containers": [
                {
                    "name": "compute",
                    "image": LAUNCHER_IMAGE,
                    "resources": {"requests": requests},
                }
            ],
            "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 30),
        },
    }
    for key in ("subdomain", "tolerations", "affinity", "priorityClassName"):
        if spec.get(key):
            pod["spec"][key] = spec[key]
    if failure == "image-pull":
        pod["spec"]["nodeName"] = KUBELETLESS_NODE
        del pod["spec"]["nodeSelector"]
    return pod


class StandInKubeVirtController:
    """Test double for KubeVirt's virt-controller + virt-handler (see module docstring).

    A level-triggered loop: every ``interval`` seconds it lists VMs, VMIs and
    launcher pods across namespaces and moves each one step towards what
    KubeVirt would make of it. Idempotent, so a restart or a conflict costs
    nothing but a round.
    """

    def __init__(self, api_client: client.ApiClient, interval: float = 0.3):
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.interval = interval
        self.stopping = threading.Event()
        self.crashed_at: dict[str, float] = {}  # VMI uid -> time it reached Running
        self.restart_after: dict[str, float] = {}  # VM uid -> earliest restart

    # -- API helpers ----------------------------------------------------------------
    def _list(self, plural: str) -> list[dict]:
        return self.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]

    def _pods(self) -> list[dict]:
        r = self.core.list_pod_for_all_namespaces(
            label_selector="kubevirt.io=virt-launcher", _preload_content=False
        )
        return json.loads(r.data)["items"]

    def _patch_status(self, plural: str, obj: dict, status: dict) -> None:
        m = obj["metadata"]
        args = (GROUP, VERSION, m["namespace"], plural, m["name"], {"status": status})
        if plural == "virtualmachineinstances":
            # KubeVirt's VMI CRD has no status subresource: status is written with the object.
            self.custom.patch_namespaced_custom_object(*args)
        else:
            self.custom.patch_namespaced_custom_object_status(*args)

    def _set_finalizers(self, plural: str, obj: dict, finalizers: list[str]) -> None:
        m = obj["metadata"]
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": m["resourceVersion"]}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, m["namespace"], plural, m["name"], body
        )

    def _event(self, obj: dict, kind: str, etype: str, reason: str, message: str) -> None:
        m = obj["metadata"]
        body = {
            "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "name": m["name"],
                "namespace": m["namespace"],
                "uid": m["uid"],
            },
            "type": etype,
            "reason": reason,
            "message": message,
            "source": {"component": "stand-in-kubevirt"},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(m["namespace"], body)
        except ApiException as e:  # events are best effort, as in KubeVirt
            log.debug("event %s on %s: %s", reason, m["name"], e.reason)

    def failure_mode(self, vm_or_vmi: dict, configmaps: dict[str, dict]) -> str | None:
        m = vm_or_vmi["metadata"]
        ann = m.get("annotations") or {}
        tmpl_ann = ((vm_or_vmi.get("spec") or {}).get("template") or {}).get("metadata") or {}
        mode = ann.get(FAILURE_ANNOTATION) or (tmpl_ann.get("annotations") or {}).get(
            FAILURE_ANNOTATION
        )
        if not mode:
            mode = (configmaps.get(m["namespace"]) or {}).get(m["name"])
        if mode and mode not in FAILURE_MODES:
            log.warning("%s/%s: unknown failure mode %r", m["namespace"], m["name"], mode)
            return None
        return mode

    def _failure_configmaps(self, namespaces: set[str]) -> dict[str, dict]:
        out = {}
        for ns in namespaces:
            try:
                out[ns] = self.core.read_namespaced_config_map(FAILURE_CONFIGMAP, ns).data or {}
            except ApiException as e:
                if e.status != 404:
                    raise
        return out

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        log.info("stand-in KubeVirt controller running (test double, not KubeVirt)")
        while not self.stopping.is_set():
            try:
                self.reconcile_once()
            except ApiException as e:
                if e.status not in (404, 409, 422):
                    log.warning("round failed: %s %s", e.status, e.reason)
            except Exception:
                log.exception("round failed")
            self.stopping.wait(self.interval)

    def reconcile_once(self) -> None:
        vms = self._list("virtualmachines")
        vmis = self._list("virtualmachineinstances")
        pods = self._pods()
        failures = self._failure_configmaps({o["metadata"]["namespace"] for o in vms + vmis})
        vmi_by_key = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in vmis}
        pods_by_vmi: dict[str, list[dict]] = {}
        for p in pods:
            uid = p["metadata"].get("labels", {}).get("kubevirt.io/created-by")
            pods_by_vmi.setdefault(uid, []).append(p)
        for vm in vms:
            key = (vm["metadata"]["namespace"], vm["metadata"]["name"])
            self._guard(self.reconcile_vm, vm, vmi_by_key.get(key), failures)
        for vmi in vmis:
            self._guard(
                self.reconcile_vmi, vmi, pods_by_vmi.get(vmi["metadata"]["uid"], []), failures
            )
        for p in pods:
            self._guard(self.reconcile_kubeletless_pod, p)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except ApiException as e:
            # 404/409: another actor (GC, the test, a conflict) moved first; next round.
            if e.status not in (404, 409):
                log.warning("%s: %s %s %s", fn.__name__, e.status, e.reason, e.body)
        except Exception:  # one odd object must not stall the others
            log.exception("%s failed", fn.__name__)

    # -- VirtualMachine --------------------------------------------------------------
    def reconcile_vm(self, vm: dict, vmi: dict | None, failures: dict) -> None:
        m = vm["metadata"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        finalizers = list(m.get("finalizers") or [])
        if m.get("deletionTimestamp"):
            if vmi is not None and not vmi["metadata"].get("deletionTimestamp"):
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, "virtualmachineinstances", name
                )
            elif vmi is None and VM_FINALIZER in finalizers:
                finalizers.remove(VM_FINALIZER)
                self._set_finalizers("virtualmachines", vm, finalizers)
            return
        if VM_FINALIZER not in finalizers:
            self._set_finalizers("virtualmachines", vm, [*finalizers, VM_FINALIZER])
            return

        strategy = (vm.get("spec") or {}).get("runStrategy")
        running = wants_running(vm)
        phase = (vmi or {}).get("status", {}).get("phase")
        if vmi is not None and vmi["metadata"].get("ownerReferences", [{}])[0].get("uid") != uid:
            vmi = None  # a VMI of the same name that this VM does not own
        if running and vmi is None:
            if time.monotonic() < self.restart_after.get(uid, 0):
                self._vm_status(vm, None, "CrashLoopBackOff")
                return
            self._create_vmi(vm, failures)
            self._vm_status(vm, None, "Starting")
            return
        if vmi is not None and not vmi["metadata"].get("deletionTimestamp"):
            stop = not running
            if phase == "Failed" and strategy in (None, "Always", "RerunOnFailure"):
                self.restart_after[uid] = time.monotonic() + CRASH_BACKOFF_S
                self._event(
                    vm,
                    "VirtualMachine",
                    "Warning",
                    "CrashLoopBackOff",
                    "VMI failed; restarting after back-off",
                )
                stop = True
            elif phase in ("Failed", "Succeeded") and strategy in ("Once", "Manual"):
                stop = False
            if stop:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, "virtualmachineinstances", name
                )
        self._vm_status(vm, vmi, None)

    def _create_vmi(self, vm: dict, failures: dict) -> None:
        tmpl = (vm.get("spec") or {}).get("template") or {}
        tmeta = tmpl.get("metadata") or {}
        ann = dict(tmeta.get("annotations") or {})
        mode = self.failure_mode(vm, failures)
        if mode:
            ann[FAILURE_ANNOTATION] = mode
        labels = dict(tmeta.get("labels") or {})
        labels["kubevirt.io/vm"] = vm["metadata"]["name"]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": vm["metadata"]["name"],
                "namespace": vm["metadata"]["namespace"],
                "labels": labels,
                "annotations": ann,
                "ownerReferences": [owner_ref(vm, "VirtualMachine")],
                "finalizers": [VMI_FINALIZER],
            },
            "spec": tmpl.get("spec") or {},
        }
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, vm["metadata"]["namespace"], "virtualmachineinstances", body
        )
        self._event(
            vm,
            "VirtualMachine",
            "Normal",
            "SuccessfulCreate",
            f"Started the virtual machine by creating the new virtual machine instance {body['metadata']['name']}",
        )

    def _vm_status(self, vm: dict, vmi: dict | None, forced: str | None) -> None:
        vstat = (vmi or {}).get("status") or {}
        phase = vstat.get("phase")
        conds = {c["type"]: c for c in vstat.get("conditions") or []}
        ready = conds.get("Ready", {}).get("status") == "True"
        if forced:
            printable = forced
        elif vmi is None:
            printable = "Stopped"
        elif vmi["metadata"].get("deletionTimestamp"):
            printable = "Terminating" if vm["metadata"].get("deletionTimestamp") else "Stopping"
        elif phase == "Running":
            printable = "Running"
        elif phase == "Failed":
            printable = "CrashLoopBackOff"
        elif phase == "Succeeded":
            printable = "Stopped"
        elif conds.get("Ready", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            printable = conds["Ready"]["reason"]
        elif conds.get("PodScheduled", {}).get("status") == "False":
            printable = "ErrorUnschedulable"
        elif phase in ("Scheduling", "Scheduled"):
            printable = "Starting"
        else:
            printable = "Provisioning" if phase in (None, "", "Pending") else "Unknown"
        status: dict[str, Any] = {
            "printableStatus": printable,
            "created": vmi is not None,
            "ready": ready,
            "conditions": [
                condition(
                    "Ready",
                    ready,
                    "" if ready else (printable if printable != "Running" else "GuestNotReady"),
                )
            ],
        }
        if printable == "CrashLoopBackOff":
            status["startFailure"] = {"consecutiveFailCount": 1}
        old = vm.get("status") or {}
        if any(old.get(k) != status[k] for k in ("printableStatus", "created", "ready")):
            self._patch_status("virtualmachines", vm, status)

    # -- VirtualMachineInstance ----------------------------------------------------------
    def reconcile_vmi(self, vmi: dict, pods: list[dict], failures: dict) -> None:
        m = vmi["metadata"]
        ns, uid = m["namespace"], m["uid"]
        if m.get("deletionTimestamp"):
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            for p in live:
                self.core.delete_namespaced_pod(p["metadata"]["name"], ns)
            if not pods and VMI_FINALIZER in (m.get("finalizers") or []):
                self._set_finalizers(
                    "virtualmachineinstances",
                    vmi,
                    [f for f in m["finalizers"] if f != VMI_FINALIZER],
                )
            return
        status = vmi.get("status") or {}
        phase = status.get("phase") or "Pending"
        mode = self.failure_mode(vmi, failures)
        if phase in ("Failed", "Succeeded"):
            return
        if not pods:
            if phase in ("Pending", ""):
                pod = make_launcher_pod(vmi, mode)
                made = self.core.create_namespaced_pod(ns, pod, _preload_content=False)
                self._event(
                    vmi,
                    "VirtualMachineInstance",
                    "Normal",
                    "SuccessfulCreate",
                    f"Created virtual machine pod {json.loads(made.data)['metadata']['name']}",
                )
                self._vmi_status(vmi, {"phase": "Scheduling", "conditions": []})
            else:  # the pod vanished under a scheduled VMI: KubeVirt fails the VMI
                self._vmi_status(vmi, {"phase": "Failed", "reason": "PodNotExists"})
            return
        pod = pods[0]
        pstat = pod.get("status") or {}
        pconds = {c["type"]: c for c in pstat.get("conditions") or []}
        pod_phase = pstat.get("phase")
        if pod_phase in ("Failed", "Succeeded"):
            self._vmi_status(vmi, {"phase": "Failed", "reason": "PodTerminated"})
            return
        sched = pconds.get("PodScheduled", {})
        if sched.get("status") == "False":
            new = {
                "phase": "Scheduling",
                "conditions": [
                    condition(
                        "PodScheduled", False, sched.get("reason", ""), sched.get("message", "")
                    ),
                    condition("Ready", False, "PodNotReady"),
                ],
            }
            old = {c["type"]: c for c in status.get("conditions") or []}.get("PodScheduled", {})
            if old.get("message") != sched.get("message"):
                if old.get("reason") != sched.get("reason"):
                    self._event(
                        vmi,
                        "VirtualMachineInstance",
                        "Warning",
                        "FailedScheduling",
                        sched.get("message", "pod unschedulable"),
                    )
                self._vmi_status(vmi, new)
            return
        waiting = [
            (cs.get("state") or {}).get("waiting")
            for cs in pstat.get("containerStatuses") or []
            if (cs.get("state") or {}).get("waiting")
        ]
        if waiting and waiting[0].get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            reason = waiting[0]["reason"]
            old = {c["type"]: c for c in status.get("conditions") or []}
            if old.get("Ready", {}).get("reason") != reason:
                self._event(
                    vmi, "VirtualMachineInstance", "Warning", reason, waiting[0].get("message", "")
                )
                self._vmi_status(
                    vmi,
                    {
                        "phase": "Scheduling",
                        "conditions": [
                            condition("Ready", False, reason, waiting[0].get("message", ""))
                        ],
                    },
                )
            return
        node = pod["spec"].get("nodeName")
        if node and pod["metadata"]["uid"] not in (status.get("activePods") or {}):
            self._vmi_status(vmi, {"activePods": {pod["metadata"]["uid"]: node}})
            return
        if pod_phase != "Running" or not pstat.get("podIP"):
            return
        if phase in ("Pending", "Scheduling"):
            self._vmi_status(vmi, {"phase": "Scheduled", "nodeName": node, "conditions": []})
            return
        # A crashing guest dies while booting, before its readiness probe passes.
        ready = mode not in ("never-ready", "guest-crash")
        if phase == "Scheduled":
            self._vmi_status(
                vmi,
                {
                    "phase": "Running",
                    "nodeName": node,
                    "interfaces": [
                        {
                            "name": "default",
                            "ipAddress": pstat["podIP"],
                            "ipAddresses": [p["ip"] for p in pstat.get("podIPs") or []]
                            or [pstat["podIP"]],
                            "infoSource": "domain",
                        }
                    ],
                    "conditions": [
                        condition(
                            "Ready",
                            ready,
                            "" if ready else "GuestNotReady",
                            "" if ready else "the guest never became ready (stand-in failure mode)",
                        )
                    ],
                    "launcherContainerImageVersion": LAUNCHER_IMAGE,
                },
            )
            self.crashed_at[uid] = time.monotonic()
            return
        if phase == "Running" and mode == "guest-crash":
            started = self.crashed_at.setdefault(uid, time.monotonic())
            if time.monotonic() - started >= CRASH_AFTER_S:
                self._event(
                    vmi,
                    "VirtualMachineInstance",
                    "Warning",
                    "Stopped",
                    "The VirtualMachineInstance crashed.",
                )
                self._vmi_status(
                    vmi,
                    {
                        "phase": "Failed",
                        "reason": "GuestCrashed",
                        "conditions": [
                            condition(
                                "Ready",
                                False,
                                "GuestCrashed",
                                "the guest crashed (stand-in failure mode)",
                            )
                        ],
                    },
                )
                self.core.patch_namespaced_pod_status(
                    pod["metadata"]["name"],
                    ns,
                    {"status": {"phase": "Failed", "reason": "GuestCrashed"}},
                )

    def _vmi_status(self, vmi: dict, new: dict) -> None:
        status = dict(vmi.get("status") or {})
        status.update(new)
        if status.get("phase") != (vmi.get("status") or {}).get("phase"):
            status.setdefault("phaseTransitionTimestamps", []).append(
                {"phase": status["phase"], "phaseTransitionTimestamp": now()}
            )
        self._patch_status("virtualmachineinstances", vmi, status)

    # -- pods nobody's kubelet runs ---------------------------------------------------------
    def reconcile_kubeletless_pod(self, pod: dict) -> None:
        """Be the kubelet of KUBELETLESS_NODE: failed image pulls, and deletions."""
        if pod["spec"].get("nodeName") != KUBELETLESS_NODE:
            return
        m = pod["metadata"]
        if m.get("deletionTimestamp"):
            self.core.delete_namespaced_pod(m["name"], m["namespace"], grace_period_seconds=0)
            return
        cs = (pod.get("status") or {}).get("containerStatuses") or []
        reason = ((cs[0].get("state") or {}).get("waiting") or {}).get("reason") if cs else None
        nxt = {None: "ErrImagePull", "ErrImagePull": "ImagePullBackOff"}.get(reason)
        if nxt is None:
            return
        image = pod["spec"]["containers"][0]["image"]
        msg = (
            f'Back-off pulling image "{image}"'
            if nxt == "ImagePullBackOff"
            else (f'failed to pull and unpack image "{image}": not found (stand-in failure mode)')
        )
        self.core.patch_namespaced_pod_status(
            m["name"],
            m["namespace"],
            {
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                    ],
                    "containerStatuses": [
                        {
                            "name": c["name"],
                            "image": c["image"],
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"waiting": {"reason": nxt, "message": msg}},
                        }
                        for c in pod["spec"]["containers"]
                    ],
                }
            },
        )


def ensure_kubeletless_node(core: client.CoreV1Api) -> None:
    """The node image-pull pods are bound to; KWOK leaves it alone (no annotation)."""
    body = {
        "metadata": {
            "name": KUBELETLESS_NODE,
            "labels": {"kubernetes.io/hostname": KUBELETLESS_NODE},
        },
        "spec": {"taints": [{"key": "stand-in/no-kubelet", "effect": "NoSchedule"}]},
    }
    try:
        core.create_node(body)
    except ApiException as e:
        if e.status != 409:
            raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Stand-in for KubeVirt's controllers, for tests only (see module docstring)."
    )
    ap.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the test cluster")
    ap.add_argument("--interval", type=float, default=0.3, help="seconds between rounds")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    api = config.new_client_from_config(config_file=args.kubeconfig)
    ensure_kubeletless_node(client.CoreV1Api(api))
    ctl = StandInKubeVirtController(api, args.interval)
    signal.signal(signal.SIGTERM, lambda *_: ctl.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: ctl.stopping.set())
    ctl.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
