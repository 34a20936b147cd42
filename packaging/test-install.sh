#!/bin/sh
# The package as an admin gets it: builds the amd64 .deb (make deb), installs it on THIS machine
# with dpkg, checks its files, account and modes, adds a mailbox, runs the installed server the
# way mailsrv.service does (as mailsrv, with CAP_NET_BIND_SERVICE only) on ports 25, 587 and 110,
# sends a message over SMTP and reads it back over POP3, rotates the log with the shipped
# logrotate snippet, verifies the unit with systemd-analyze, stops the server with SIGTERM, then
# removes (dpkg -r) and purges (dpkg -P) the package, checking what stays each time. Last, it
# installs and purges once more with MAILSRV_PURGE_SPOOL=yes, which removes the account and the
# spool it made: the machine is left as it was.
#
#   packaging/test-install.sh [--yes] [--deb FILE]
#
# It installs a package and binds ports 25, 587 and 110 on every address, so it runs only as root,
# and only with CI=true (.ci/run: a throwaway machine) or --yes; it refuses to start where a
# package, account or spool named mailsrv exists already, or where one of those ports is taken.
# --deb FILE tests that package instead of building one. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.." || exit 1
yes=0 deb=''
while [ $# -gt 0 ]; do
    case $1 in
        --yes) yes=1; shift;;
        --deb) deb=$2; shift 2;;
        *) echo "usage: $0 [--yes] [--deb FILE]" >&2; exit 2;;
    esac
done
CONF=/etc/mailsrv/mailsrv.ini
SPOOL=/var/spool/mailsrv
LOG=/var/log/mailsrv/mailsrv.log
BIN=/usr/sbin/mailsrv

if [ "$(id -u)" != 0 ]; then
    echo "$0: refusing to run: it installs a package on this machine, so it must run as root" >&2; exit 2
fi
if [ "${CI:-}" != true ] && [ $yes != 1 ]; then
    echo "$0: refusing to run: it installs the mailsrv package on THIS machine and removes it again;" >&2
    echo "give --yes (or make install-test YES=1) where that is fine, or run it under CI=true" >&2; exit 2
fi
for tool in dpkg dpkg-deb python3 setpriv; do
    command -v $tool >/dev/null || { echo "$0: $tool is missing" >&2; exit 2; }
done
if dpkg-query -W -f='${Status}' mailsrv 2>/dev/null | grep -q 'installed\|config-files'; then
    echo "$0: refusing to run: the package mailsrv is installed here already (dpkg -P mailsrv first)" >&2; exit 2
fi
if getent passwd mailsrv >/dev/null || getent group mailsrv >/dev/null || [ -e $SPOOL ] || [ -e /etc/mailsrv ]; then
    echo "$0: refusing to run: an account, group, $SPOOL or /etc/mailsrv named mailsrv exists already;" >&2
    echo "this test makes them and removes them at the end, and would remove those too" >&2; exit 2
fi
# the ports the shipped configuration listens on (every address): taken, the server could not start
busy=$(python3 - <<'EOF'
import socket
for port in (25, 587, 110):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
    except OSError as e:
        print("%d (%s)" % (port, e.strerror))
    finally:
        s.close()
EOF
)
if [ -n "$busy" ]; then
    echo "$0: cannot test: the shipped configuration listens on ports 25, 587 and 110 of every address, and these are taken here: $busy" >&2
    command -v ss >/dev/null && ss -ltnp 2>/dev/null | grep -E ':(25|587|110)\b' >&2
    exit 2
fi

passed=0 failed=0 pid=''
ok() { passed=$((passed + 1)); echo "ok $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
# t NAME COMMAND...: one check, passed when COMMAND succeeds
t() { name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
# mode_is PATH MODE OWNER GROUP
mode_is() {
    got=$(stat -c '%a %U %G' "$1" 2>/dev/null)
    [ "$got" = "$2 $3 $4" ] || { echo "  $1: '$got', expected '$2 $3 $4'"; return 1; }
}
out=$(mktemp -d)
stop_server() { # by the PID this script started; SIGKILL after 45 s (30 s of grace, and margin)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    ( sleep 45; kill -KILL "$pid" 2>/dev/null ) & dog=$!
    wait "$pid"; rc=$?
    kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
    pid=''
    return $rc
}
cleanup() {
    stop_server
    if dpkg-query -W -f='${Status}' mailsrv 2>/dev/null | grep -q 'installed\|config-files'; then
        MAILSRV_PURGE_SPOOL=yes dpkg -P mailsrv >/dev/null 2>&1
    fi
    # what the package made and a purge with MAILSRV_PURGE_SPOOL=yes did not remove (a failed run)
    getent passwd mailsrv >/dev/null && userdel mailsrv
    getent group mailsrv >/dev/null && groupdel mailsrv
    rm -rf $SPOOL /etc/mailsrv /var/log/mailsrv "$out"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- build and install -------------------------------------------------------------------
if [ -z "$deb" ]; then
    version=$(sed -n 's/^#define MAILSRV_VERSION "\(.*\)"/\1/p' mailsrv.h)
    deb=build/mailsrv_${version}_amd64.deb
    make -s deb ARCH=amd64 > "$out/make.log" 2>&1 || { cat "$out/make.log"; echo "make deb failed"; echo "0 passed, 1 failed"; exit 1; }
fi
t "deb_built ($deb, $(wc -c < "$deb") bytes)" test -s "$deb"
if ! dpkg -i "$deb" > "$out/dpkg.log" 2>&1; then
    echo "  dpkg -i: missing dependencies? apt-get install -f"
    DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq >> "$out/dpkg.log" 2>&1
fi
installed() { dpkg-query -W -f='${Status}' mailsrv 2>/dev/null | grep -q 'install ok installed'; }
t dpkg_install installed || cat "$out/dpkg.log"
t postinst_says_not_started grep -q 'installed, not started' "$out/dpkg.log"

# ---- files, account, modes ---------------------------------------------------------------
t binary mode_is $BIN 755 root root
t binary_stripped sh -c "! readelf -S $BIN | grep -q '\.symtab'"
# minimal images (Docker's debian) tell dpkg to leave out /usr/share/man and /usr/share/doc
if grep -qs '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg /etc/dpkg/dpkg.cfg.d/*; then
    echo "  (dpkg leaves out /usr/share/man here: the man pages are looked for in the package)"
    t man_pages sh -c "dpkg-deb -c '$deb' | grep -q 'usr/share/man/man8/mailsrv.8.gz' && dpkg-deb -c '$deb' | grep -q 'usr/share/man/man5/mailsrv.ini.5.gz'"
else
    t man_pages test -s /usr/share/man/man8/mailsrv.8.gz -a -s /usr/share/man/man5/mailsrv.ini.5.gz
    t man_page_renders sh -c 'MANWIDTH=80 man /usr/share/man/man5/mailsrv.ini.5.gz 2>&1 | grep -q pop3_uidl'
fi
t unit test -s /lib/systemd/system/mailsrv.service
t logrotate_snippet mode_is /etc/logrotate.d/mailsrv 644 root root
t copyright test -s /usr/share/doc/mailsrv/copyright
t conffiles sh -c "dpkg-query -W -f='\${Conffiles}' mailsrv | grep -q '$CONF' && dpkg-query -W -f='\${Conffiles}' mailsrv | grep -q /etc/logrotate.d/mailsrv"
t account_is_system sh -c 'u=$(id -u mailsrv) && [ "$u" -lt 1000 ] && [ "$(getent passwd mailsrv | cut -d: -f6)" = /var/spool/mailsrv ] && [ "$(id -gn mailsrv)" = mailsrv ]'
t account_has_no_shell sh -c 'case $(getent passwd mailsrv | cut -d: -f7) in */nologin|*/false) true;; *) false;; esac'
t config_folder mode_is /etc/mailsrv 2750 root mailsrv
t config_file mode_is $CONF 640 root mailsrv
t spool mode_is $SPOOL 750 mailsrv mailsrv
t queue mode_is $SPOOL/.queue 700 mailsrv mailsrv
t log_folder mode_is /var/log/mailsrv 750 mailsrv mailsrv
t not_enabled sh -c '! ls /etc/systemd/system/*.wants/mailsrv.service >/dev/null 2>&1'

# ---- configuration: check, add, readable by the service's account ------------------------
as_mailsrv() { setpriv --reuid=mailsrv --regid=mailsrv --init-groups --inh-caps=-all --bounding-set=-all "$@"; }
t check $BIN -c $CONF check
t add sh -c "echo 'Install1Test' | $BIN -c $CONF add tester@example.org >/dev/null"
t add_kept_owner_and_mode mode_is $CONF 640 root mailsrv
t service_account_reads_config as_mailsrv $BIN -c $CONF check
t service_account_cannot_write_config sh -c "! setpriv --reuid=mailsrv --regid=mailsrv --init-groups sh -c ': >> $CONF' 2>/dev/null"

# ---- the installed server, as mailsrv.service runs it -----------------------------------
setpriv --reuid=mailsrv --regid=mailsrv --init-groups --inh-caps=-all,+net_bind_service \
    --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service \
    $BIN -c $CONF > "$out/server.out" 2>&1 &
pid=$!
if python3 - <<'EOF'
import socket, time
end = time.monotonic() + 20
while True:
    try:
        socket.create_connection(("127.0.0.1", 25), 1).close()
        break
    except OSError:
        if time.monotonic() > end:
            raise SystemExit(1)
        time.sleep(0.05)
EOF
then ok server_listens_on_25; else fail server_listens_on_25; cat "$out/server.out" "$LOG" 2>/dev/null; fi
t server_runs_as_mailsrv sh -c "awk '/^Uid:/ {print \$2}' /proc/$pid/status | grep -qx \"\$(id -u mailsrv)\""
t server_has_only_net_bind_service sh -c "grep -qx 'CapEff:[[:space:]]*0000000000000400' /proc/$pid/status"
for port in 587 110; do
    t "server_listens_on_$port" python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 5).close()"
done
t log_file_written sh -c "grep -q 'listening for smtp' $LOG"
t log_file_mode sh -c "[ \$(stat -c %U $LOG) = mailsrv ] && [ \$((0\$(stat -c %a $LOG) & 007)) -eq 0 ]"
t smtp_then_pop3_same_bytes python3 - <<'EOF'
import poplib, smtplib, sys, uuid
token = uuid.uuid4().hex
msg = ("From: someone@example.net\r\nTo: tester@example.org\r\nSubject: install test %s\r\n"
       "Message-ID: <%s@example.net>\r\n\r\nThe installed package delivers mail.\r\n..a line that starts with a dot\r\n" % (token, token)).encode()
with smtplib.SMTP("127.0.0.1", 25, timeout=10) as s:
    s.sendmail("someone@example.net", ["tester@example.org"], msg)
p = poplib.POP3("127.0.0.1", 110, timeout=10)
p.user("tester@example.org")
p.pass_("Install1Test")
n = len(p.list()[1])
got = [b"\r\n".join(p.retr(i + 1)[1]) + b"\r\n" for i in range(n)]
p.quit()
mine = [g for g in got if token.encode() in g]
if len(mine) != 1:
    sys.exit("%d of %d messages carry the token" % (len(mine), n))
# POP3 gives the message with the trace lines the server put on top (smtplib dot-stuffed the
# line that starts with a dot, the server unstuffed it, POP3 stuffed it, poplib unstuffed it)
body = mine[0][mine[0].index(b"From: someone"):]
if body != msg:
    sys.exit("POP3 gave %r, SMTP sent %r" % (body, msg))
EOF
t reload_as_root sh -c "$BIN -c $CONF reload >/dev/null"
t queue_stays_mailsrvs mode_is $SPOOL/.queue 700 mailsrv mailsrv
if command -v logrotate >/dev/null; then
    t logrotate_accepts_snippet sh -c "logrotate -d /etc/logrotate.d/mailsrv > $out/lr-debug.log 2>&1 && ! grep -qi 'error' $out/lr-debug.log"
    # a real rotation: the snippet's postrotate makes the server reopen the log; the next session is
    # logged in the new file, the old one holds what came before
    t logrotate_rotates logrotate -f -s "$out/lr.state" /etc/logrotate.d/mailsrv
    python3 -c "import socket; s = socket.create_connection(('127.0.0.1', 25), 5); s.recv(512); s.sendall(b'QUIT\r\n'); s.recv(512); s.close()"
    t log_reopened_after_rotation sh -c "test -s $LOG.1 && grep -q 'connect smtp' $LOG && grep -q 'listening for smtp' $LOG.1 && ! grep -q 'listening for smtp' $LOG"
else
    if [ "${CI:-}" = true ]; then fail "logrotate_accepts_snippet (logrotate is not installed)"; else echo "skipped logrotate checks (apt-get install logrotate)"; fi
fi
if command -v systemd-analyze >/dev/null; then
    t systemd_analyze_verify sh -c "systemd-analyze verify /lib/systemd/system/mailsrv.service > $out/verify.log 2>&1; rc=\$?; cat $out/verify.log; [ \$rc = 0 ] && ! [ -s $out/verify.log ]"
else
    fail "systemd_analyze_verify (systemd-analyze is missing)"
fi
t sigterm_exits_0 stop_server
t server_said_stopped grep -q 'stopped' $LOG

# ---- remove: the account, spool, log and configuration stay --------------------------------
dpkg -r mailsrv > "$out/remove.log" 2>&1
t dpkg_remove sh -c "! test -e $BIN && ! test -e /lib/systemd/system/mailsrv.service"
t remove_keeps_config test -f $CONF
t remove_keeps_account sh -c "getent passwd mailsrv >/dev/null"
t remove_keeps_mail sh -c "ls $SPOOL/example.org/tester/new/* $SPOOL/example.org/tester/cur/* 2>/dev/null | grep -q ."
# ---- purge: the configuration and the log go; the mail and its account stay ---------------
dpkg -P mailsrv > "$out/purge.log" 2>&1
t dpkg_purge sh -c "! dpkg-query -W mailsrv >/dev/null 2>&1 || ! dpkg-query -W -f='\${Status}' mailsrv | grep -q 'installed\|config-files'"
t purge_removes_config sh -c "! test -e /etc/mailsrv && ! test -e /etc/logrotate.d/mailsrv"
t purge_removes_log sh -c "! test -e /var/log/mailsrv"
t purge_keeps_mail sh -c "ls $SPOOL/example.org/tester/new/* $SPOOL/example.org/tester/cur/* 2>/dev/null | grep -q ."
t purge_keeps_account sh -c "getent passwd mailsrv >/dev/null"
t purge_says_where_mail_stays grep -q "mail stays in $SPOOL" "$out/purge.log"
# ---- again, purged with MAILSRV_PURGE_SPOOL=yes: nothing of mailsrv is left ----------------
dpkg -i "$deb" > "$out/dpkg2.log" 2>&1
t reinstall_keeps_old_mail sh -c "dpkg-query -W -f='\${Status}' mailsrv | grep -q 'install ok installed' && ls $SPOOL/example.org/tester/new/* $SPOOL/example.org/tester/cur/* 2>/dev/null | grep -q ."
MAILSRV_PURGE_SPOOL=yes dpkg -P mailsrv > "$out/purge2.log" 2>&1
t purge_spool_removes_everything sh -c "! test -e $SPOOL && ! getent passwd mailsrv && ! getent group mailsrv && ! test -e /etc/mailsrv"

echo "$passed passed, $failed failed"
[ $failed = 0 ]
