# The common start of the two Go build scripts (scripts/build-cluster-bins.sh,
# scripts/build-kubevirt-node.sh), sourced with the script's own arguments:
#   name=build-x; . scripts/lib/go-build.sh "$@"    (from the repo root)
# It answers --help from the script's header comment, refuses other arguments
# but --print-dir (exit 2), sets print_only and cache (the cache directory:
# $KVS_CACHE_DIR, else /var/cache/kubevirt-spawner as root, else
# ~/.cache/kubevirt-spawner), defines die, check_pins and go_env, and dies
# when there is no go. Neither script's cache key hashes this file: each key
# covers the script from its "# -- build --" line on.

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "$name: $*" >&2; exit 1; }

[ $# -le 1 ] || { echo "$name: one argument at most (try --help)" >&2; exit 2; }
print_only=0
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --print-dir) print_only=1 ;;
  "") ;;
  *) echo "$name: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

command -v go >/dev/null || die "no 'go' on PATH: install Go >= 1.26 (Debian: golang-1.26 or the Go tarball)"

if [ -n "${KVS_CACHE_DIR:-}" ]; then cache=$KVS_CACHE_DIR
elif [ "$(id -u)" = 0 ]; then cache=/var/cache/kubevirt-spawner
else cache=${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-spawner
fi

# check_pins FILE:TEXT...: each go.mod says what the script's pins say.
check_pins() {
  local pin
  for pin in "$@"; do
    grep -qF "${pin#*:}" "${pin%%:*}" || die "${pin%%:*} does not say '${pin#*:}'; keep pins in step"
  done
}

# go_env: Go's toolchain, module and build caches under $cache (shared by both
# scripts, so one's downloads serve the other); sets go_version.
go_env() {
  export GOTOOLCHAIN=local
  export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/go/mod}
  export GOCACHE=${GOCACHE_OVERRIDE:-$cache/go/build}
  go_version=$(go env GOVERSION)
}
