"""``labvm``: the student's command for their lab VM.

    labvm status | ssh [CMD...] | console | gdb | push FILE... [--to DIR]
          insmod FILE.ko [PARAM=VALUE...] | dmesg | oops [--raw]
          boot-kernel BZIMAGE | reset
          snapshot {save NAME | list | restore NAME | rm NAME} | suspend
          kernel-tree {init [DIR] | edit FILE... | restore FILE... | diff}

Errors are one line on stderr and a non-zero exit (1: the VM or the request
failed; 2: the command line was wrong).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from . import kerneltree, oops
from .lab import LabEnv, LabError, LabVM, gdb_argv, ssh_argv

DESCRIPTION = "Work with your lab VM: run commands in it, load modules, debug its kernel."


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 300)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labvm", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", help="is the VM up; its kernel and uptime")
    s = sub.add_parser("ssh", help="a shell in the VM, or run CMD there")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run in the VM")
    sub.add_parser("console", help="the VM's serial console (Ctrl-] leaves)")
    g = sub.add_parser("gdb", help="gdb on the VM's kernel, with symbols, attached")
    g.add_argument("gdb_args", nargs=argparse.REMAINDER, help="extra gdb arguments")
    s = sub.add_parser("push", help="copy files into the VM")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--to", default="/root", metavar="DIR", help="directory in the VM (/root)")
    s = sub.add_parser("insmod", help="copy a module into the VM and load it")
    s.add_argument("module", metavar="FILE.ko")
    s.add_argument("params", nargs="*", metavar="PARAM=VALUE")
    sub.add_parser("dmesg", help="the VM's kernel log")
    s = sub.add_parser(
        "oops",
        help="the VM's last Oops/BUG/panic, decoded to your source lines",
        description="Find the last Oops, BUG or kernel panic the VM printed (also after it "
        "restarted) and decode its call trace against the course kernel and the modules "
        "you loaded with `labvm insmod`: the faulting function, its file:line and that "
        "line, and the call chain.",
    )
    s.add_argument("--raw", action="store_true", help="also print the report as the kernel did")
    s = sub.add_parser("boot-kernel", help="boot the VM on your own bzImage (kexec)")
    s.add_argument("bzimage", metavar="BZIMAGE")
    s = sub.add_parser("reset", help="restart the VM afresh on the course kernel")
    s.add_argument(
        "--timeout",
        type=_seconds,
        default=600,
        metavar="SECONDS",
        help="give up waiting for the VM to come back after this long (600)",
    )
    s = sub.add_parser(
        "snapshot",
        help="checkpoints of the running VM (e.g. before a risky insmod)",
        description="Save the whole running VM (memory, loaded modules, files in its "
        "/tmp) under a name, and go back to it later.",
    )
    ss = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    ss.add_parser("save", help="checkpoint the VM as NAME").add_argument("name", metavar="NAME")
    ss.add_parser("list", help="your checkpoints and the space they use")
    ss.add_parser("restore", help="go back to checkpoint NAME").add_argument("name", metavar="NAME")
    ss.add_parser("rm", help="remove checkpoint NAME").add_argument("name", metavar="NAME")
    sub.add_parser(
        "suspend",
        help="stop your server, saving the VM; the next start resumes it where you left off",
    )
    k = sub.add_parser(
        "kernel-tree",
        help="your own editable copy of the course kernel tree (lab 4)",
        description="Your own kernel tree: sources linked to the course tree "
        "(LAB_KDIR) until you edit them, build outputs ready, so `make bzImage` "
        "rebuilds only what you changed.",
    )
    k.add_argument(
        "--tree",
        metavar="DIR",
        default=None,
        help="the tree to act on (default: the one you are in, else ~/linux)",
    )
    ks = k.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = ks.add_parser("init", help="make the tree (default ~/linux)")
    s.add_argument("dir", nargs="?", metavar="DIR")
    s = ks.add_parser("edit", help="make FILEs yours to edit (before changing them)")
    s.add_argument("files", nargs="+", metavar="FILE")
    s = ks.add_parser("restore", help="put FILEs back to the course version")
    s.add_argument("files", nargs="+", metavar="FILE")
    ks.add_parser("diff", help="your changes to the kernel, as a patch")
    return p


# Everything after these commands belongs to ssh or gdb, options included
# (argparse would take `-batch` or `-la` for its own).
PASSTHROUGH = {"ssh": "cmd", "gdb": "gdb_args"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse labvm's command line; exits 2 with usage on a wrong one."""
    if argv and argv[0] in PASSTHROUGH and argv[1:2] not in (["-h"], ["--help"]):
        return argparse.Namespace(command=argv[0], **{PASSTHROUGH[argv[0]]: argv[1:]})
    return build_parser().parse_args(argv)


def _exec(argv: list[str]) -> int:
    if not shutil.which(argv[0]):
        raise LabError(f"{argv[0]} is not installed in this environment.")
    os.execvp(argv[0], argv)
    return 127  # not reached


DEFAULT_TREE = "~/linux"


def _find_tree(explicit: str | None) -> str:
    """The kernel tree a command acts on: ``--tree``, else the one the current
    directory is in, else ~/linux."""
    if explicit:
        return explicit
    here = os.getcwd()
    while True:
        if os.path.exists(os.path.join(here, kerneltree.MARKER)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return os.path.expanduser(DEFAULT_TREE)
        here = parent


def kernel_tree(args: argparse.Namespace) -> int:
    try:
        if args.action == "init":
            kdir = os.environ.get("LAB_KDIR")
            if not kdir:
                raise LabError("LAB_KDIR is not set: this server has no course kernel tree.")
            dest = os.path.expanduser(args.dir or args.tree or DEFAULT_TREE)
            print(f"Making {dest} from {kdir} ...", file=sys.stderr)
            done = kerneltree.create(kdir, dest)
            print(
                f"{done.dest}: {done.linked} links, {done.copied} build files copied "
                f"({done.copied_bytes / 1e6:.0f} MB). Next: cd {done.dest}; "
                "labvm kernel-tree edit FILE; make -j$(nproc) bzImage"
            )
            return 0
        tree = _find_tree(args.tree)
        if args.action == "edit":
            for f in args.files:
                print(kerneltree.own(tree, _from_cwd(f)))
        elif args.action == "restore":
            for f in args.files:
                kerneltree.restore(tree, _from_cwd(f))
        elif args.action == "diff":
            print(kerneltree.diff(tree), end="")
    except kerneltree.KernelTreeError as e:
        raise LabError(str(e)) from None
    return 0


def _from_cwd(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def snapshot(env: LabEnv, args: argparse.Namespace) -> int:
    from .checkpoints import Checkpoints, format_list
    from .vmstate import human, usage

    cps = Checkpoints(env)
    if args.action == "list":
        print(format_list(cps.list(), usage(env.state_dir), env.state_quota))
    elif args.action == "save":
        entry, replaced = cps.save(args.name)
        size = human(entry.get("vm-state-size", 0))
        print(
            f"Saved checkpoint {args.name} ({size}){', replacing the old one' if replaced else ''}."
        )
    elif args.action == "restore":
        cps.restore(args.name)
        print(f"VM restored to checkpoint {args.name}.")
    elif args.action == "rm":
        cps.remove(args.name)
        print(f"Removed checkpoint {args.name}.")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "kernel-tree":
        return kernel_tree(args)
    env = LabEnv.from_environ()
    if args.command == "snapshot":
        return snapshot(env, args)
    if args.command == "suspend":
        from .checkpoints import request_suspend

        print(
            "Suspending: your server stops and the VM is saved; start it again from "
            "the hub to resume where you left off.",
            file=sys.stderr,
        )
        request_suspend(env)
        return 0
    vm = LabVM(env)
    cmd = args.command
    if cmd == "status":
        info = vm.status()
        for key, value in info.items():
            print(f"{key:9} {value}")
        if not info["ssh"]:
            raise LabError("The VM does not answer ssh. `labvm console` shows what it printed.")
    elif cmd == "ssh":
        command = " ".join(args.cmd) if args.cmd else None
        return _exec(ssh_argv(env, command, tty=command is None and sys.stdin.isatty()))
    elif cmd == "console":
        if not env.console_socket:
            raise LabError("This backend has no console socket; use `labvm ssh`.")
        if not os.path.exists(env.console_socket):
            raise LabError("The VM's console is not there: is the VM running? Try `labvm status`.")
        if sys.stdin.isatty():
            print("Connected to the VM's console. Press Ctrl-] to leave.", file=sys.stderr)
            local = "-,raw,echo=0,escape=0x1d"
        else:
            local = "-"
        return _exec(["socat", local, f"UNIX-CONNECT:{env.console_socket}"])
    elif cmd == "gdb":
        return _exec(gdb_argv(env) + args.gdb_args)
    elif cmd == "push":
        for path in vm.push(*args.files, dest=args.to):
            print(path)
    elif cmd == "insmod":
        print(vm.insmod(args.module, *args.params), end="")
    elif cmd == "dmesg":
        print(vm.dmesg(), end="")
    elif cmd == "oops":
        if args.raw:
            print("\n".join(oops.find_report(env).lines), end="\n\n")
        print(oops.explain(env), end="")
    elif cmd == "boot-kernel":
        print(f"VM now runs {vm.boot_kernel(args.bzimage)}")
    elif cmd == "reset":
        vm.reset(timeout=args.timeout)
        print("VM reset: it runs the course kernel again, with a fresh root filesystem.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except LabError as e:
        print(f"labvm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
