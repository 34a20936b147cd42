#!/bin/sh
# Builds OUT/mailsrv_VERSION_ARCH.deb from a built mailsrv binary and the files in packaging/
# (`make deb ARCH=...` runs it). No debhelper: dpkg-deb --root-owner-group, so it builds as any
# user. Depends is read from the binary: the libraries it is linked against (./mailsrv: libinih1
# and libbearssl0; the cross builds link both statically) and the glibc symbol versions it needs.
#   packaging/mkdeb.sh --arch ARCH --version VERSION --bin FILE --strip STRIP [--out DIR]
set -eu
cd "$(dirname "$0")/.."
arch='' version='' bin='' strip=strip out=build
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=$2; shift 2;;
        --version) version=$2; shift 2;;
        --bin) bin=$2; shift 2;;
        --strip) strip=$2; shift 2;;
        --out) out=$2; shift 2;;
        *) echo "usage: $0 --arch ARCH --version VERSION --bin FILE --strip STRIP [--out DIR]" >&2; exit 2;;
    esac
done
[ -n "$arch" ] && [ -n "$version" ] && [ -f "$bin" ] || { echo "$0: --arch, --version and an existing --bin are needed" >&2; exit 2; }
case $arch in
    amd64) machine='X86-64';; armhf) machine='ARM';; arm64) machine='AArch64';;
    *) echo "$0: unknown ARCH $arch (amd64, armhf, arm64)" >&2; exit 2;;
esac
for tool in dpkg-deb readelf gzip "$strip"; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install dpkg binutils gzip, and the cross binutils)" >&2; exit 1; }
done
readelf -h "$bin" | grep -q "Machine:.*$machine" || { echo "$0: $bin is not an $arch binary:" >&2; readelf -h "$bin" | grep Machine >&2; exit 1; }

stage=$out/deb-$arch
deb=$out/mailsrv_${version}_$arch.deb
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/sbin" "$stage/usr/share/man/man8" "$stage/usr/share/man/man5" \
    "$stage/usr/share/doc/mailsrv/examples/fail2ban/filter.d" "$stage/usr/share/doc/mailsrv/examples/fail2ban/jail.d" \
    "$stage/lib/systemd/system" "$stage/etc/mailsrv" "$stage/etc/logrotate.d"

# DEB_MAINTAINER: who builds it (lintian calls the project's own .local address bogus)
maint=${DEB_MAINTAINER:-mailsrv developers <dev@mailsrv.local>}

# the binary, stripped as dh_strip does it
install -m 0755 "$bin" "$stage/usr/sbin/mailsrv"
"$strip" --remove-section=.comment --remove-section=.note "$stage/usr/sbin/mailsrv"

gzip -9n < packaging/mailsrv.8 > "$stage/usr/share/man/man8/mailsrv.8.gz"
gzip -9n < packaging/mailsrv.ini.5 > "$stage/usr/share/man/man5/mailsrv.ini.5.gz"
install -m 0644 packaging/mailsrv.service "$stage/lib/systemd/system/mailsrv.service"
install -m 0640 packaging/mailsrv.ini "$stage/etc/mailsrv/mailsrv.ini"
install -m 0644 packaging/logrotate "$stage/etc/logrotate.d/mailsrv"
install -m 0644 packaging/deb/copyright "$stage/usr/share/doc/mailsrv/copyright"
gzip -9n < README.md > "$stage/usr/share/doc/mailsrv/README.md.gz"
install -m 0644 packaging/fail2ban/filter.d/mailsrv.conf "$stage/usr/share/doc/mailsrv/examples/fail2ban/filter.d/mailsrv.conf"
install -m 0644 packaging/fail2ban/jail.d/mailsrv.conf "$stage/usr/share/doc/mailsrv/examples/fail2ban/jail.d/mailsrv.conf"
# a changelog dated by the last commit (or the version file): the same input, the same package
date=$(git log -1 --format=%aD 2>/dev/null || date -R -r mailsrv.h)
printf 'mailsrv (%s) unstable; urgency=medium\n\n  * Built from the mailsrv repository (make deb).\n\n -- %s  %s\n' \
    "$version" "$maint" "$date" | gzip -9n > "$stage/usr/share/doc/mailsrv/changelog.gz"

for f in postinst prerm postrm; do install -m 0755 "packaging/deb/$f" "$stage/DEBIAN/$f"; done
mkdir -p "$stage/usr/share/lintian/overrides"
printf '%s\n' '# the INI holds password hashes: root:mailsrv 0640 (postinst sets the group)' \
    'mailsrv: non-standard-file-perm 0640 != 0644 [etc/mailsrv/mailsrv.ini]' > "$stage/usr/share/lintian/overrides/mailsrv"
chmod 0644 "$stage/usr/share/lintian/overrides/mailsrv"
printf '/etc/mailsrv/mailsrv.ini\n/etc/logrotate.d/mailsrv\n' > "$stage/DEBIAN/conffiles"

# Depends: one package per NEEDED library, and libc6 at the newest glibc symbol version used
depends=
add() { depends="${depends:+$depends, }$1"; }
glibc=$(readelf -V --wide "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case $lib in
        libc.so.6) add "libc6 (>= ${glibc:-2.36})";;
        libinih.so.1) add "libinih1 (>= 55)";;
        libbearssl.so.0) add "libbearssl0 (>= 0.6+dfsg.1)";;
        ld-linux*) ;;
        *) echo "$0: $bin needs $lib: add its package to mkdeb.sh" >&2; exit 1;;
    esac
done
add adduser
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CTL
Package: mailsrv
Version: $version
Architecture: $arch
Maintainer: $maint
Installed-Size: $size
Depends: $depends
Suggests: logrotate, fail2ban
Section: mail
Priority: optional
Description: small mail server: SMTP, POP3 and a Mailpit-compatible HTTP API
 mailsrv receives mail over SMTP, delivers it to local Maildir or mbox
 mailboxes or relays it to other domains, and serves it over POP3 and an
 HTTP API with a web page. One process, one INI file.
 .
 The package installs a systemd unit (mailsrv.service) that runs the
 server as the account mailsrv with only CAP_NET_BIND_SERVICE. It is
 neither enabled nor started: edit /etc/mailsrv/mailsrv.ini first.
CTL
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
find "$stage" -type d -exec chmod 0755 {} +
dpkg-deb --build --root-owner-group -Zxz "$stage" "$deb" >/dev/null
echo "$deb: $(wc -c < "$deb") bytes; Depends: $depends"
