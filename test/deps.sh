#!/bin/sh
# Installs what mailsrv needs to build and test, on Debian / Raspberry Pi OS.
# Without root or sudo it says exactly what to install.
set -u
need=""
[ -f /usr/include/ini.h ] || need="$need libinih-dev"
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
if [ "${1:-}" = "--test" ]; then
    command -v python3 >/dev/null 2>&1 || need="$need python3"
    command -v curl >/dev/null 2>&1 || need="$need curl"
fi
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
    echo "mailsrv needs:$need" >&2
    echo "install them with:  sudo apt-get install$need" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "mailsrv needs:$need (no apt-get here: install them with your package manager)" >&2
    exit 1
fi
echo "installing:$need"
$SUDO apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
