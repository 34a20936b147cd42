#!/bin/sh
# Installs what mailsrv needs on Debian / Raspberry Pi OS; without root or
# sudo it says exactly what to install.
#   (no option)  build: gcc, make, libinih-dev, libbearssl-dev
#   --test       and what the tests use: python3, curl, openssl
#   --cross      and the toolchains and emulators of the other platforms
#   --sources    deb-src entries so that `apt-get source` finds inih's and BearSSL's source
#   --no-tls     (alone or with one of the above) for `make TLS=0`: no libbearssl-dev
#   --check      (with any of the above) install nothing: say what is missing and the exact
#                apt-get line, and fail (`make` and `make mailsrv` run this one)
set -u
mode="" tls=1 check=0
for a in "$@"; do
    case $a in
        --no-tls) tls=0;;
        --check) check=1;;
        --test|--cross|--sources) mode=$a;;
        *) echo "usage: $0 [--test|--cross|--sources] [--no-tls] [--check]" >&2; exit 2;;
    esac
done
need=""
want() { dpkg -s "$1" >/dev/null 2>&1 || need="$need $1"; }
if ! command -v dpkg >/dev/null 2>&1; then
    has() { [ -f "/usr/include/$1" ] || [ -f "/usr/local/include/$1" ]; }
    miss=""
    has ini.h || miss="the inih library (libinih-dev on Debian)"
    [ $tls = 0 ] || has bearssl.h || miss="${miss:+$miss and }BearSSL (libbearssl-dev on Debian; or build without TLS: make TLS=0)"
    [ -z "$miss" ] && exit 0
    echo "mailsrv needs $miss; install it with your package manager" >&2
    exit 1
fi
want gcc; want make; want libinih-dev
[ $tls = 0 ] || want libbearssl-dev
case $mode in
    --test) want python3; want curl; want openssl;;
    --cross) for p in binutils musl-tools gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-aarch64-linux-gnu \
                      libc6-dev-arm64-cross gcc-arm-linux-gnueabi libc6-dev-armel-cross qemu-user-static \
                      gcc-mingw-w64-x86-64-win32 wine wine64 python3 curl openssl xz-utils dpkg-dev; do want $p; done;;
esac
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else SUDO=no
fi
# the command that installs, as the lines below print it
case $(id -u) in 0) apt_install="apt-get install";; *) apt_install="sudo apt-get install";; esac
[ $check = 0 ] || SUDO=no
if [ "$mode" = "--sources" ]; then
    # Debian's source index for this mirror (bookworm has bearssl 0.6+dfsg.1-3 and no libinih 59
    # source; trixie has libinih 59-1)
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
    echo "install them with:  $apt_install$need" >&2
    case $need in *libbearssl-dev*) echo "(or build without TLS:  make TLS=0)" >&2;; esac
    [ $check = 0 ] || echo "(\`make deps\`, \`make run\` and \`make test\` install them as root or with password-less sudo)" >&2
    exit 1
fi
echo "installing:$need"
$SUDO apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
