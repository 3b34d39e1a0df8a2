"""The three ways the debug hook reaches KubeVirt (kubevirt-build/): the
sidecar ConfigMap is the current hook, the Plugin sidecar speaks KubeVirt's
DomainHookService over a real gRPC unix socket with a wire format checked
against protobuf itself, and the manifests validate."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "kubevirt-build"
X86 = (Path(__file__).parent / "data" / "kubevirt-domain-x86_64.xml").read_text()


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


hook = load("debug_hook", BUILD / "hook" / "debug_hook.py")
plugin = load("plugin_server", BUILD / "plugin" / "plugin_server.py")
make_configmap = load("make_configmap", BUILD / "sidecar" / "make_configmap.py")


def test_committed_configmap_is_the_current_hook():
    committed = (BUILD / "sidecar" / "configmap.yaml").read_text()
    assert committed == make_configmap.render(), "run kubevirt-build/sidecar/make_configmap.py"
    cm = yaml.safe_load(committed)
    assert cm["data"]["onDefineDomain.py"] == (BUILD / "hook" / "debug_hook.py").read_text()
    kubernetes_validate.validate(cm, "1.33", strict=True)


def test_configmap_matches_what_the_spawner_asks_for():
    import json

    from kubevirt_spawner import KubeVirtSpawner
    from kubevirt_spawner.kubevirt import manifests

    cm = yaml.safe_load((BUILD / "sidecar" / "configmap.yaml").read_text())
    default = KubeVirtSpawner.class_traits()["vm_hook_configmap"].default_value
    (sidecar,) = json.loads(manifests.make_hook_sidecar_annotation(default))
    assert sidecar["configMap"]["name"] == cm["metadata"]["name"]
    assert sidecar["configMap"]["key"] in cm["data"]


# -- the Plugin route --------------------------------------------------------
def protobuf_messages():
    """The proto's two messages, built from a descriptor (no codegen)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="kvs_test_api.proto", package="kvstest", syntax="proto3"
    )
    ctx = f.message_type.add(name="SidecarContext")
    ctx.field.add(name="invocation_context", number=1, type=9, label=1)
    req = f.message_type.add(name="MutateDomainRequest")
    req.field.add(name="domain_type", number=1, type=9, label=1)
    req.field.add(name="domain", number=2, type=12, label=1)
    req.field.add(name="vmi", number=3, type=12, label=1)
    req.field.add(
        name="sidecar_context", number=4, type=11, label=1, type_name=".kvstest.SidecarContext"
    )
    resp = f.message_type.add(name="MutateDomainResponse")
    resp.field.add(name="domain", number=1, type=12, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("kvstest.MutateDomainRequest")),
        get(pool.FindMessageTypeByName("kvstest.MutateDomainResponse")),
    )


Request, Response = protobuf_messages()


def test_wire_format_agrees_with_protobuf():
    big = X86.encode() * 40  # > 16 KiB: multi-byte length varints
    msg = Request(domain_type="libvirt", domain=big, vmi=b'{"kind":"VMI"}')
    msg.sidecar_context.invocation_context = "MigrationTarget"
    decoded = plugin.decode_request(msg.SerializeToString())
    assert decoded == {
        "domain_type": "libvirt",
        "domain": big,
        "vmi": b'{"kind":"VMI"}',
        "invocation_context": "MigrationTarget",
    }
    assert Response.FromString(plugin.encode_response(big)).domain == big
    assert plugin.encode_response(b"") == Response().SerializeToString()
    with pytest.raises(ValueError):
        plugin.decode_request(msg.SerializeToString()[:-3])


@pytest.fixture
def plugin_socket():
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="kvs-") as d:
        path = Path(d) / "kubevirt-spawner-debug" / "hook.sock"
        server = plugin.make_server(str(path))
        server.start()
        yield path
        server.stop(0)


def call(path, request: bytes, timeout=10) -> bytes:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        rpc = channel.unary_unary(plugin.METHOD)
        return rpc(request, timeout=timeout)


def test_mutate_domain_over_a_unix_socket(plugin_socket):
    req = Request(domain_type="libvirt", domain=X86.encode(), vmi=b"{}")
    reply = Response.FromString(call(plugin_socket, req.SerializeToString()))
    assert reply.domain.decode() == hook.add_debug_args(X86)
    # KubeVirt calls again on migration targets: nothing more is added.
    again = Request(domain=reply.domain).SerializeToString()
    assert Response.FromString(call(plugin_socket, again)).domain == reply.domain


def test_bad_domain_is_an_invalid_argument(plugin_socket):
    with pytest.raises(grpc.RpcError) as info:
        call(plugin_socket, Request(domain=b"<domain").SerializeToString())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in info.value.details()


def test_plugin_manifests_agree_with_each_other():
    plugin_cr, policy, binding = yaml.safe_load_all((BUILD / "plugin" / "plugin.yaml").read_text())
    name = plugin_cr["metadata"]["name"]
    (dom_hook,) = plugin_cr["spec"]["domainHooks"]
    socket = dom_hook["sidecar"]["socketPath"]
    # KubeVirt only dials sockets under /var/run/kubevirt-plugin/<plugin name>/.
    assert socket.startswith(f"/var/run/kubevirt-plugin/{name}/")
    assert socket == plugin.DEFAULT_SOCKET
    assert socket in (BUILD / "plugin" / "Dockerfile").read_text()
    assert "kubevirt-spawner/debug-hook" in dom_hook["condition"]
    assert plugin_cr["spec"]["mutatingAdmissionPolicies"] == [{"name": policy["metadata"]["name"]}]
    patch = policy["spec"]["mutations"][0]["jsonPatch"]["expression"]
    assert f'subPath: "{name}"' in patch and f'"/var/run/kubevirt-plugin/{name}/"' in patch
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    for obj in (policy, binding):
        kubernetes_validate.validate(obj, "1.36", strict=True)


def test_kubevirt_cr_settings():
    cr = yaml.safe_load((BUILD / "kubevirt-cr.yaml").read_text())
    dev = cr["spec"]["configuration"]["developerConfiguration"]
    assert {"Sidecar", "Plugins"} <= set(dev["featureGates"])
    assert dev["useEmulation"] is True


def test_patch_targets_the_converter():
    (patch,) = (BUILD / "patch").glob("*.patch")
    text = patch.read_text()
    assert "pkg/virt-launcher/virtwrap/converter/compute/qemu_cmd.go" in text
    assert '"kubevirt-spawner/debug-hook"' in text and "edu,bus=pcie.0,addr=" in text
