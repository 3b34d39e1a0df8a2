"""KubeVirt's own CRD schemas, enforced by a real API server."""

import copy

import pytest
from harness.kube import KV, minimal_vm
from kubernetes.client.rest import ApiException


def create_status(cluster, namespace, body, validation="Strict") -> tuple[int, str]:
    try:
        cluster.custom.create_namespaced_custom_object(
            *KV, namespace, "virtualmachines", body, field_validation=validation
        )
        return 201, ""
    except ApiException as e:
        return e.status, e.body


def test_vm_crd_carries_kubevirts_schema(cluster):
    crd = cluster.apiext.read_custom_resource_definition("virtualmachines.kubevirt.io")
    v1 = next(v for v in crd.spec.versions if v.name == "v1")
    schema = v1.schema.open_apiv3_schema
    assert "template" in schema.properties["spec"].properties
    assert "template" in schema.properties["spec"].required
    assert v1.subresources.status is not None
    domain = (
        schema.properties["spec"].properties["template"].properties["spec"].properties["domain"]
    )
    assert "devices" in domain.properties  # generated from kubevirt.io/api, not a stub


def test_valid_vm_is_accepted(cluster, namespace):
    assert create_status(cluster, namespace, minimal_vm("ok"))[0] == 201


def _without_template(vm):
    del vm["spec"]["template"]


def _run_strategy_number(vm):
    vm["spec"]["runStrategy"] = 3


def _disks_not_a_list(vm):
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"] = "root"


def _interface_without_name(vm):
    del vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["name"]


def _memory_not_a_quantity(vm):
    vm["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = "lots"


@pytest.mark.parametrize(
    "break_it, expect",
    [
        pytest.param(_without_template, "spec.template", id="no-template"),
        pytest.param(_run_strategy_number, "spec.runStrategy", id="runStrategy-not-string"),
        pytest.param(_disks_not_a_list, "disks", id="disks-not-list"),
        pytest.param(_interface_without_name, "name", id="interface-without-name"),
        pytest.param(_memory_not_a_quantity, "memory", id="memory-not-quantity"),
    ],
)
def test_malformed_vm_is_rejected(cluster, namespace, break_it, expect):
    vm = copy.deepcopy(minimal_vm("bad"))
    break_it(vm)
    code, body = create_status(cluster, namespace, vm)
    assert code == 422, body
    assert expect in body


def test_strict_validation_rejects_unknown_fields(cluster, namespace):
    vm = minimal_vm("typo")
    vm["spec"]["template"]["spec"]["domain"]["cpuu"] = {"cores": 2}  # a typo a mock would accept
    code, body = create_status(cluster, namespace, vm, "Strict")
    assert code == 400, body
    assert 'strict decoding error: unknown field \\"spec.template.spec.domain.cpuu\\"' in body

    # Without Strict the same typo is silently pruned: why the spawner must send Strict.
    code, _ = create_status(cluster, namespace, vm, "Ignore")
    assert code == 201
    stored = cluster.vm(namespace, "typo")
    assert "cpuu" not in stored["spec"]["template"]["spec"]["domain"]


def test_strict_validation_rejects_unknown_metadata_fields(cluster, namespace):
    vm = minimal_vm("meta")
    vm["metadata"]["lables"] = {"a": "b"}
    code, body = create_status(cluster, namespace, vm)
    assert code == 400 and 'unknown field \\"metadata.lables\\"' in body, body
