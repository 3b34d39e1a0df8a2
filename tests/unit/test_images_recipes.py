"""images/: the build script's command line, and the Dockerfiles' shape
(base as a build argument; containerDisks as KubeVirt wants them). The
builds themselves are tested in tests/local/test_images_*.py."""

import re
import subprocess
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[2] / "images"
BUILD = IMAGES / "build.sh"


def test_build_help_needs_nothing():
    res = subprocess.run(["bash", str(BUILD), "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "usage: images/build.sh" in res.stdout
    for target in ("base", "vm-kernel", "vm-debian", "notebook", "hub"):
        assert target in res.stdout


@pytest.mark.parametrize("arg", ["bogus", "--no-such-flag", "vm-ubuntu"])
def test_build_refuses_unknown_targets(arg):
    res = subprocess.run(["bash", str(BUILD), arg], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"unknown target '{arg}'" in res.stderr


def froms(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)


@pytest.mark.parametrize("name", ["notebook", "hub", "vm-debian", "vm-openeuler"])
def test_dockerfiles_take_their_base_as_a_build_argument(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=\S+", text, re.M), "BASE needs a registry default"
    assert froms(IMAGES / name / "Dockerfile")[0] == "${BASE}"


@pytest.mark.parametrize("name", ["vm-debian", "vm-openeuler"])
def test_containerdisks_are_one_qcow2_owned_by_qemu(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    assert froms(IMAGES / name / "Dockerfile")[-1] == "scratch"
    last = text[text.rindex("FROM scratch") :]
    # ref: https://kubevirt.io/user-guide/storage/disks_and_volumes/#containerdisk
    assert re.fullmatch(
        r"FROM scratch\nCOPY --from=disk --chown=107:107 /out/disk\.qcow2 /disk/disk\.qcow2\n", last
    )
    # Both disks come from the one tested script.
    assert "RUN make-disk.sh /rootfs /out/disk.qcow2" in text
    assert "/usr/local/lib/kubevirt-spawner/setup-guest.sh" in text
