from pathlib import Path


def _survive_ast_depth_check() -> None:
    """Keep pytest reporting when Python 3.11.2 (Debian 12) trips its own AST
    depth check: the converter's recursion counter lives in per-interpreter
    state, so an ``ast.parse`` that starts while another is converting (a
    finalizer or another thread: pytest rendering a failure while a harness
    thread formats a traceback) ends with ``SystemError: AST constructor
    recursion depth mismatch`` (CPython gh-106905). CI met it once: pytest's
    INTERNALERROR ended the whole run at the first failing test. Each call
    resets the counter, so the same parse again succeeds."""
    import ast

    parse = ast.parse

    def parse_again_on_depth_mismatch(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e):
                raise
            return parse(*args, **kwargs)

    ast.parse = parse_again_on_depth_mismatch


_survive_ast_depth_check()


def _pin_guests() -> None:
    """Use, for the whole run, the guests this checkout builds, not whatever
    the cache's `current` links point at: another checkout's `make guest`
    repoints them (KVS_GUEST_DIR, KVS_GUEST_DIR_AARCH64; kubevirt_spawner.local.guest)."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    for script, var in (
        ("build.sh", "KVS_GUEST_DIR"),
        ("build-aarch64.sh", "KVS_GUEST_DIR_AARCH64"),
    ):
        if var in os.environ:
            continue
        built = subprocess.run(
            [repo / "images/guest" / script, "--dir-if-built"], capture_output=True, text=True
        )
        if built.returncode == 0:
            os.environ[var] = built.stdout.strip()


_pin_guests()


TIERS = ("local", "cluster")


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers: all of tests/local on one,
    all of tests/cluster on the other (each tier's modules share VMs, hubs and
    one KubeVirt cluster through module- and session-scoped fixtures, and run
    in their order), the unit tests wherever there is room. The tiers share
    nothing: the local one runs hubs, VMs and system accounts on this
    machine, the cluster one a node in namespaces of its own.

    A scheduler of our own, since ``--dist loadgroup`` with ``xdist_group``
    marks does not group under pytest 9 (pytest-xdist 3.8 renames the items'
    node ids to carry the group, which pytest 9 no longer reports)."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/", 2)
            if len(parts) == 3 and parts[0] == "tests" and parts[1] in TIERS:
                return parts[1]
            return nodeid

    return TierScheduling(config, log)
