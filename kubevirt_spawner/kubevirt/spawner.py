"""KubeVirtSpawner: a KubeVirt debug VM and a notebook pod per student.

A thin async layer over kubespawner's ``KubeSpawner``: the objects come from
the pure builders in ``manifests``/``cloudinit``, API calls go through
``kubeapi``, and the VM's state is read with ``vmstatus``. See docs/design.md for
the lifecycle and the ``LAB_*`` contract, docs/cluster-apiserver.md ("Why port
1234 reaches QEMU") for the network path of gdb.
"""

from __future__ import annotations

import asyncio
import shlex
import time

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client import V1Volume, V1VolumeMount
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.slugs import is_valid_label, is_valid_object_name, safe_slug
from kubespawner.spawner import EventReflector
from kubespawner.utils import get_k8s_model
from traitlets import Bool, Dict, Enum, Float, Integer, TraitError, Unicode, default, validate

from ..arch import get_arch, toolchain_env
from ..contract import KubeVirtVMState, LabEnv
from ..spawnerror import SpawnError
from ..sshkeys import known_hosts_line, make_ssh_keypair
from . import kubeapi, manifests, vmstatus
from .cloudinit import make_cloud_init
from .vmimages import DEFAULT_VM_IMAGES, VMChoiceError, VMImage, check_catalogue, choose_vm_image


def _first_list_failed(reflector) -> bool:
    done = reflector.first_load_future
    return done.done() and (done.cancelled() or done.exception() is not None)


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
    gdb_relay_python = Unicode(
        "python3",
        help="""The Python, as the notebook pod's shell finds it, that runs the
        gdb relay (kubevirt_spawner.gdbrelay) in LAB_GDB_REMOTE: gdb attaches
        through `| python3 -m kubevirt_spawner.gdbrelay tcp:<vm host>:1234`,
        which turns gdb's kill into a detach so no gdb command ends the VM.
        The notebook image must have this package for that Python (the
        project's image has it in /opt/lab/venv, first on PATH).""",
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
    # The last start finished; what the hub saves after a start says so. A
    # server the hub restores without it was being started when the hub died.
    start_done = Bool(False)

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
        saved = KubeVirtVMState(self.vm_name, self.vm_started, self.start_done)
        state.update(saved.to_state())
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = KubeVirtVMState.from_state(state)
        self.vm_name = saved.vm_name or self.vm_name
        self.vm_started = saved.started
        self.start_done = saved.start_done

    def clear_state(self):
        super().clear_state()
        self.vm_name = self._expand_user_properties(self.vm_name_template)
        self.vm_started = False
        self.start_done = False

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
            raise SpawnError(
                f"Invalid server options: {e}", reason="options", status_code=400
            ) from None
        options = self.user_options or {}
        for key in ("vm_image", "vm_arch"):
            if options.get(key):
                setattr(self, key, str(options[key]))
        self._vm_choice = None
        if self.with_vm:
            try:
                self._vm_choice = choose_vm_image(self.vm_images, self.vm_image, self.vm_arch)
            except VMChoiceError as e:
                raise SpawnError(str(e), reason="vm-choice", status_code=400) from None
            if not is_valid_object_name(self.vm_name):
                raise SpawnError(
                    f"vm_name_template gives an invalid object name {self.vm_name!r}",
                    reason="config",
                    status_code=500,
                )
        self._options_loaded = True

    def _vm_host(self) -> str:
        return f"{self.vm_name}.{self.namespace}.svc.{self.cluster_domain}"

    def _gdb_remote(self, host: str) -> str:
        """gdb's ``target remote`` argument: QEMU's gdbstub in the VM's pod,
        through the relay (a pipe), so that gdb's kill never ends the VM."""
        relay = f"{shlex.quote(self.gdb_relay_python)} -m kubevirt_spawner.gdbrelay"
        return f"| {relay} tcp:{host}:{manifests.GDB_PORT}"

    def _lab_env(self) -> LabEnv:
        choice = self._vm_choice
        host = self._vm_host()
        return LabEnv(
            vm_host=host,
            ssh_port=manifests.SSH_PORT,
            gdb_remote=self._gdb_remote(host),
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
            # The sidecar hook lets the VM run once QEMU is up; started so,
            # KubeVirt leaves gdb's stops alone (manifests.make_vm).
            start_paused=self.vm_debug_hook == "sidecar",
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

    async def _start_reflector(self, kind, reflector_class, replace=False, **kwargs):
        """kubespawner's shared reflector (pods, events, VMs, VMIs), made to
        survive a failed first list.

        kubespawner keeps a reflector whose first list failed (one 429 or
        500 is enough) and hands it out from then on as if it ran: no watch,
        an empty cache, for the hub's lifetime, so that every later spawn
        waits for a pod or VM it never sees. Here such a reflector is
        replaced, and a transient error on the first list is retried with
        backoff (up to k8s_api_request_retry_timeout); a 403 still raises.
        """
        parent = super()._start_reflector
        key = self._get_reflector_key(kind)

        async def attempt():
            current = self.__class__.reflectors.get(key)
            again = replace or (current is not None and _first_list_failed(current))
            try:
                return await parent(kind, reflector_class, replace=again, **kwargs)
            except Exception as e:
                if not kubeapi.is_retryable(e):
                    raise
                self.log.warning("Watching %s: the first list failed (%s); retrying", kind, e)
                return False

        return await exponential_backoff(
            attempt,
            f"Could not start watching {kind}",
            timeout=self.k8s_api_request_retry_timeout,
        )

    async def _start_watching_vms(self) -> None:
        selector = {manifests.MANAGED_BY: manifests.MANAGED_BY_VALUE}
        ns = self.enable_user_namespaces
        await asyncio.gather(
            self._start_reflector(
                "kubevirt-vms", kubeapi.VirtualMachineReflector, labels=selector, omit_namespace=ns
            ),
            self._start_reflector(
                "kubevirt-vmis",
                kubeapi.VirtualMachineInstanceReflector,
                labels=selector,
                omit_namespace=ns,
            ),
            self._start_reflector(
                "kubevirt-events",
                EventReflector,
                fields={"involvedObject.apiVersion": "kubevirt.io/v1"},
                omit_namespace=ns,
            ),
        )

    async def _wait_vm_ready(self, deadline: float) -> None:
        """Return when the guest answers ssh; raise SpawnError on a failure
        that waiting will not fix, or at the deadline."""
        while True:
            vm, vmi, events = self._vm_view()
            failure = vmstatus.spawn_failure(vm, vmi, events)
            if failure:
                raise SpawnError(
                    f"Your VM could not start: {failure}.", reason="vm-failed", status_code=500
                )
            if vmstatus.vm_ready(vmi):
                return
            if time.monotonic() > deadline:
                budget = getattr(self, "_vm_budget", self.start_timeout)
                message = (
                    f"Your VM was not ready within {budget:.0f}s ({vmstatus.describe(vm, vmi)})."
                )
                console = await self._guest_console_tail(vmi)
                if console:
                    self.log.warning("Console of %s at its timeout:\n%s", self.vm_name, console)
                    message += f" Its console ended with:\n{console}"
                raise SpawnError(message, reason="vm-timeout", status_code=500)
            await asyncio.sleep(1)

    async def _guest_console_tail(self, vmi: dict | None, lines: int = 12) -> str:
        """The last lines the guest printed on its serial console (the launcher
        pod's guest-console-log container), or "" when they cannot be read
        (no instance or pod yet, console log disabled, no pods/log right)."""
        uid = ((vmi or {}).get("metadata") or {}).get("uid")
        if not uid:
            return ""
        try:
            pods = await self.api.list_namespaced_pod(
                self.namespace,
                label_selector=f"{vmstatus.LAUNCHER_VMI_LABEL}={uid}",
                _request_timeout=self.k8s_api_request_timeout,
            )
            for pod in pods.items:
                text = await self.api.read_namespaced_pod_log(
                    pod.metadata.name,
                    self.namespace,
                    container=vmstatus.CONSOLE_CONTAINER,
                    tail_lines=lines * 4,
                    _request_timeout=self.k8s_api_request_timeout,
                )
                return "\n".join(vmstatus.console_tail(text or "", lines))
        except Exception as e:  # a missing console must not hide the timeout itself
            self.log.info("No guest console for %s: %s", self.vm_name, e)
        return ""

    async def _start(self):
        self.start_done = False
        self._options_loaded = False
        await self.load_user_options()
        if not self.with_vm:
            url = await super()._start()
            self.start_done = True
            return url
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
            self.start_done = True
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
        so when one half has stopped, the rest is deleted here first. That
        includes a server restored by a restarted hub whose start never
        finished (the hub died during it): whatever that start made is
        deleted, and the server reported stopped.
        """
        if not self.start_done and self._start_future is None:
            return await self._clear_unfinished_start()
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

    async def _clear_unfinished_start(self) -> int:
        self.log.warning(
            "The start of %s did not finish before the hub stopped; deleting what it "
            "made (pod %s, VM %s)",
            self._log_name,
            self.pod_name,
            self.vm_name,
        )
        try:
            await self._delete_all(now=True)
            self.vm_started = False
        except Exception:  # the lab manager's reaper deletes what is left
            self.log.exception("Deleting what the unfinished start of %s made", self.vm_name)
        return 1

    async def _vm_stopped_reason(self) -> str | None:
        """Why the VM no longer runs, or None while it runs (or cannot be told)."""
        await self._start_watching_vms()
        vm, vmi, _ = self._vm_view()
        if vm is None:
            # Missing from the cache is not proof: the reflector may be
            # re-listing after a failed watch. Only a 404 says it is gone.
            try:
                vm = await kubeapi.read_or_none(
                    self._kinds["virtualmachine"],
                    self.namespace,
                    self.vm_name,
                    request_timeout=self.k8s_api_request_timeout,
                )
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
                yield {
                    "progress": int(progress),
                    "raw_event": event,
                    "message": vmstatus.format_event(event),
                }
            if finished:
                return
            await asyncio.sleep(1)
