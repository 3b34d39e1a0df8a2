"""images/guest/build.sh's command line: --help, --dir-if-built (builds
nothing; how the test suite pins this checkout's guest), a wrong argument."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "images/guest/build.sh"


def run(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "--dir-if-built" in r.stdout


def test_dir_if_built_builds_nothing_in_an_empty_cache(tmp_path):
    r = run("--dir-if-built", env={"PATH": "/usr/bin:/bin", "KVS_CACHE_DIR": str(tmp_path)})
    assert (r.returncode, r.stdout) == (1, "")
    assert list(tmp_path.iterdir()) == []


def test_unknown_argument_is_one_line_and_builds_nothing(tmp_path):
    r = run("--arch=x86_64", env={"PATH": "/usr/bin:/bin", "KVS_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"build-guest: unknown argument --arch=x86_64; usage: {SCRIPT} [--print-dir | --dir-if-built]"
    ]
    assert list(tmp_path.iterdir()) == []
