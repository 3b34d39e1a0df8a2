"""Linux namespaces, mounts and cgroups for the one-node KubeVirt test cluster.

Small wrappers over the system calls (through ctypes: Python 3.11 has no
``os.unshare``/``os.setns``) and over ``ip``, used by ``kvnode`` (which runs the
node) and by the tests (which reach into the node's network namespace).
Everything here acts on the calling process or thread only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def die_with_parent(sig: int = 9) -> None:
    """preexec_fn: the kernel sends ``sig`` to this child when its parent dies."""
    _libc.prctl(PR_SET_PDEATHSIG, sig)


def mount(
    source: str, target: str | Path, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode(),
            str(target).encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: str | Path, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(str(target).encode(), flags), f"umount {target}")


def mountpoints() -> list[str]:
    """Mount points of this mount namespace, in /proc/self/mountinfo order."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # octal escapes (\040 for a space) as the kernel writes them
        out.append(line.split()[4].encode().decode("unicode_escape"))
    return out


def prune_mounts(keep: Callable[[str], bool]) -> list[str]:
    """Detach every mount point ``keep`` rejects (deepest first); return them.

    A new mount namespace starts as a copy of its parent's: without this the
    node would hold on to whatever the machine had mounted at that moment
    (image builds' overlays, other users' mounts) until the node ends.
    """
    dropped = []
    for mp in sorted(set(mountpoints()), key=lambda p: p.count("/"), reverse=True):
        if mp == "/" or keep(mp):
            continue
        try:
            umount(mp)
            dropped.append(mp)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):  # already gone with a parent
                raise
    return dropped


def ip(*args: str) -> None:
    """``ip ARGS``; raise with its stderr if it fails."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name.replace(".", "/")).write_text(value)


# -- cgroups (v1 hierarchies plus the unified mount, as on these machines) -------
CGROUP_FS = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers and cgroup2)."""
    seen: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0]
        if fstype in ("cgroup", "cgroup2"):
            mp = Path(left.split()[4])
            seen.setdefault(os.path.realpath(mp), mp)
    return sorted(seen.values())


def cgroup_paths(root: str) -> list[Path]:
    """``root`` (e.g. ``/kvs-test``) in every hierarchy where it exists."""
    return [h / root.lstrip("/") for h in cgroup_hierarchies() if (h / root.lstrip("/")).is_dir()]


def make_cgroup_root(root: str) -> None:
    for h in cgroup_hierarchies():
        d = h / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if h.name == "cpuset" or (h / "cpuset.cpus").exists():
            # A new cpuset group starts empty, and nothing can join it then.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())


def remove_cgroup_tree(root: str) -> list[str]:
    """rmdir ``root`` and everything under it in every hierarchy, deepest first.

    Returns the groups that could not be removed (still holding tasks).
    """
    left = []
    for top in cgroup_paths(root):
        dirs = [p for p, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
    return left


def cgroup_tasks(root: str) -> list[int]:
    pids: set[int] = set()
    for top in cgroup_paths(root):
        for d, _, files in os.walk(top):
            for name in ("cgroup.procs", "tasks"):
                if name in files:
                    try:
                        pids |= {int(x) for x in Path(d, name).read_text().split()}
                    except OSError:
                        pass
    return sorted(pids)


# -- reaching into a network namespace from a test process ------------------------
class NetnsDialer:
    """Opens TCP connections inside another network namespace.

    One thread joins the namespace (setns acts per thread) and makes sockets
    there on request; a socket keeps its namespace for life, so the caller
    then uses it from any thread.
    """

    def __init__(self, netns_path: str | Path):
        self.path = str(netns_path)
        self._requests: list = []
        self._cv = threading.Condition()
        self._error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error:
            raise self._error

    def _run(self, ready: threading.Event) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
        except OSError as e:
            self._error = e
            ready.set()
            return
        ready.set()
        while True:
            with self._cv:
                while not self._requests:
                    self._cv.wait()
                addr, timeout, box = self._requests.pop(0)
            try:
                result: object = connect_tcp(*addr, timeout=timeout)
            except OSError as e:
                result = e
            with self._cv:
                box.append(result)
                self._cv.notify_all()

    def connect(self, host: str, port: int, timeout: float = 10) -> socket.socket:
        box: list = []
        with self._cv:
            self._requests.append(((host, port), timeout, box))
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: box, timeout + 5):
                raise TimeoutError(f"connect {host}:{port} in {self.path}: no answer")
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        result.settimeout(None)
        return result


def connect_tcp(host: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection, with ``timeout`` for connecting only: a forwarded
    connection may rightly stay silent for long (a watch, an exec)."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(None)
    return s


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


class Forwarder:
    """TCP from ``listen`` (a socket already bound, or a port on 127.0.0.1 of
    this process's namespace) to ``target`` reached by ``connect`` (e.g.
    :meth:`NetnsDialer.connect`). Threads; stops with :meth:`stop`."""

    def __init__(self, listen: socket.socket | int, connect: Callable[[], socket.socket]):
        if isinstance(listen, int):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", listen))
            s.listen(64)
            listen = s
        self.sock = listen
        self.port = listen.getsockname()[1]
        self._connect = connect
        self._stopped = False
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._connect()
        except OSError:
            client.close()
            return
        self._conns |= {client, upstream}
        t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        t.start()
        _pump(client, upstream)
        t.join()
        for s in (client, upstream):
            self._conns.discard(s)
            s.close()

    def stop(self) -> None:
        self._stopped = True
        for s in [self.sock, *list(self._conns)]:
            try:
                s.close()
            except OSError:
                pass


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    return s


def pids_in_netns(netns_inode: int, pids: Iterable[int] | None = None) -> list[int]:
    """Processes (of this PID namespace) whose network namespace has ``netns_inode``."""
    out = []
    for p in pids if pids is not None else (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            if os.stat(f"/proc/{p}/ns/net").st_ino == netns_inode:
                out.append(p)
        except OSError:
            pass
    return out
