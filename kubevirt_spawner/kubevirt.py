"""KubeVirtSpawner: a KubeVirt debug VM and a notebook pod per student.

A thin async layer over kubespawner's ``KubeSpawner``: the objects come from
the pure builders in ``manifests``/``cloudinit``, API calls go through
``kubeapi``, and the VM's state is read with ``vmstatus``. See DESIGN.md for
the lifecycle and the ``LAB_*`` contract, README "Cluster backend" for the
network path of gdb.
"""

from __future__ import annotations

import asyncio
import time

from kubernetes_asyncio.client import V1Volume, V1VolumeMount
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.slugs import is_valid_label, is_valid_object_name, safe_slug
from kubespawner.spawner import EventReflector
from kubespawner.utils import get_k8s_model
from traitlets import Bool, Dict, Enum, Float, Integer, TraitError, Unicode, default, validate

from . import kubeapi, manifests, vmstatus
from .arch import get_arch, toolchain_env
from .cloudinit import make_cloud_init
from .lab import LabEnv
from .sshkeys import known_hosts_line, make_ssh_keypair
from .vmimages import VMChoiceError, VMImage, check_catalogue, choose_vm_image

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6
    from tornado.web import HTTPError

    class SpawnException(HTTPError):
        def __init__(self, message, *, reason, status_code=400, **_):
            super().__init__(status_code, message, reason=reason)
            self.jupyterhub_message = message


DEFAULT_VM_IMAGES = {
    "debian-12": {
        "containerdisk": {
            "x86_64": "quay.io/containerdisks/debian:12",
            "aarch64": "quay.io/containerdisks/debian:12",
        },
        "vmlinux": "/opt/lab/kernels/debian-12/{arch}/vmlinux",
        "kdir": "/opt/lab/kernels/debian-12/{arch}/build",
    },
}


class KubeVirtSpawner(KubeSpawner):
    """Start, per student, a KubeVirt VM in debug mode (QEMU gdbstub on port
    1234 of its pod, ``edu`` device on x86_64) next to the notebook pod, with
    a headless Service, a NetworkPolicy and a Secret; stop removes them all."""

    vm_images = Dict(
        DEFAULT_VM_IMAGES,
        help="""VM images this hub offers, by name: each a dict with
        `containerdisk` ({arch: image}), `vmlinux` and `kdir` (paths inside the
        notebook image; `{arch}` expands). A profile picks one with
        kubespawner_override {"vm_image": NAME}; a name not listed here fails
        the spawn with a 400 error before anything is created.""",
    ).tag(config=True)

    @validate("vm_images")
    def _check_vm_images(self, proposal):
        check_catalogue(proposal.value)
        return proposal.value

    vm_image = Unicode("debian-12", help="Name of the VM image (a key of vm_images).").tag(
        config=True
    )
    vm_arch = Unicode(
        "x86_64",
        help="""Guest architecture: x86_64 (q35 machine, BIOS, edu device) or
        aarch64 (virt machine, UEFI). The VM is scheduled on nodes of that
        architecture (kubernetes.io/arch).""",
    ).tag(config=True)
    notebook_arch = Unicode(
        "x86_64",
        help="""`uname -m` of the notebook pods (the notebook image's
        architecture). When the VM's arch differs (an aarch64 VM beside an
        x86_64 notebook), the notebook gets ARCH and CROSS_COMPILE so that
        `make -C $LAB_KDIR M=$PWD modules` cross-builds, and the checks
        cross-compile programs; the image needs gcc-aarch64-linux-gnu.""",
    ).tag(config=True)

    @validate("notebook_arch")
    def _check_notebook_arch(self, proposal):
        try:
            get_arch(proposal.value)
        except ValueError as e:
            raise TraitError(f"KubeVirtSpawner.notebook_arch: {e}") from None
        return proposal.value

    vm_cpus = Integer(2, help="Virtual CPUs per VM (default: the reference platform's 2).").tag(
        config=True
    )
    vm_memory = Unicode(
        "2Gi", help="Guest memory as a Kubernetes quantity, e.g. 2Gi (the reference default)."
    ).tag(config=True)
    with_vm = Bool(
        True,
        help="""Start a VM with the notebook. Profiles for application-level
        labs set it False: no VM objects, no LAB_VM_* variables.""",
    ).tag(config=True)
    vm_name_template = Unicode(
        "labvm-{user_server}",
        help="""Name of the VM and of its Secret, Service and NetworkPolicy.
        Expanded like pod_name_template; must give a DNS-1035 label (the
        default always does: {user_server} is a safe slug of at most 48
        characters).""",
    ).tag(config=True)
    vm_debug_hook = Enum(
        ["sidecar", "plugin", "patched", "none"],
        "sidecar",
        help="""How QEMU gets `-gdb tcp::1234` (and `-device edu`):
        `sidecar` adds the hooks.kubevirt.io/hookSidecars annotation that runs
        kubevirt-build/sidecar's ConfigMap (KubeVirt `Sidecar` feature gate);
        `plugin` relies on the cluster-wide Plugin in kubevirt-build/plugin
        (KubeVirt >= 1.9, `Plugins` gate); `patched` on a KubeVirt built with
        kubevirt-build/patch. All three act on VMs labelled
        kubevirt-spawner/debug-hook=true, which this spawner sets.""",
    ).tag(config=True)
    vm_hook_configmap = Unicode(
        "kubevirt-spawner-debug-hook",
        help="ConfigMap (in the VM's namespace) with the sidecar hook script.",
    ).tag(config=True)
    vm_node_selector = Dict(
        help="Extra node labels the VM's pod must match (kubernetes.io/arch is always set)."
    ).tag(config=True)
    cluster_domain = Unicode(
        "cluster.local", help="The cluster's DNS domain, for the VM's name in LAB_VM_HOST."
    ).tag(config=True)
    vm_delete_timeout = Float(
        180.0,
        help="""Seconds stop() keeps deleting each object (retrying 409, 429,
        5xx and timeouts) until a read returns 404. Past it, stop fails and
        the hub shows the server as still stopping.""",
    ).tag(config=True)

    @default("fs_gid")
    def _default_fs_gid(self):
        # The ssh key in the notebook pod is a read-only Secret file owned by
        # root; fsGroup makes it group-readable for the (non-root) notebook
        # user. 100 ("users") is z2jh's default too.
        return 100

    # -- state kept across hub restarts ---------------------------------
    vm_name = Unicode("")
    vm_started = Bool(False)

    _vm_choice: VMImage | None = None
    _options_loaded = False

    @default("vm_name")
    def _default_vm_name(self):
        return self._expand_user_properties(self.vm_name_template)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.custom_api = shared_client("CustomObjectsApi")
        self.networking_api = shared_client("NetworkingV1Api")

    def get_state(self):
        state = super().get_state()
        state["vm_name"] = self.vm_name
        state["vm_started"] = self.vm_started
        return state

    def load_state(self, state):
        super().load_state(state)
        self.vm_name = state.get("vm_name", self.vm_name)
        self.vm_started = bool(state.get("vm_started", False))

    def clear_state(self):
        super().clear_state()
        self.vm_name = self._expand_user_properties(self.vm_name_template)
        self.vm_started = False

    # -- names, labels, options -------------------------------------------
    @property
    def _kinds(self) -> dict[str, kubeapi.Kind]:
        return kubeapi.kinds(self.api, self.networking_api, self.custom_api)

    def _vm_labels(self) -> dict[str, str]:
        # Not the pod's extra_labels/extra_annotations: those may carry pod-only
        # meaning (sidecar injection, scheduling) that must not reach the VM.
        labels = self._build_common_labels({})
        labels.update(
            {
                "hub.jupyter.org/servername": safe_slug(self.name, is_valid=is_valid_label),
                manifests.MANAGED_BY: manifests.MANAGED_BY_VALUE,
                manifests.COMPONENT: manifests.VM_COMPONENT,
                "component": manifests.VM_COMPONENT,
                manifests.SERVER_LABEL: self.vm_name,
            }
        )
        return labels

    def _build_pod_labels(self, extra_labels):
        labels = super()._build_pod_labels(extra_labels)
        if self.with_vm:
            labels[manifests.SERVER_LABEL] = self.vm_name
        return labels

    async def load_user_options(self):
        """Apply the profile (kubespawner), then check the VM choice.

        Runs once per start: KubeSpawner._start calls it again after us.
        An unknown profile, image or architecture is a 400 error, raised
        before any object exists.
        """
        if self._options_loaded:
            return
        try:
            await super().load_user_options()
        except (ValueError, KeyError) as e:
            raise SpawnException(f"Invalid server options: {e}", reason="options") from None
        options = self.user_options or {}
        for key in ("vm_image", "vm_arch"):
            if options.get(key):
                setattr(self, key, str(options[key]))
        self._vm_choice = None
        if self.with_vm:
            try:
                self._vm_choice = choose_vm_image(self.vm_images, self.vm_image, self.vm_arch)
            except VMChoiceError as e:
                raise SpawnException(str(e), reason="vm-choice") from None
            if not is_valid_object_name(self.vm_name):
                raise SpawnException(
                    f"vm_name_template gives an invalid object name {self.vm_name!r}",
                    reason="config",
                    status_code=500,
                )
        self._options_loaded = True

    def _vm_host(self) -> str:
        return f"{self.vm_name}.{self.namespace}.svc.{self.cluster_domain}"

    def _lab_env(self) -> LabEnv:
        choice = self._vm_choice
        host = self._vm_host()
        return LabEnv(
            vm_host=host,
            ssh_port=manifests.SSH_PORT,
            gdb_remote=f"{host}:{manifests.GDB_PORT}",
            vmlinux=choice.vmlinux if choice else "",
            kdir=choice.kdir if choice else "",
            arch=choice.arch if choice else self.vm_arch,
            ssh_key=f"{manifests.SSH_MOUNT_PATH}/{manifests.SECRET_SSH_KEY}",
            known_hosts=f"{manifests.SSH_MOUNT_PATH}/{manifests.SECRET_KNOWN_HOSTS}",
            backend="kubevirt",
        )

    def get_env(self):
        env = super().get_env()
        if self.with_vm:
            lab = self._lab_env()
            env.update(lab.to_environ())
            env.update(toolchain_env(lab.arch, self.notebook_arch))
        return env

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        if self.with_vm:
            volume, mount = manifests.make_ssh_volume(self.vm_name)
            pod.spec.volumes = [*(pod.spec.volumes or []), get_k8s_model(V1Volume, volume)]
            nb = pod.spec.containers[0]
            nb.volume_mounts = [*(nb.volume_mounts or []), get_k8s_model(V1VolumeMount, mount)]
        return pod

    # -- manifests ---------------------------------------------------------
    def vm_manifests(self, client_key, host_key) -> dict[str, dict]:
        """Every VM-side object of this server, by kind (owners not yet set)."""
        choice = self._vm_choice
        labels = self._vm_labels()
        annotations = self._build_common_annotations({})
        host = self._vm_host()
        cloud = make_cloud_init(
            authorized_key=client_key.public_line,
            host_key=host_key,
            hostname=self.vm_name,
        )
        template_annotations = {}
        if self.vm_debug_hook == "sidecar":
            template_annotations[manifests.HOOK_SIDECARS_ANNOTATION] = (
                manifests.make_hook_sidecar_annotation(self.vm_hook_configmap)
            )
        template_labels_extra = {manifests.DEBUG_HOOK_LABEL: "true"}
        if self.vm_debug_hook == "none":
            template_labels_extra = {}
        vm = manifests.make_vm(
            self.vm_name,
            self.namespace,
            image=choice.containerdisk,
            arch=choice.arch,
            cpus=self.vm_cpus,
            memory=self.vm_memory,
            labels={**labels, **template_labels_extra},
            secret_name=self.vm_name,
            annotations=annotations,
            template_annotations=template_annotations,
            node_selector=self.vm_node_selector,
        )
        common = dict(labels=labels, annotations=annotations)
        return {
            "virtualmachine": vm,
            "secret": manifests.make_secret(
                self.vm_name,
                self.namespace,
                ssh_private_key=client_key.private_openssh,
                ssh_public_key=client_key.public_line,
                known_hosts=known_hosts_line(host, manifests.SSH_PORT, host_key.public_key),
                cloud_init=cloud,
                **common,
            ),
            "service": manifests.make_service(
                self.vm_name, self.namespace, server=self.vm_name, **common
            ),
            "network_policy": manifests.make_network_policy(
                self.vm_name, self.namespace, server=self.vm_name, **common
            ),
        }

    # -- lifecycle ---------------------------------------------------------
    def _api_timeouts(self) -> dict:
        return dict(
            request_timeout=self.k8s_api_request_timeout,
            retry_timeout=self.k8s_api_request_retry_timeout,
        )

    async def _create_vm_objects(self) -> dict:
        """Create the VM, then its Secret, Service and NetworkPolicy owned by it."""
        kinds = self._kinds
        objs = self.vm_manifests(
            make_ssh_keypair(comment=f"{self.vm_name}@jupyterhub"), make_ssh_keypair()
        )
        vm = await kubeapi.create_or_get(
            kinds["virtualmachine"], self.namespace, objs["virtualmachine"], **self._api_timeouts()
        )
        self.vm_started = True
        owner = manifests.make_owner_reference(
            "VirtualMachine", "kubevirt.io/v1", self.vm_name, vm["metadata"]["uid"]
        )
        rest = []
        for kind in ("secret", "service", "network_policy"):
            manifest = objs[kind]
            manifest["metadata"]["ownerReferences"] = [owner]
            rest.append(
                kubeapi.create_or_get(kinds[kind], self.namespace, manifest, **self._api_timeouts())
            )
        await asyncio.gather(*rest)
        return vm

    async def _adopt_vm(self, pod_uid: str) -> None:
        """Make the notebook pod the VM's owner, so deleting the pod deletes the
        VM (and through it the rest) even if the hub never calls stop()."""
        owner = manifests.make_owner_reference("Pod", "v1", self.pod_name, pod_uid)
        try:
            await kubeapi.patch(
                self._kinds["virtualmachine"],
                self.namespace,
                self.vm_name,
                {"metadata": {"ownerReferences": [owner]}},
                **self._api_timeouts(),
            )
        except Exception as e:  # only a second line of defence; stop() deletes anyway
            self.log.warning("Could not set the owner of VM %s: %s", self.vm_name, e)

    def _vm_view(self) -> tuple[dict | None, dict | None, list[dict]]:
        """The cached VM, VMI and their (and the launcher pod's) events."""
        key = f"{self.namespace}/{self.vm_name}"
        vm = self._reflector("kubevirt-vms").resources.get(key)
        vmi = self._reflector("kubevirt-vmis").resources.get(key)
        events = [
            e
            for e in self._reflector("kubevirt-events").events
            if vmstatus.is_vm_event(e, self.vm_name)
        ]
        if self.event_reflector:
            events += [
                e
                for e in self.event_reflector.events
                if vmstatus.is_launcher_event(e, self.vm_name, vmi)
            ]
        return vm, vmi, events

    def _reflector(self, kind: str):
        return self.__class__.reflectors[self._get_reflector_key(kind)]

    async def _start_watching_vms(self) -> None:
        selector = {manifests.MANAGED_BY: manifests.MANAGED_BY_VALUE}
        ns = self.enable_user_namespaces
        await asyncio.gather(
            self._start_reflector("kubevirt-vms", kubeapi.VirtualMachineReflector,
                                  labels=selector, omit_namespace=ns),
            self._start_reflector("kubevirt-vmis", kubeapi.VirtualMachineInstanceReflector,
                                  labels=selector, omit_namespace=ns),
            self._start_reflector("kubevirt-events", EventReflector,
                                  fields={"involvedObject.apiVersion": "kubevirt.io/v1"},
                                  omit_namespace=ns),
        )  # fmt: skip

    async def _wait_vm_ready(self, deadline: float) -> None:
        """Return when the guest answers ssh; raise SpawnException on a failure
        that waiting will not fix, or at the deadline."""
        while True:
            vm, vmi, events = self._vm_view()
            failure = vmstatus.spawn_failure(vm, vmi, events)
            if failure:
                raise SpawnException(f"Your VM could not start: {failure}.", reason="vm-failed",
                                     status_code=500)  # fmt: skip
            if vmstatus.vm_ready(vmi):
                return
            if time.monotonic() > deadline:
                raise SpawnException(
                    f"Your VM was not ready within {getattr(self, '_vm_budget', self.start_timeout):.0f}s "
                    f"({vmstatus.describe(vm, vmi)}).",
                    reason="vm-timeout",
                    status_code=500,
                )
            await asyncio.sleep(1)

    async def _start(self):
        self._options_loaded = False
        await self.load_user_options()
        if not self.with_vm:
            return await super()._start()
        # Our own deadline ends well before the hub's (start_timeout): failing
        # includes deleting what was created, and only a failure raised before
        # the hub gives up shows the student why ("not ready within…, VM
        # Starting") rather than the hub's bare timeout.
        self._vm_budget = self.start_timeout - min(60.0, self.start_timeout / 2)
        deadline = time.monotonic() + self._vm_budget
        await self._start_watching_vms()
        # A leftover of an earlier run with the same names would be adopted
        # half-way (409 on create): clear it first, like systemdspawner does.
        await self._delete_all(now=True)
        tasks: list[asyncio.Future] = []
        try:
            await self._create_vm_objects()
            pod_task = asyncio.ensure_future(super()._start())
            vm_task = asyncio.ensure_future(self._wait_vm_ready(deadline))
            tasks = [pod_task, vm_task]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the first failure
            url, _ = await asyncio.gather(pod_task, vm_task)
            await self._adopt_vm(self.pod_id)
            return url
        except BaseException:
            for task in tasks:
                task.cancel()
            # Let a half-sent pod create finish before deleting, so it cannot
            # land after the delete confirmed the pod gone.
            await asyncio.gather(*tasks, return_exceptions=True)
            self.log.info("Start of %s failed; deleting what was created", self.vm_name)
            try:
                await self._delete_all(now=True)
            except Exception:
                self.log.exception("Cleaning up after the failed start of %s", self.vm_name)
            raise

    async def _delete_all(self, now: bool) -> None:
        """Delete the pod and every VM object, each until a read returns 404."""
        kinds = self._kinds
        grace = 0 if now else self.delete_grace_period
        targets = [
            ("pod", self.pod_name, {"grace_period_seconds": grace}),
            ("virtualmachine", self.vm_name, {}),
            ("network_policy", self.vm_name, {}),
            ("service", self.vm_name, {}),
            ("secret", self.vm_name, {}),
        ]
        results = await asyncio.gather(
            *(
                kubeapi.ensure_gone(
                    kinds[kind],
                    self.namespace,
                    name,
                    request_timeout=self.k8s_api_request_timeout,
                    retry_timeout=self.vm_delete_timeout,
                    delete_kwargs=kw,
                )
                for kind, name, kw in targets
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def stop(self, now=False):
        """Delete the notebook pod, VM, Service, NetworkPolicy and Secret,
        retrying transient API errors until each is confirmed gone."""
        await self._delete_all(now)
        self.vm_started = False

    async def poll(self):
        """None while notebook and VM both run; 1 when either has stopped
        (a stopped, crashed or deleted VM is reported, not hidden).

        The hub calls stop() only for servers that poll() says are running,
        so when one half has stopped, the rest is deleted here first.
        """
        status = await super().poll()
        if status is None and self.vm_started:
            reason = await self._vm_stopped_reason()
            if reason:
                self.log.warning("Server %s of %s stopped: %s", self.name, self.user.name, reason)
                status = 1
        if status is not None and self.vm_started:
            try:
                await self._delete_all(now=True)
                self.vm_started = False
            except Exception:
                self.log.exception("Deleting what is left of %s", self.vm_name)
        return status

    async def _vm_stopped_reason(self) -> str | None:
        """Why the VM no longer runs, or None while it runs (or cannot be told)."""
        await self._start_watching_vms()
        vm, vmi, _ = self._vm_view()
        if vm is None:
            # Missing from the cache is not proof: the reflector may be
            # re-listing after a failed watch. Only a 404 says it is gone.
            try:
                vm = await kubeapi.read_or_none(
                    self._kinds["virtualmachine"], self.namespace, self.vm_name,
                    request_timeout=self.k8s_api_request_timeout,
                )  # fmt: skip
            except Exception as e:
                self.log.warning("Cannot read VM %s (%s); assuming it still runs", self.vm_name, e)
                return None
        return vmstatus.vm_exit_reason(vm, vmi)

    async def progress(self):
        """Pod events (as kubespawner reports them) merged with the VM's
        status changes and its VM/VMI/launcher events, until start ends."""
        if not self.with_vm:
            async for event in super().progress():
                yield event
            return
        await self._start_watching_vms()
        if self.events_enabled:
            await self._start_watching_events()
        seen: set[str] = set()
        last_state = ""
        progress = 10
        while True:
            finished = self._start_future is not None and self._start_future.done()
            vm, vmi, vm_events = self._vm_view()
            state = vmstatus.describe(vm, vmi)
            if state != last_state:
                last_state = state
                progress = min(90, progress + 10)
                yield {"progress": int(progress), "message": f"{self.vm_name}: {state}"}
            for event in [*self.events, *vm_events]:
                uid = (event.get("metadata") or {}).get("uid") or vmstatus.format_event(event)
                if uid in seen:
                    continue
                seen.add(uid)
                progress += (90 - progress) / 3
                yield {"progress": int(progress), "raw_event": event,
                       "message": vmstatus.format_event(event)}  # fmt: skip
            if finished:
                return
            await asyncio.sleep(1)
