"""NetworkPolicy selectors evaluated by the API server on real pods.

There is no CNI in this harness, so nothing *enforces* a NetworkPolicy here;
what is checked is which pods its selectors pick, using the API server's own
label-selector matching. The spawner's real policy is checked the same way in
test_kubevirt_spawner_e2e.py, on pods it spawned.
"""

from harness.kube import minimal_vm, policy_reach, wait_for


def kwok_pod(cluster, ns, name, labels):
    cluster.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "containers": [{"name": "c", "image": "example.invalid/none"}],
                "automountServiceAccountToken": False,
            },
        },
    )


def test_owner_only_policy_on_real_pods(cluster, namespace):
    for user in ("alice", "bob"):
        kwok_pod(
            cluster,
            namespace,
            f"jupyter-{user}",
            {"component": "singleuser-server", "lab/server": user},
        )
        cluster.create_vm(
            namespace,
            minimal_vm(f"labvm-{user}", labels={"lab/server": user, "lab/component": "vm"}),
        )
    for user in ("alice", "bob"):
        wait_for(
            f"{user}'s launcher pod",
            lambda u=user: cluster.launcher_pods(namespace, f"labvm-{u}"),
            60,
        )
    policy = {
        "spec": {
            "podSelector": {"matchLabels": {"lab/server": "alice", "lab/component": "vm"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "lab/server": "alice",
                                    "component": "singleuser-server",
                                }
                            }
                        }
                    ]
                }
            ],
        }
    }
    cluster.networking.create_namespaced_network_policy(
        namespace, {"metadata": {"name": "alice-vm"}, **policy}
    )
    targets, sources = policy_reach(cluster, namespace, policy)
    (alice_launcher,) = cluster.launcher_pods(namespace, "labvm-alice")
    assert targets == {alice_launcher["metadata"]["name"]}
    assert sources == {f"{namespace}/jupyter-alice"}


def test_selector_pitfalls_are_visible(cluster, namespace):
    """What the helper reports for policies that would be wrong for a lab VM."""
    kwok_pod(cluster, namespace, "a", {"lab/server": "alice"})
    kwok_pod(cluster, namespace, "b", {"lab/server": "bob"})
    empty = {"spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    targets, sources = policy_reach(cluster, namespace, empty)
    assert targets == {"a", "b"} and sources == {f"{namespace}/a", f"{namespace}/b"}
    open_rule = {"spec": {"podSelector": {"matchLabels": {"lab/server": "alice"}}, "ingress": [{}]}}
    assert policy_reach(cluster, namespace, open_rule)[1] == "any"
    expr = {
        "spec": {
            "podSelector": {
                "matchExpressions": [
                    {"key": "lab/server", "operator": "NotIn", "values": ["alice"]}
                ]
            }
        }
    }
    assert policy_reach(cluster, namespace, expr)[0] == {"b"}
