"""images/guest/build-aarch64.sh as a command: --help and bad input (no build)."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "images" / "guest" / "build-aarch64.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_help_says_what_it_builds_and_where():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Build the arm64 lab guest")
    assert "current-aarch64" in r.stdout and "usage: images/guest/build-aarch64.sh" in r.stdout


def test_unknown_argument_is_one_line_and_builds_nothing():
    r = run("--arch=x86_64")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"build-guest-aarch64: unknown argument --arch=x86_64; "
        f"usage: {SCRIPT} [--print-dir | --dir-if-built]"
    ]
    assert r.stdout == ""
