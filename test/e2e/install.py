"""Installing it (issue 17): the man pages are clean and describe every configuration key and every
command the program has, the packaged example configuration passes `check`, and `make install` /
`make uninstall` with DESTDIR put and remove exactly their files. As any user: the package itself
(dpkg, the account, the service) is tested as root by packaging/test-install.sh (make install-test)."""
import os
import re
import shutil
import stat
import subprocess

from .harness import REPO, check, need_program, run_cli, short, test

PKG = os.path.join(REPO, "packaging")
MAN8 = os.path.join(PKG, "mailsrv.8")
MAN5 = os.path.join(PKG, "mailsrv.ini.5")
EXAMPLE = os.path.join(PKG, "mailsrv.ini")


def source():
    with open(os.path.join(REPO, "mailsrv.c"), encoding="utf-8") as f:
        return f.read()


def key_table(src, name):
    """The key names of one of mailsrv.c's cfg_*_keys tables."""
    m = re.search(r"static const struct cfg_key %s\[\] = \{(.*?)\n\};" % name, src, re.S)
    check(m, "mailsrv.c has no table %s" % name)
    keys = re.findall(r'^\s*\{"([a-z0-9_]+)",', m.group(1), re.M)
    check(keys, "no keys read from %s" % name)
    return keys


def page_sections(path):
    """{section title: [the .TP items' first words]} of a man page (.SH "SECTION [x]" ...)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out, cur = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            cur = line[4:].strip().strip('"')
            out[cur] = []
        elif line == ".TP" and cur is not None and i + 1 < len(lines):
            m = re.match(r"\.B[IR]?\s+(\S+)", lines[i + 1])
            if m:
                out[cur].append(m.group(1).replace("\\-", "-"))
    return out


@test()
def install_man_pages_lint_clean(ctx):
    """mandoc -T lint -W warning finds nothing in either page, and man renders both without a
    warning at 80 columns."""
    mandoc = need_program("mandoc", "mandoc")
    man = need_program("man", "man-db")
    for page in (MAN8, MAN5):
        r = subprocess.run([mandoc, "-T", "lint", "-W", "warning", page], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(),
              "mandoc lint %s: status %d: %s" % (os.path.basename(page), r.returncode, short(r.stdout + r.stderr, 2000)))
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        r = subprocess.run([man, "--warnings", "-l", page], capture_output=True, text=True, timeout=30, env=env)
        check(r.returncode == 0 and not r.stderr.strip(),
              "man --warnings -l %s: status %d: %s" % (os.path.basename(page), r.returncode, short(r.stderr, 2000)))
        check(len(r.stdout.splitlines()) > 50, "man rendered %s into %d lines" % (page, len(r.stdout.splitlines())))


@test()
def install_ini5_documents_every_key(ctx):
    """Every key of cfg_server_keys, cfg_relay_keys and cfg_list_keys in mailsrv.c is an item of
    its section in mailsrv.ini(5), and the page describes no key the tables do not have."""
    src = source()
    secs = page_sections(MAN5)
    for table, title in (("cfg_server_keys", "SECTION [server]"), ("cfg_relay_keys", "SECTION [relay]"),
                         ("cfg_list_keys", "SECTION [list NAME@DOMAIN]")):
        check(title in secs, "mailsrv.ini.5 has no section %s (it has %s)" % (title, sorted(secs)))
        keys, documented = key_table(src, table), secs[title]
        missing = [k for k in keys if k not in documented]
        stale = [k for k in documented if k not in keys]
        check(not missing, "mailsrv.ini.5 %s does not describe %s (keys of %s)" % (title, missing, table))
        check(not stale, "mailsrv.ini.5 %s describes %s, which %s does not have" % (title, stale, table))
    for section in ("route", "domain", "alias"):  # the sections cfg_on_key reads without a table
        check(re.search(r'ms_strn?caseeq\(section, "%s' % section, src), "cfg_on_key no longer reads [%s]" % section)
        check(any(t.startswith("SECTION [%s" % section) for t in secs), "mailsrv.ini.5 has no section [%s]" % section)


@test()
def install_man8_documents_every_command(ctx):
    """Every command cli_usage() lists and every option main() takes is an item of mailsrv(8)."""
    src = source()
    m = re.search(r"\ncli_usage\(void\)\n\{(.*?)\n\}", src, re.S)
    check(m, "mailsrv.c has no cli_usage()")
    commands = set(re.findall(r'"(?:usage:)?\s+mailsrv (?:\[-c FILE\] )?([a-z]+)', m.group(1)))  # each line's own
    check({"check", "add", "reload"} <= commands, "commands read from cli_usage(): %s" % sorted(commands))
    m = re.search(r"\nmain\(int argc, char \*\*argv\)\n\{(.*?)\n\}", src, re.S)
    check(m, "mailsrv.c has no main()")
    options = set(re.findall(r'strcmp\(argv\[i\], "(-[-a-zA-Z]+)"\)', m.group(1)))
    check({"-c", "-v", "-V"} <= options, "options read from main(): %s" % sorted(options))
    secs = page_sections(MAN8)
    items = set(secs.get("COMMANDS", []))
    missing = sorted(c for c in commands if c not in items)
    check(not missing, "mailsrv.8 COMMANDS does not describe %s (COMMANDS has %s)" % (missing, sorted(items)))
    documented = set(secs.get("OPTIONS", [])) | items  # --name and --ip belong to gencert
    with open(MAN8, encoding="utf-8") as f:
        page = f.read().replace("\\-", "-")
    missing = sorted(o for o in options if o not in documented and o not in page)
    check(not missing, "mailsrv.8 does not describe the options %s" % missing)


@test(unix_only=True)
def install_example_config_checks(ctx):
    """The packaged /etc/mailsrv/mailsrv.ini passes `check` as it is shipped, has no account to become
    and no root, and listens on the standard ports with its spool in /var/spool/mailsrv."""
    r = run_cli(["-c", EXAMPLE, "check"])
    check(r.returncode == 0, "check of packaging/mailsrv.ini: status %d: %s" % (r.returncode, short(r.stderr, 2000)))
    check("storage in /var/spool/mailsrv" in r.stdout, "check says %s" % short(r.stdout))
    with open(EXAMPLE, encoding="utf-8") as f:
        keys = {}
        for line in f:
            m = re.match(r"\s*([a-z0-9_]+)\s*=\s*(.*?)\s*(?:\s;.*)?$", line)
            if m:
                keys.setdefault(m.group(1), m.group(2))
    check("user" not in keys and "allow_root" not in keys,
          "the packaged INI sets user or allow_root: the service starts as mailsrv, with no root phase")
    check(keys.get("smtp") == ":25" and keys.get("submission") == ":587" and keys.get("pop3") == ":110",
          "listeners: smtp=%s submission=%s pop3=%s" % (keys.get("smtp"), keys.get("submission"), keys.get("pop3")))
    check(not any(v and not v.startswith("$pbkdf2-sha256$") for k, v in keys.items() if k == "postmaster"),
          "the placeholder mailbox has a plain-text password")


def files_under(root):
    """{path relative to root: (mode, kind)} of everything under root but folders."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


@test(unix_only=True, limit=60)
def install_destdir_and_uninstall(ctx):
    """make install DESTDIR=... PREFIX=/usr puts the binary, the man pages, the example and, only
    where there is none, /etc/mailsrv/mailsrv.ini (0640, its folder 2750); a second install keeps an
    edited configuration; make uninstall removes its files and nothing else. PREFIX defaults to
    /usr/local."""
    make = need_program("make", "make")
    binary = os.path.join(ctx.dir, "mailsrv-copy")  # a copy: make never rebuilds ./mailsrv from here
    shutil.copy(BIN_PATH(), binary)
    dest = os.path.join(ctx.dir, "dest")

    def run(*args):
        r = subprocess.run([make, "-s", "-C", REPO, "INSTALL_BIN=" + binary, "DESTDIR=" + dest] + list(args),
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "make %s: status %d: %s" % (" ".join(args), r.returncode, short(r.stdout + r.stderr, 2000)))
        return r.stdout + r.stderr
    run("install", "PREFIX=/usr")
    want = {"usr/sbin/mailsrv": 0o755, "usr/share/man/man8/mailsrv.8": 0o644, "usr/share/man/man5/mailsrv.ini.5": 0o644,
            "usr/share/doc/mailsrv/mailsrv.ini.example": 0o644, "etc/mailsrv/mailsrv.ini": 0o640}
    got = files_under(dest)
    check(got == want, "make install put %s, expected %s" % (sorted("%s %o" % kv for kv in got.items()),
                                                            sorted("%s %o" % kv for kv in want.items())))
    with open(os.path.join(dest, "usr/sbin/mailsrv"), "rb") as a, open(binary, "rb") as b:
        check(a.read() == b.read(), "the installed binary is not INSTALL_BIN")
    etc = os.path.join(dest, "etc/mailsrv")
    check(stat.S_IMODE(os.stat(etc).st_mode) == 0o2750, "etc/mailsrv has mode %o, expected 2750"
          % stat.S_IMODE(os.stat(etc).st_mode))
    conf = os.path.join(etc, "mailsrv.ini")
    with open(conf, "a", encoding="utf-8") as f:
        f.write("; edited by the admin\n")
    out = run("install", "PREFIX=/usr")
    with open(conf, encoding="utf-8") as f:
        check(f.read().endswith("; edited by the admin\n"), "a second make install overwrote the edited configuration")
    check("kept" in out, "make install did not say it kept the configuration: %s" % short(out))
    run("uninstall", "PREFIX=/usr")
    got = files_under(dest)
    check(got == {"etc/mailsrv/mailsrv.ini": 0o640}, "after make uninstall: %s" % sorted(got))
    with open(conf, encoding="utf-8") as f:
        check(f.read().endswith("; edited by the admin\n"), "make uninstall changed the configuration")
    run("install")  # PREFIX's default
    check("usr/local/sbin/mailsrv" in files_under(dest), "PREFIX does not default to /usr/local: %s"
          % sorted(files_under(dest)))
    run("uninstall")
    check(files_under(dest) == {"etc/mailsrv/mailsrv.ini": 0o640}, "after make uninstall (/usr/local): %s"
          % sorted(files_under(dest)))


def BIN_PATH():
    """The binary under test (e2e.py sets harness.BIN)."""
    from . import harness
    return harness.BIN
