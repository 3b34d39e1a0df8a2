"""Every KubeVirtSpawner unit test runs against a kube config of its own
(harness.kubefakes.fake_kubeconfig, autouse): kubespawner caches its client
process-wide, so no test may depend on one made before it."""

from harness.kubefakes import fake_kubeconfig  # noqa: F401 (an autouse fixture)
