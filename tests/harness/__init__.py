"""The test harness: what tests and benchmarks use to drive the real thing
(hubs, demo, lab manager, notebooks, control planes, the one-node KubeVirt
cluster), none of it a test itself.

Importable as ``harness`` because pytest puts ``tests/`` on the path
(``pythonpath`` in setup.cfg) and the Makefile and scripts set PYTHONPATH for
the benchmarks and ``scripts/kubevirt-cluster.sh``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def module_command(module: str, *args: str) -> list[str]:
    """The command line that runs ``harness.<module>`` as a program, and makes
    sure a child started with it finds the harness (PYTHONPATH)."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(TESTS) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, paths)])
    return [sys.executable, "-m", f"harness.{module}", *args]
