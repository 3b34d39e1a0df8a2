"""Suspend and resume through a real hub, as the student does it: `labvm
suspend` in a JupyterLab terminal stops the server and saves the VM into the
student's ~/.labvm; the next start (REST API) resumes it with the module
loaded, the file in /tmp, the same boot, a continuing uptime, the same pinned
host key and a gdb that attaches. Checkpoints (`labvm snapshot`) on the
running VM; a stop the policy does not ask for discards the VM; a state made
for another VM shape is kept, not restored, and the progress says why."""

import os
import pwd
import shutil
import textwrap
from pathlib import Path

import pytest
from harness.hubctl import running_hub
from harness.localhelpers import messages, pinned_host_key, spawn_ok, term_run, wait_for

pytestmark = pytest.mark.local

ALICE, BOB, CAROL = "kvss-alice", "kvss-bob", "kvss-carol"

CONFIG = """
c.LocalVMSpawner.profile_list = [
    {"display_name": "Kernel labs", "slug": "kernel", "default": True},
    {"display_name": "Always suspend", "slug": "always",
     "spawner_override": {"suspend_on_stop": "always"}},
    {"display_name": "Bigger VM", "slug": "bigger",
     "spawner_override": {"vm_memory_mb": 320}},
    {"display_name": "Tiny quota", "slug": "tiny",
     "spawner_override": {"vm_state_quota": 30000000}},
]
"""

MODULE = textwrap.dedent("""\
    #include <linux/module.h>
    #include <linux/init.h>
    static int __init keepme_init(void) { pr_info("keepme: in\\n"); return 0; }
    static void __exit keepme_exit(void) { }
    module_init(keepme_init);
    module_exit(keepme_exit);
    MODULE_LICENSE("GPL");
""")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    with running_hub(tmp_path_factory.mktemp("suspend"), CONFIG) as h:
        for name in (ALICE, BOB, CAROL):  # accounts outlive a run; their saved states must not
            try:
                shutil.rmtree(state_dir(name), ignore_errors=True)
            except KeyError:
                pass
        yield h


def state_dir(name: str) -> Path:
    return Path(pwd.getpwnam(name).pw_dir, ".labvm")


def suspended(name: str) -> list[Path]:
    d = state_dir(name)
    return sorted(d.glob("suspended-*")) if d.exists() else []


async def test_labvm_suspend_then_start_resumes_where_the_student_left_off(hub):
    spawn_ok(hub, ALICE, {"profile": "kernel"})
    pw = pwd.getpwnam(ALICE)
    src = Path(pw.pw_dir, "keepme")
    src.mkdir(exist_ok=True)
    (src / "keepme.c").write_text(MODULE)
    (src / "Makefile").write_text("obj-m += keepme.o\n")
    for p in (src, src / "keepme.c", src / "Makefile"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    term = await hub.terminal(ALICE)
    await term_run(term, "cd ~/keepme && make -s -C $LAB_KDIR M=$PWD modules >/dev/null")
    await term_run(term, "labvm insmod ~/keepme/keepme.ko")
    await term_run(term, "labvm ssh 'echo still-here > /tmp/note'")
    before = await term_run(term, "labvm ssh 'cat /proc/sys/kernel/random/boot_id /proc/uptime'")
    boot_id, uptime = before.split()[-3], float(before.split()[-2])
    host_key = pinned_host_key(hub, ALICE)

    await term.ws.write_message('["stdin", "labvm suspend\\r"]')
    wait_for(lambda: not hub.server_state(ALICE), 120, "the suspended server to stop", hub)
    saved = suspended(ALICE)
    assert len(saved) == 1, f"no suspended state: {list(state_dir(ALICE).iterdir())}"
    assert (saved[0] / "vm.state.gz").stat().st_uid == pw.pw_uid  # written as the student
    assert not Path(hub.runtime_root, ALICE).exists()

    events = spawn_ok(hub, ALICE, {"profile": "kernel"})
    said = messages(events)
    assert "Resuming your suspended VM" in said and "VM resumed" in said, said
    assert "VM booting" not in said, said
    assert pinned_host_key(hub, ALICE) == host_key
    term = await hub.terminal(ALICE)
    after = await term_run(
        term, "labvm ssh 'cat /tmp/note; lsmod; cat /proc/sys/kernel/random/boot_id /proc/uptime'"
    )
    assert "still-here" in after and "keepme" in after, after
    assert after.split()[-3] == boot_id, after
    assert float(after.split()[-2]) > uptime
    gdb = await term_run(term, "labvm gdb -batch -ex 'p linux_banner'", timeout=120)
    assert "Linux version" in gdb, gdb
    # The state was used up: the next stop without a request discards the VM.
    wait_for(lambda: not suspended(ALICE), 30, "the resumed state to be removed", hub)
    hub.stop_server(ALICE)
    assert suspended(ALICE) == []


async def test_checkpoints_save_restore_list_rm_and_their_errors(hub):
    spawn_ok(hub, BOB, {"profile": "kernel"})
    term = await hub.terminal(BOB)
    await term_run(term, "labvm ssh 'echo one > /tmp/x'")
    out = await term_run(term, "labvm snapshot save before-insmod")
    assert "Saved checkpoint before-insmod" in out, out
    await term_run(term, "labvm ssh 'echo two > /tmp/x; touch /tmp/later'")
    out = await term_run(term, "labvm snapshot restore before-insmod")
    assert "restored" in out
    out = await term_run(term, "labvm ssh 'cat /tmp/x; ls /tmp'")
    assert "one" in out and "two" not in out and "later" not in out, out
    listing = await term_run(term, "labvm snapshot list")
    assert "before-insmod" in listing and "storage used" in listing, listing

    for command, says in [
        ("labvm snapshot restore nosuch", "No checkpoint named 'nosuch'"),
        ("labvm snapshot rm nosuch", "No checkpoint named 'nosuch'"),
        ("labvm snapshot save 'bad name'", "Bad checkpoint name"),
    ]:
        out = await term.run(command + " 2>&1", timeout=60)
        assert term.last_status == 1, f"{command}: {out}"
        lines = [ln for ln in out.splitlines() if ln.startswith("labvm:")]
        assert len(lines) == 1 and says in lines[0], out
    await term_run(term, "labvm snapshot rm before-insmod")
    assert "before-insmod" not in await term_run(term, "labvm snapshot list")
    hub.stop_server(BOB)
    assert suspended(BOB) == []  # a plain stop (policy `requested`) discards the VM


async def test_full_quota_refuses_a_checkpoint_in_one_line(hub):
    spawn_ok(hub, CAROL, {"profile": "tiny"})
    term = await hub.terminal(CAROL)
    out = await term.run("labvm snapshot save big 2>&1", timeout=120)
    assert term.last_status == 1, out
    assert "did not fit in your quota" in out, out
    assert "big" not in await term_run(term, "labvm snapshot list | tail -n +2")
    hub.stop_server(CAROL)


def test_rest_stop_suspends_by_policy_and_another_shape_is_kept_not_restored(hub):
    spawn_ok(hub, BOB, {"profile": "always"})
    hub.stop_server(BOB)  # DELETE through the REST API, as a culler does
    assert len(suspended(BOB)) == 1
    events = spawn_ok(hub, BOB, {"profile": "bigger"})
    said = messages(events)
    assert "not restored" in said and "VM booting" in said, said
    assert len(suspended(BOB)) == 1  # kept for the student
    hub.stop_server(BOB)
    events = spawn_ok(hub, BOB, {"profile": "always"})
    assert "VM resumed" in messages(events), messages(events)
    hub.stop_server(BOB)


async def test_a_state_qemu_cannot_load_is_kept_aside_and_the_vm_boots(hub):
    spawn_ok(hub, CAROL, {"profile": "always"})
    hub.stop_server(CAROL)
    (saved,) = suspended(CAROL)
    state = saved / "vm.state.gz"
    with open(state, "r+b") as f:  # damaged (a full disk, a bad copy): still the student's
        f.truncate(state.stat().st_size // 3)
    events = spawn_ok(hub, CAROL, {"profile": "kernel"})
    said = messages(events)
    assert "could not be resumed" in said and "VM booting" in said, said
    assert suspended(CAROL) == []
    kept = list(state_dir(CAROL).glob("unrestorable-*"))
    assert len(kept) == 1 and (kept[0] / "vm.state.gz").exists(), said
    # The notebook, started while the resume was tried, reaches the booted VM.
    term = await hub.terminal(CAROL)
    assert "fresh" in await term_run(term, "labvm ssh 'echo fresh; ls /tmp'")
    hub.stop_server(CAROL)
