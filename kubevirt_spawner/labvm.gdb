# Loaded by `labvm gdb` (kubevirt_spawner.lab.gdb_argv) before attaching.
#
# QEMU's gdb stub answers gdb's kill request by exiting: the student's VM
# would vanish and the hub would stop their whole server. Refuse it here.
define hook-kill
python raise gdb.GdbError("'kill' would shut your VM down (QEMU exits on it). Use 'detach' to leave the kernel running, or 'labvm reset' to restart the VM.")
end
