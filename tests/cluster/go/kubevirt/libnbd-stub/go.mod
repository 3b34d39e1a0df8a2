// A stand-in for libguestfs.org/libnbd, whose module the Go proxy refuses to
// serve. KubeVirt imports it only in virt-launcher's changed-block-tracking
// backup client (pkg/virt-launcher/virtwrap/storage/nbd_client.go); this stub
// has the names that file uses and Create() always fails, so that one
// feature (VM backups over NBD) reports an error and everything else builds.
module libguestfs.org/libnbd

go 1.22
