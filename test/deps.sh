#!/bin/sh
# Installs what mailsrv needs on Debian / Raspberry Pi OS; without root or
# sudo it says exactly what to install.
#   (no option)  build: gcc, make, libinih-dev
#   --test       and what the tests use: python3, curl
#   --cross      and the toolchains and emulators of the other platforms
#   --sources    deb-src entries so that `apt-get source` finds inih's source
set -u
need=""
want() { dpkg -s "$1" >/dev/null 2>&1 || need="$need $1"; }
if ! command -v dpkg >/dev/null 2>&1; then
    [ -f /usr/include/ini.h ] && exit 0
    echo "mailsrv needs the inih library (libinih-dev on Debian); install it with your package manager" >&2
    exit 1
fi
want gcc; want make; want libinih-dev
case ${1:-} in
    --test) want python3; want curl;;
    --cross) for p in binutils musl-tools gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-aarch64-linux-gnu \
                      libc6-dev-arm64-cross gcc-arm-linux-gnueabi libc6-dev-armel-cross qemu-user-static \
                      gcc-mingw-w64-x86-64-win32 wine wine64 python3 curl xz-utils dpkg-dev; do want $p; done;;
esac
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else SUDO=no
fi
if [ "${1:-}" = "--sources" ]; then
    # Debian's source index for this mirror (bookworm has no libinih 59 source; trixie has)
    f=/etc/apt/sources.list.d/mailsrv-deb-src.sources
    [ -f $f ] && exit 0
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    if [ "$SUDO" = no ]; then
        echo "apt-get source needs deb-src entries; as root, write $f with:" >&2
        printf 'Types: deb-src\nURIs: %s\nSuites: bookworm trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >&2
        exit 1
    fi
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
        | $SUDO tee $f >/dev/null
    $SUDO apt-get update -qq
    exit 0
fi
[ -z "$need" ] && exit 0
if [ "$SUDO" = no ]; then
    echo "mailsrv needs:$need" >&2
    echo "install them with:  sudo apt-get install$need" >&2
    exit 1
fi
echo "installing:$need"
$SUDO apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
