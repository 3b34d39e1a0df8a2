"""vmstatus.console_tail: what a spawn error shows of a guest's serial console."""

from kubevirt_spawner.kubevirt.vmstatus import console_tail

# As a launcher's guest-console-log container prints a SeaBIOS boot that finds
# nothing to boot: CR LF line ends, terminal escapes, blank lines.
SEABIOS = (
    "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    "\r\n\r\n"
    "iPXE (https://ipxe.org) 00:02.0 CA00 PCI2.10 PnP PMM+7EFCAEC0+7EF0AEC0 CA00\r\n"
    "Booting from Hard Disk...\r\n"
    "Boot failed: not a bootable disk\r\n"
    "\r\n"
    "No bootable device.\r\n"
)


def test_the_last_lines_without_escapes_or_blank_lines():
    assert console_tail(SEABIOS, lines=3) == [
        "Booting from Hard Disk...",
        "Boot failed: not a bootable disk",
        "No bootable device.",
    ]
    assert console_tail(SEABIOS)[0] == "SeaBIOS (version 1.16.2-debian-1.16.2-1)"


def test_control_characters_and_long_lines_are_tamed():
    line = "x" * 500
    got = console_tail(f"a\x00b\x07c\x1bc\nkernel: {line}\r", width=40)
    assert got == ["abc", "kernel: " + "x" * 31 + "…"]
    assert len(got[1]) == 40


def test_nothing_printed_is_nothing_to_show():
    assert console_tail("") == []
    assert console_tail("\r\n\n  \x1b[0m\n") == []
    assert console_tail("one\ntwo", lines=0) == []
