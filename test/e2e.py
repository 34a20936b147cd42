#!/usr/bin/env python3
"""End-to-end tests for mailsrv.

Starts the real binary on free loopback ports with a temporary INI and talks to it
with smtplib, poplib, raw sockets and curl.

    python3 test/e2e.py [--bin PATH] [--run "PREFIX"] [-k SUBSTRING] [--list]

--bin   the server binary (default: ./mailsrv in the repository root, the folder above test/)
--run   a command prefix put before the binary, e.g. "qemu-arm -L /usr/arm-linux-gnueabihf" or "wine"
-k      only run tests whose name contains SUBSTRING
--shard I/N  only every Nth test of those, from the Ith (0-based): two emulated platforms that
        share a third's ABI each run half of the suite (Makefile: cross-arm64-test, cross-armv6-test)
MAILSRV_TEST_SLACK (default 1.0) multiplies every deadline (for emulators and slow machines).
MAILSRV_TEST_KEEP=1 keeps the temporary folders of failed tests.
MAILSRV_TEST_SANLOG=DIR: the folder where the servers' sanitizer (san.PID) or valgrind (vg.PID)
reports go (test/run_tests.sh --logs/--san sets it). After each test (its servers stopped) the new
ones are renamed after it (san.PID.TEST), and a report there, or a sanitizer report in a server's
output, fails the test.

Prints `ok NAME` or `FAIL NAME: reason` per test, then `N passed, N failed`; exit status 1 if any failed.
Python 3 standard library only (plus the curl command for the curl tests).

The tests live in the package test/e2e/, one module a subject (SECTIONS below, in the order they
run); the harness (servers, clients, check/soft/Skip, the @test decorator, the runner) is
e2e/harness.py. A new test goes in the module of its subject, after the tests it builds on.
"""
import argparse
import importlib
import os
import shlex
import socket
import sys
import time

# the subject modules in the order their tests run: importing one registers its tests (@test), and
# each imports only the harness and modules listed before it
SECTIONS = ["cli", "operate", "smtp", "pop3", "capture_crash", "relay", "tls", "lists", "hardening", "trust_storage",
            "trust_abuse", "trust_config", "peers", "dsn", "lmtp", "intl", "http", "web", "migrate", "claims", "install"]
MODULES = [importlib.import_module("e2e.harness")] + [importlib.import_module("e2e." + name) for name in SECTIONS]

from e2e.harness import (DURATIONS, REPO, SEED, SKIPPED, SKIP_KIND, SKIP_WHY, TESTS, TLS_TESTS, run_cli, run_test,  # noqa: E402
                         secs)
from e2e.tls import tls_built  # noqa: E402
from e2e.hardening import FAULT_TESTS  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="mailsrv end-to-end tests")
    ap.add_argument("--bin", default=os.path.join(REPO, "mailsrv"))
    ap.add_argument("--run", default="", help="command prefix, e.g. 'qemu-arm -L /usr/arm-linux-gnueabihf'")
    ap.add_argument("-k", dest="filter", action="append", default=None,
                    help="only tests whose name contains this (repeatable: any of them)")
    ap.add_argument("--list", action="store_true", help="list the test names and exit")
    ap.add_argument("--shard", default="0/1", help="I/N: only every Nth test, from the Ith (0-based)")
    a = ap.parse_args()
    try:
        shard, nshards = (int(x) for x in a.shard.split("/"))
        if not 0 <= shard < nshards:
            raise ValueError
    except ValueError:
        ap.error("--shard takes I/N with 0 <= I < N")
    BIN = os.path.abspath(a.bin)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    RUN = shlex.split(a.run)
    for m in MODULES:  # each module that names the binary or the prefix has its own binding of it
        for name, value in (("BIN", BIN), ("RUN", RUN)):
            if hasattr(m, name):
                setattr(m, name, value)
    print("# random seed %d (MAILSRV_TEST_SEED=%d repeats this run's random choices)" % (SEED, SEED))
    socket.setdefaulttimeout(secs(10))
    sel = [t for t in TESTS if not a.filter or any(f in t[0] for f in a.filter)][shard::nshards]
    if a.list:
        for t in sel:
            print(t[0])
        return 0
    faults = "FAULT INJECTION" in run_cli(["-V"]).stdout
    sel = [t for t in sel if (t[0] in FAULT_TESTS) == faults]  # fault tests run only on a fault build, and alone
    if any(t[0] in TLS_TESTS for t in sel) and not tls_built():
        for t in sel:
            if t[0] in TLS_TESTS:
                SKIPPED.append(t[0])
                SKIP_WHY[t[0]] = "no TLS in this build"
                SKIP_KIND[t[0]] = "notls"
        sel = [t for t in sel if t[0] not in TLS_TESTS]
    passed = failed = 0
    t0 = time.monotonic()
    for name, fn, kw, limit in sel:
        r = run_test(name, fn, kw, limit)
        if r is None:
            SKIPPED.append(name)
        elif r:
            passed += 1
        else:
            failed += 1
    print("# %d tests in %.1fs" % (passed + failed, time.monotonic() - t0))
    slow = sorted(DURATIONS.items(), key=lambda kv: -kv[1])[:10]
    if slow:
        print("# slowest: " + ", ".join("%s %.1fs" % kv for kv in slow))
    ci = os.environ.get("CI") == "true"
    skipped = []
    for name in SKIPPED:
        kind = SKIP_KIND.get(name)
        why = SKIP_WHY.get(name, "not on this platform")
        if kind is None and ci:  # CI installs every peer and runs as root: such a skip hides a test
            print("FAIL %s: skipped under CI, which should run it (%s)" % (name, why))
            failed += 1
        else:
            skipped.append(name)
            print("skipped %s (%s%s)" % (name, why, "" if kind else "; not expected"))
    print("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % len(skipped) if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
