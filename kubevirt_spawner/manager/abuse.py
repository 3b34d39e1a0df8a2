"""Abuse rules: pure functions from CPU samples and what runs in a VM to flags.

Three rules, each returning ``Flag`` values and never acting:

- ``sustained-cpu``: the VM's CPU stayed above a threshold for a whole
  window while the student's notebook was idle (a student compiling and
  testing drives the notebook; a miner left running does not);
- ``miner-process``: a process in the VM carries a known miner's name;
- ``mining-port``: a TCP connection in the VM goes to a port mining pools use.

The lab manager samples, calls these, and applies the configured action.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUSTAINED_CPU = "sustained-cpu"
MINER_PROCESS = "miner-process"
MINING_PORT = "mining-port"

# Names of common CPU/GPU miners (process comm, lower-cased, first 15 bytes).
DEFAULT_MINER_NAMES = (
    "xmrig",
    "xmr-stak",
    "xmr-stak-cpu",
    "minerd",
    "cpuminer",
    "cpuminer-multi",
    "cgminer",
    "bfgminer",
    "ethminer",
    "nbminer",
    "t-rex",
    "lolminer",
    "phoenixminer",
    "nanominer",
    "srbminer-multi",
    "teamredminer",
    "gminer",
    "kswapd0x",
    "xmr",
)
# Stratum ports mining pools commonly listen on (8888 and 9999 are left out:
# students' own servers use them too).
DEFAULT_MINING_PORTS = (3333, 3334, 3335, 4444, 5555, 7777, 14433, 14444, 45560)


@dataclass(frozen=True)
class Sample:
    """One CPU reading of a VM: ``cpu`` is cores used (1.0 = one full core)
    averaged since the previous sample, taken at ``time`` (epoch seconds)."""

    time: float
    cpu: float


@dataclass(frozen=True)
class Flag:
    rule: str
    detail: str


def sustained_cpu(
    samples: Sequence[Sample],
    now: float,
    notebook_idle_for: float | None,
    *,
    threshold: float,
    window: float,
    notebook_idle_min: float,
) -> Flag | None:
    """Flag when every sample in the last ``window`` seconds is at or above
    ``threshold`` cores, the samples cover the whole window (no gap longer
    than a quarter of it), and the notebook has been idle for at least
    ``notebook_idle_min`` seconds (``None``: unknown, treated as active)."""
    if notebook_idle_for is None or notebook_idle_for < notebook_idle_min:
        return None
    recent = [s for s in samples if s.time >= now - window]
    if not recent or recent[0].time - (now - window) > window / 4:
        return None  # the window is not covered: too early to tell
    times = [s.time for s in recent]
    if any(b - a > window / 4 for a, b in zip(times, times[1:], strict=False)):
        return None
    if now - times[-1] > window / 4:
        return None
    if all(s.cpu >= threshold for s in recent):
        low = min(s.cpu for s in recent)
        return Flag(
            SUSTAINED_CPU,
            f"CPU at least {low:.2f} cores for {window:.0f}s while the notebook was idle "
            f"for {notebook_idle_for:.0f}s",
        )
    return None


def miner_processes(names: Iterable[str], known: Iterable[str]) -> Flag | None:
    """Flag processes whose name (comm) is a known miner's."""
    known_set = {k.lower()[:15] for k in known}
    hits = sorted({n for n in names if n.strip().lower()[:15] in known_set})
    if hits:
        return Flag(MINER_PROCESS, "known miner process running: " + ", ".join(hits))
    return None


def mining_connections(conns: Iterable[tuple[str, int, str]], ports: Iterable[int]) -> Flag | None:
    """Flag TCP connections (remote address, remote port, state) to a mining port.

    Connection attempts count (SYN_SENT): the VM may be cut off from the
    network, but trying to reach a pool is the sign. Connections to the VM
    itself (loopback) do not: a pool is never local."""
    port_set = set(ports)
    hits = sorted(
        {
            f"{addr}:{port} ({state})"
            for addr, port, state in conns
            if port in port_set and not _is_loopback(addr)
        }
    )
    if hits:
        return Flag(MINING_PORT, "connection to a mining-pool port: " + ", ".join(hits))
    return None


def _is_loopback(addr: str) -> bool:
    return (
        addr.startswith("127.")
        or addr in ("0:0:0:0:0:0:0:1", "::1")
        or (addr.startswith("0:0:0:0:0:ffff:7f"))
    )


TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def _hex_addr(text: str) -> str:
    if len(text) == 8:  # IPv4, little-endian
        return ".".join(str(int(text[i : i + 2], 16)) for i in (6, 4, 2, 0))
    # IPv6: four little-endian 32-bit words
    words = [text[i : i + 8] for i in range(0, 32, 8)]
    raw = "".join(w[6:8] + w[4:6] + w[2:4] + w[0:2] for w in words).lower()
    return ":".join(raw[i : i + 4].lstrip("0") or "0" for i in range(0, 32, 4))


def parse_proc_net_tcp(text: str) -> list[tuple[str, int, str]]:
    """(remote address, remote port, state) of each non-listening socket in
    the text of /proc/net/tcp or /proc/net/tcp6 (several may be concatenated)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or ":" not in parts[2] or parts[0] == "sl":
            continue
        try:
            addr, port = parts[2].rsplit(":", 1)
            state = TCP_STATES.get(parts[3].upper(), parts[3])
            if state == "LISTEN":
                continue
            out.append((_hex_addr(addr), int(port, 16), state))
        except ValueError:
            continue
    return out


# What the lab manager runs in a VM (over ssh) to inspect it; busybox-only.
INSPECT_SCRIPT = (
    "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done; echo ---; "
    "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"
)


def parse_inspect_output(text: str) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Split INSPECT_SCRIPT's output into process names and connections."""
    names, _, net = text.partition("---\n")
    return [n.strip() for n in names.splitlines() if n.strip()], parse_proc_net_tcp(net)
