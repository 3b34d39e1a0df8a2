"""The KVM verdict is kept per host kernel and QEMU (kvmprobe), not probed per spawn."""

import pytest

from kubevirt_spawner.local.kvmprobe import lookup, read_verdicts, record, verdict_key

BASE = (
    "6.1.0-40-amd64",
    "#1 SMP Debian 6.1.153-1",
    "/usr/bin/qemu-system-x86_64",
    "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)",
)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(0, id="kernel-release"),
        pytest.param(1, id="kernel-build"),
        pytest.param(2, id="qemu-binary"),
        pytest.param(3, id="qemu-version"),
    ],
)
def test_key_changes_with_kernel_and_qemu(changed):
    other = list(BASE)
    other[changed] += "+1"
    assert verdict_key(*other) != verdict_key(*BASE)


def test_key_is_stable():
    assert verdict_key(*BASE) == verdict_key(*BASE)


def test_record_then_lookup():
    key = verdict_key(*BASE)
    empty: dict = {}
    kept = record(empty, key, False, "a KVM guest printed nothing in 10s", 1700000000.4)
    assert empty == {}  # a new dict; the input is untouched
    assert lookup(kept, key) == (False, "a KVM guest printed nothing in 10s")
    assert kept[key]["probed_at"] == 1700000000
    assert lookup(kept, verdict_key(*BASE[:3], "QEMU emulator version 8.0")) is None
    both = record(kept, "other", True, "a KVM guest printed its banner", 0)
    assert lookup(both, "other") == (True, "a KVM guest printed its banner")
    assert lookup(both, key) == (False, "a KVM guest printed nothing in 10s")


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("tcg", id="not-a-dict"),
        pytest.param({"why": "x"}, id="no-verdict"),
        pytest.param({"kvm": "yes"}, id="verdict-not-bool"),
    ],
)
def test_malformed_entries_are_no_verdict(entry):
    assert lookup({"k": entry}, "k") is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing"),
        pytest.param("{not json", id="corrupt"),
        pytest.param("[1, 2]", id="not-an-object"),
    ],
)
def test_unreadable_file_is_empty(tmp_path, content):
    f = tmp_path / "kvm-verdicts.json"
    if content is not None:
        f.write_text(content)
    assert read_verdicts(f) == {}
