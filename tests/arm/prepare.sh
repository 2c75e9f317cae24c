#!/usr/bin/env bash
# Prepare an emulated 32-bit ARM (armv7l) Python for tests/arm: qemu-user-static from apt, and
# Debian's armhf python3 + python3-numpy with every library they need, unpacked with dpkg-deb
# into a cache folder (no chroot, no binfmt). Idempotent: a finished root is reused.
#
#   tests/arm/prepare.sh [ROOT]     (default: $DDI_ARM_ROOT, else ~/.cache/ddi-fpga/armhf)
#
# Needs root and the Debian registry (CI: Debian 12). Without apt-get (not Debian) or without
# root it says so and exits 0: the test then skips with the reason.
set -euo pipefail

ROOT="${1:-${DDI_ARM_ROOT:-${DDI_CACHE:-$HOME/.cache/ddi-fpga}/armhf}}"
STAMP="$ROOT/.prepared"
PACKAGES="python3 python3-numpy"

if [ -f "$STAMP" ] && command -v qemu-arm-static >/dev/null; then
    echo "armhf root ready: $ROOT ($(cat "$STAMP"))"
    exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "tests/arm/prepare.sh: needs root and apt-get (Debian); the armv7l tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx armhf; then
    dpkg --add-architecture armhf
fi
apt-get update -qq
command -v qemu-arm-static >/dev/null || apt-get install -y -qq qemu-user-static >/dev/null

# Every package the armhf python3 and numpy depend on, recursively (armhf names only).
mapfile -t debs < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances $(printf '%s:armhf ' $PACKAGES) \
    | grep -E '^[a-z0-9][^ <>]*:armhf$' | sort -u
)
DL="$ROOT.debs"
rm -rf "$ROOT" "$DL"
mkdir -p "$ROOT" "$DL"
(cd "$DL" && apt-get download -qq "${debs[@]}")
for deb in "$DL"/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
done
rm -rf "$DL"
# numpy finds BLAS and LAPACK through Debian's alternatives, which dpkg-deb -x does not set up.
lib="$ROOT/usr/lib/arm-linux-gnueabihf"
cp "$lib/blas/libblas.so.3" "$lib/lapack/liblapack.so.3" "$lib/"
version=$(qemu-arm-static -L "$ROOT" "$ROOT/usr/bin/python3" -c \
    'import sys, platform, numpy; print(platform.machine(), sys.version.split()[0], "numpy", numpy.__version__)')
echo "$version" > "$STAMP"
echo "armhf root ready: $ROOT ($version, ${#debs[@]} packages)"
