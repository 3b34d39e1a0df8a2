"""--help, smoke and bad-input checks for the cluster harness's entry points (no cluster needed)."""

import os
import subprocess
import sys
from pathlib import Path

from harness import TESTS, module_command

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "scripts/build-cluster-bins.sh"
BENCH = TESTS / "bench" / "bench_spawn_100.py"
BENCH_ENV = {**os.environ, "PYTHONPATH": str(TESTS)}


def run(*argv, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kw)


def test_build_script_help_and_bad_input():
    r = run(str(SCRIPT), "--help")
    assert r.returncode == 0 and "kube-apiserver" in r.stdout
    r = run(str(SCRIPT), "--bogus")
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_build_script_print_dir_is_keyed_by_versions(tmp_path):
    r = run(
        str(SCRIPT),
        "--print-dir",
        env={
            "PATH": "/usr/local/go/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "KVS_CACHE_DIR": str(tmp_path),
        },
    )
    assert r.returncode == 1, "an empty cache is reported as not built"
    out = Path(r.stdout.strip())
    assert out.parent == tmp_path / "cluster-bins"
    assert out.name.startswith("k8s-v1.36.3-kubevirt-v1.8.4-")


def test_build_script_fails_loudly_without_go(tmp_path):
    r = run(
        str(SCRIPT),
        env={"PATH": "/nonexistent", "HOME": str(tmp_path), "KVS_CACHE_DIR": str(tmp_path)},
    )
    # /usr/bin/env bash is not on that PATH either: run it through bash explicitly.
    if r.returncode == 127:
        r = run("/bin/bash", str(SCRIPT), env={"PATH": "/nonexistent", "HOME": str(tmp_path)})
    assert r.returncode != 0 and "no 'go' on PATH" in r.stderr


def test_stand_in_controller_help_and_bad_input():
    r = run(*module_command("fake_kubevirt_controller", "--help"))
    assert r.returncode == 0 and "tests only" in r.stdout
    r = run(*module_command("fake_kubevirt_controller"))
    assert r.returncode == 2 and "--kubeconfig" in r.stderr


def test_benchmark_help_and_bad_input():
    r = run(sys.executable, str(BENCH), "--help", env=BENCH_ENV)
    assert r.returncode == 0 and "--users" in r.stdout
    r = run(sys.executable, str(BENCH), "--users", "0", env=BENCH_ENV)
    assert r.returncode == 2 and "at least 1" in r.stderr
