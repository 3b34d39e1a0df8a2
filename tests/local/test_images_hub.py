"""The hub image built by images/build.sh: JupyterHub finds KubeVirtSpawner
through its entry point and lists its settings."""

import pytest
from harness.images_helpers import Buildah, index

pytestmark = pytest.mark.local


def test_jupyterhub_help_all_lists_kubevirtspawner_traits():
    built = index()
    bh = Buildah(built)
    cfg = bh.image_config(built["hub"])["OCIv1"]["config"]
    assert cfg["User"] == "1000"
    with bh.container(built["hub"]) as hub:
        out = hub.run("jupyterhub", "--help-all", user="1000").stdout
        for trait in ("vm_images", "vm_debug_hook", "vm_cpus", "vm_memory", "with_vm"):
            assert f"--KubeVirtSpawner.{trait}=" in out, trait
        # The z2jh config names the spawner by its entry point.
        res = hub.run(
            "python3",
            "-c",
            "from importlib.metadata import entry_points as e;"
            "print(e(group='jupyterhub.spawners')['kubevirt'].load().__name__)",
            user="1000",
        )
        assert res.stdout.strip() == "KubeVirtSpawner"
