# mailsrv - see README.md. `make run` and `make test` install missing packages where they can;
# `make` alone installs nothing: it says what is missing and how to install it.
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN     = -std=c99 -Wall -Wextra -pedantic -Werror
PYTHON  ?= python3
# TLS=1 (default): TLS with BearSSL (Debian's libbearssl-dev natively; built from Debian's source
# package for the other platforms). TLS=0: no TLS code, no BearSSL at all. Every target honours it.
TLS     ?= 1
ifeq ($(TLS),1)
TLS_DEFS = -DMAILSRV_ENABLE_TLS=1
TLS_LIBS = -lbearssl
DEPS_OPT =
else ifeq ($(TLS),0)
TLS_DEFS = -DMAILSRV_ENABLE_TLS=0
TLS_LIBS =
DEPS_OPT = --no-tls
else
$(error TLS must be 0 or 1, not "$(TLS)")
endif
# HTTP=1 (default): the HTTP API (section 12 of mailsrv.c) and its MIME reader. HTTP=0: neither;
# an `http =` listener is then a configuration error. Every target honours it.
HTTP    ?= 1
ifneq ($(filter-out 0 1,$(HTTP)),)
$(error HTTP must be 0 or 1, not "$(HTTP)")
endif
TLS_DEFS += -DMAILSRV_ENABLE_HTTP=$(HTTP)
LIBS     = -linih $(TLS_LIBS)
# Binary names do not say how they were built, so every mailsrv and unit binary depends on
# build/tls-$(TLS). Switching TLS deletes the other stamp and creates this one, newer than every
# binary, so they are rebuilt; the same setting again finds its stamp and rebuilds nothing.
# (Switching back and forth also rebuilds the cross binaries once: a few seconds, not BearSSL.)
TLS_STAMP = build/tls-$(TLS)-http$(HTTP)
# SAN=1: AddressSanitizer + UndefinedBehaviorSanitizer (gcc or clang). The sanitized binaries live
# in build/san-tls$(TLS)/, never in ./mailsrv or test/unit; `make test SAN=1` runs the whole suite
# against them and fails on any sanitizer report (test/run_tests.sh --san). Their stamp names the
# compiler: switching CC (gcc <-> clang) rebuilds them, as switching TLS rebuilds ./mailsrv.
SAN     ?= 0
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_DIR   = build/san-tls$(TLS)
SAN_STAMP = $(SAN_DIR)/cc-$(notdir $(firstword $(CC)))
ifeq ($(SAN),1)
TEST_BINS = $(SAN_DIR)/mailsrv $(SAN_DIR)/unit
TEST_ARGS = --san --logs $(SAN_DIR)/logs --unit $(SAN_DIR)/unit --bin $(SAN_DIR)/mailsrv
else ifeq ($(SAN),0)
TEST_BINS = mailsrv test/unit
TEST_ARGS =
else
$(error SAN must be 0 or 1, not "$(SAN)")
endif

all: $(firstword $(TEST_BINS))

# ---- every build of mailsrv and of the unit tests: one rule each --------------------------------
# A binary's directory says which build it is; the variables below describe the native build
# (./mailsrv, test/unit), and each other directory sets those it changes (SAN and the builds
# without TLS or with faults just below, the other platforms further down).
MAILSRV_BINS = mailsrv $(SAN_DIR)/mailsrv build/notls/mailsrv build/faults/mailsrv \
               build/musl/mailsrv build/musl-notls/mailsrv build/armhf/mailsrv build/arm64/mailsrv \
               build/armv6/mailsrv build/windows/mailsrv.exe
UNIT_BINS    = test/unit $(SAN_DIR)/unit build/notls/unit \
               build/musl/unit build/armhf/unit build/arm64/unit build/armv6/unit build/windows/unit.exe
# the compiler; its flags for mailsrv and for the unit tests; defines and include directories;
# what is linked, in order
BIN_CC     = $(CC)
BIN_FLAGS  = $(CFLAGS)
UNIT_FLAGS = $(CFLAGS)
BIN_DEFS   = $(TLS_DEFS)
BIN_LIBS   = $(LIBS)
# What a build against the system's libraries runs first: a check that prints what is missing and
# the apt-get line that installs it, and installs nothing. `make run` and `make bench` install
# instead (target-specific values are inherited by prerequisites: here, by their ./mailsrv).
DEPS_CMD   = ./test/deps.sh --check $(DEPS_OPT)
run bench: DEPS_CMD = ./test/deps.sh $(DEPS_OPT)

$(MAILSRV_BINS): %: mailsrv.c mailsrv.h
	@$(DEPS_CMD)
	@mkdir -p $(@D)
	$(BIN_CC) $(WARN) $(BIN_FLAGS) $(BIN_DEFS) -o $@ mailsrv.c $(BIN_LIBS)
$(UNIT_BINS): %: test/unit.c mailsrv.c mailsrv.h
	@mkdir -p $(@D)
	$(BIN_CC) $(WARN) $(UNIT_FLAGS) $(BIN_DEFS) -Wno-unused-function -o $@ test/unit.c $(BIN_LIBS)

$(TLS_STAMP):
	@mkdir -p build && rm -f build/tls-* && touch $@
mailsrv test/unit: $(TLS_STAMP)

# As root (a fresh container or Pi), mailsrv runs only when told: --allow-root, said in its log.
run: mailsrv
	./mailsrv -c mailsrv.ini $$([ "$$(id -u)" = 0 ] && echo --allow-root)

deps:
	./test/deps.sh $(DEPS_OPT)

test:
	@./test/deps.sh --test $(DEPS_OPT)
	@$(PYTHON) web/embed.py --check mailsrv.c
	$(MAKE) $(TEST_BINS)
	./test/run_tests.sh$(if $(TEST_ARGS), $(TEST_ARGS))

$(SAN_STAMP):
	@mkdir -p $(@D) && rm -f $(@D)/cc-* && touch $@
$(SAN_DIR)/mailsrv $(SAN_DIR)/unit: $(SAN_STAMP)
$(SAN_DIR)/%: BIN_FLAGS  = $(CFLAGS) $(SAN_FLAGS)
$(SAN_DIR)/%: UNIT_FLAGS = $(CFLAGS) $(SAN_FLAGS)

bench: mailsrv
	$(PYTHON) test/bench.py

# The native suite without TLS, whatever TLS says (the TLS tests report themselves skipped):
# the unit tests and half of the end-to-end tests (the build differs from ./mailsrv only where TLS
# is; NOTLS_SHARD=0/1 runs all of them). Its own paths, so it never mixes with ./mailsrv.
build/notls/%: BIN_DEFS = -DMAILSRV_ENABLE_TLS=0
build/notls/%: BIN_LIBS = -linih
build/notls/%: DEPS_CMD = ./test/deps.sh --check --no-tls
build/notls/unit: build/notls/mailsrv
NOTLS_SHARD ?= 1/2
notls-test:
	@./test/deps.sh --test --no-tls
	$(MAKE) build/notls/mailsrv build/notls/unit
	./test/run_tests.sh --unit build/notls/unit --bin build/notls/mailsrv --shard $(NOTLS_SHARD)

# The relay's tests once more through Debian's dnsmasq, which forwards to the tests' fake DNS
# (issue 18: a real resolver's answers to failures, not only the suite's model of one)
relay-dnsmasq-test:
	@./test/deps.sh --test $(DEPS_OPT)
	$(MAKE) mailsrv
	MAILSRV_TEST_RESOLVER=dnsmasq $(PYTHON) test/e2e.py --bin ./mailsrv -k relay_ -k tls_relay_ -k peers_dnsmasq_

# Fault injection: a build whose Nth write/fsync/rename/link/malloc fails on request
# (MAILSRV_FAULT=OP:N), and the e2e fault_ tests that drive it. Never a real build.
build/faults/mailsrv: $(TLS_STAMP)
build/faults/%: BIN_DEFS = $(TLS_DEFS) -DMAILSRV_FAULTS=1
fault-test:
	@./test/deps.sh --test $(DEPS_OPT)
	$(MAKE) mailsrv build/faults/mailsrv
	$(PYTHON) test/e2e.py --bin build/faults/mailsrv

# The unit tests and half of the end-to-end suite under valgrind, against ./mailsrv
# (MAILSRV_TEST_SLACK: valgrind is slow; the sanitizer run, `make test SAN=1`, covers every test:
# the half keeps CI within its time). Every process logs to build/valgrind/vg.PID, which e2e.py
# renames after its test (vg.PID.TEST); an error or a definite/indirect leak (at a clean exit)
# fails the test. VG_SHARD=0/1 runs all of it.
VALGRIND = valgrind --leak-check=full --error-exitcode=99 --errors-for-leak-kinds=definite,indirect
VG_LOGS  = $(CURDIR)/build/valgrind
VG_SHARD ?= 0/2
valgrind-test:
	@./test/deps.sh --test $(DEPS_OPT)
	@command -v valgrind >/dev/null || { echo "valgrind-test needs valgrind (apt-get install valgrind)" >&2; exit 1; }
	$(MAKE) mailsrv test/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --logs $(VG_LOGS) --unit "$(VALGRIND) --log-file=$(VG_LOGS)/vg.%p test/unit" \
	    --run "$(VALGRIND) --log-file=$(VG_LOGS)/vg.%p" --shard $(VG_SHARD)

# ---- other platforms (see README "Platforms") --------------------------------------
# Toolchains come from Debian (test/deps.sh --cross); inih and BearSSL are built from
# Debian's source packages, pinned by version and verified by apt, never committed.
INIH_VER   = 59-1
INIH_DIR   = deps/inih-r59
BEARSSL_VER = 0.6+dfsg.1-3
BEARSSL_DIR = deps/bearssl-0.6
XTLS_DEFS  = $(if $(filter 1,$(TLS)),-DMAILSRV_ENABLE_TLS=1 -I$(BEARSSL_DIR)/inc,-DMAILSRV_ENABLE_TLS=0) -DMAILSRV_ENABLE_HTTP=$(HTTP)
XDEFS      = -DINI_HANDLER_LINENO=1 -I$(INIH_DIR) $(XTLS_DEFS)
# Unwind tables only serve debuggers here (C, no exceptions): leaving them out keeps the
# static musl build without TLS under 150 KB. Windows x64 keeps them (its SEH needs them).
XFLAGS     = -Os -ffunction-sections -fdata-sections -Wl,--gc-sections -fno-asynchronous-unwind-tables -fno-unwind-tables
# the static libraries of target T, in link order
XLIBS      = build/$(1)/libinih.a $(if $(filter 1,$(TLS)),build/$(1)/libbearssl.a)
ARMHF      = arm-linux-gnueabihf
ARM64      = aarch64-linux-gnu
ARMEL      = arm-linux-gnueabi
MINGW      = x86_64-w64-mingw32
QEMU_ARM   ?= qemu-arm-static
QEMU_ARM64 ?= qemu-aarch64-static
WINEPREFIX_DIR = $(CURDIR)/build/wineprefix
WINE       = env WINEPREFIX=$(WINEPREFIX_DIR) WINEDEBUG=-all WINEDLLOVERRIDES=mscoree,mshtml= wine

# Each target's compiler, archiver and ABI flags, for everything built under build/TARGET/
# (the libraries too: 32-bit ARM gets a 64-bit time_t in BearSSL and inih as in mailsrv).
build/musl/% build/musl-notls/%: XCC = musl-gcc
build/musl/%:    XAR = ar
build/armhf/%:   XCC = $(ARMHF)-gcc
build/armhf/%:   XAR = $(ARMHF)-ar
build/armhf/%:   XARCH = -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64
build/arm64/%:   XCC = $(ARM64)-gcc
build/arm64/%:   XAR = $(ARM64)-ar
build/armv6/%:   XCC = $(ARMEL)-gcc
build/armv6/%:   XAR = $(ARMEL)-ar
build/armv6/%:   XARCH = -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64
build/windows/%: XCC = $(MINGW)-gcc
build/windows/%: XAR = $(MINGW)-ar
build/windows/%: XFLAGS = -Os -ffunction-sections -fdata-sections -Wl,--gc-sections

$(INIH_DIR)/ini.c:
	./test/deps.sh --sources
	mkdir -p deps && cd deps && apt-get source --download-only libinih=$(INIH_VER) >/dev/null
	cd deps && tar xzf libinih_59.orig.tar.gz && touch inih-r59/ini.c
# After inih's, not beside it (make -j): both may run deps.sh --sources, i.e. apt-get update.
$(BEARSSL_DIR)/inc/bearssl.h: | $(INIH_DIR)/ini.c
	./test/deps.sh --sources
	mkdir -p deps && cd deps && apt-get source --download-only bearssl=$(BEARSSL_VER) >/dev/null
	cd deps && tar xJf bearssl_0.6+dfsg.1.orig.tar.xz && touch bearssl-0.6/inc/bearssl.h

build/%/libinih.a: $(INIH_DIR)/ini.c
	@mkdir -p $(@D)
	$(XCC) -Os $(XARCH) -DINI_HANDLER_LINENO=1 -c $(INIH_DIR)/ini.c -o $(@D)/ini.o
	rm -f $@ && $(XAR) rcs $@ $(@D)/ini.o

# build/TARGET/libbearssl.a: all of BearSSL's src/**/*.c (277 files), one object each under
# build/TARGET/bearssl/, so that `make -j2` compiles two at a time. A sub-make lists the
# sources: they exist only once the rule above has run.
build/%/libbearssl.a: $(BEARSSL_DIR)/inc/bearssl.h
	@echo "building $@ from $(BEARSSL_DIR)/src: $(strip $(XCC) -Os $(XARCH)) (16-24 s; 8-12 s with make -j2)"
	+@$(MAKE) --no-print-directory BR_LIB=$@ XCC="$(XCC)" XAR="$(XAR)" XARCH="$(XARCH)" bearssl-lib
ifdef BR_LIB
BR_OBJ = $(patsubst $(BEARSSL_DIR)/src/%.c,$(dir $(BR_LIB))bearssl/%.o,$(wildcard $(BEARSSL_DIR)/src/*.c $(BEARSSL_DIR)/src/*/*.c))
bearssl-lib: $(BR_OBJ)
	rm -f $(BR_LIB) && $(XAR) rcs $(BR_LIB) $(dir $(BR_LIB))bearssl/*.o $(dir $(BR_LIB))bearssl/*/*.o
$(dir $(BR_LIB))bearssl/%.o: $(BEARSSL_DIR)/src/%.c
	@mkdir -p $(@D)
	@$(XCC) -Os $(XARCH) -I$(BEARSSL_DIR)/inc -I$(BEARSSL_DIR)/src -c $< -o $@
endif

# mailsrv and its unit tests for each of them (the rules are those of ./mailsrv and test/unit):
# the target's compiler and its own copies of the libraries; the unit tests built with -O1.
XDIRS = build/musl build/musl-notls build/armhf build/arm64 build/armv6 build/windows
$(XDIRS:=/%): BIN_CC     = $(XCC)
$(XDIRS:=/%): BIN_FLAGS  = $(XFLAGS)
$(XDIRS:=/%): UNIT_FLAGS = -O1
$(XDIRS:=/%): BIN_DEFS   = $(XDEFS) $(XARCH)
$(XDIRS:=/%): BIN_LIBS   = $(call XLIBS,$(notdir $(@D))) $(XLINK)
$(XDIRS:=/%): DEPS_CMD   =
# static: musl, and ARMv6 (Pi Zero/1: armel soft-float, run on an emulated ARM1176)
build/musl/% build/musl-notls/% build/armv6/%: XLINK = -static
# -ladvapi32: BearSSL's system RNG seeder (CryptGenRandom); mingw gcc adds it anyway, clang does not
build/windows/%: XLINK = -lws2_32 -liphlpapi -ladvapi32
# musl static without TLS and HTTP (the smallest build): the footprint benchmark's "< 150 KB
# without TLS" figure. Linked
# without -z separate-code (binutils' layout before 2.31): that saves 7 KB of page padding.
build/musl-notls/%: BIN_FLAGS = $(XFLAGS) -Wl,-z,noseparate-code
build/musl-notls/%: BIN_DEFS  = -DINI_HANDLER_LINENO=1 -I$(INIH_DIR) -DMAILSRV_ENABLE_TLS=0 -DMAILSRV_ENABLE_HTTP=0
build/musl-notls/%: BIN_LIBS  = build/musl/libinih.a $(XLINK)
build/musl/mailsrv:         $(call XLIBS,musl) $(TLS_STAMP)
build/musl-notls/mailsrv:   build/musl/libinih.a
build/armhf/mailsrv:        $(call XLIBS,armhf) $(TLS_STAMP)
build/arm64/mailsrv:        $(call XLIBS,arm64) $(TLS_STAMP)
build/armv6/mailsrv:        $(call XLIBS,armv6) $(TLS_STAMP)
build/windows/mailsrv.exe:  $(call XLIBS,windows) $(TLS_STAMP)
build/musl/unit build/armhf/unit build/arm64/unit build/armv6/unit: build/%/unit: build/%/mailsrv
build/windows/unit.exe: build/windows/mailsrv.exe

static: build/musl/mailsrv
	cp build/musl/mailsrv mailsrv-static && strip mailsrv-static

# Half of the end-to-end tests (MUSL_SHARD=0/1 for all): the other half differs from the glibc
# build only in the C library, and CI's 90 minutes are full
MUSL_SHARD ?= 0/2
musl-test: build/musl/mailsrv build/musl/unit
	./test/run_tests.sh --unit "build/musl/unit" --bin build/musl/mailsrv --shard $(MUSL_SHARD)

# Each *-test runs the unit tests and the end-to-end suite against that binary,
# with a native client; emulated servers get more time (MAILSRV_TEST_SLACK).
# Each runs the unit tests and half of the suite (CI's time budget): armhf and
# armv6 (armhf's 32-bit ABI, soft-float, an older CPU) one half each, together
# all of it on 32-bit ARM; arm64 (the word size of x86-64, the unsigned char of
# armhf) the first half. ARMHF_SHARD=0/1 runs the whole suite on armhf.
ARMHF_SHARD ?= 0/2
cross-arm-test: build/armhf/mailsrv build/armhf/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM) -L /usr/$(ARMHF) build/armhf/unit" \
	    --bin build/armhf/mailsrv --run "$(QEMU_ARM) -L /usr/$(ARMHF)" --shard $(ARMHF_SHARD)
cross-arm64-test: build/arm64/mailsrv build/arm64/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM64) -L /usr/$(ARM64) build/arm64/unit" \
	    --bin build/arm64/mailsrv --run "$(QEMU_ARM64) -L /usr/$(ARM64)" --shard 0/2
cross-armv6-test: build/armv6/mailsrv build/armv6/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM) -cpu arm1176 build/armv6/unit" \
	    --bin build/armv6/mailsrv --run "$(QEMU_ARM) -cpu arm1176" --shard 1/2
# A persistent wineserver: one that exits between two servers makes the next
# one fail at start ("wine client error ... recvmsg").
windows-test: build/windows/mailsrv.exe build/windows/unit.exe
	mkdir -p $(WINEPREFIX_DIR)
	WINEPREFIX=$(WINEPREFIX_DIR) wineserver -p || true
	$(WINE) wineboot -i >/dev/null 2>&1 || true
	MAILSRV_TEST_SLACK=4 MAILSRV_TEST_PLATFORM=windows ./test/run_tests.sh --unit "$(WINE) build/windows/unit.exe" --bin build/windows/mailsrv.exe --run "$(WINE)"; \
	    rc=$$?; WINEPREFIX=$(WINEPREFIX_DIR) wineserver -k 2>/dev/null; exit $$rc

# No Linux- or glibc-only calls or headers (the BSD stand-in), and nothing
# exported but the API of mailsrv.h.
PORTCHECK_SYMS = accept4|epoll_|eventfd|signalfd|inotify_|sendfile|splice|pipe2|dup3|getrandom|prctl|memrchr|rawmemchr|strchrnul|mempcpy|qsort_r|asprintf|vasprintf|error|secure_getenv|getauxval|__.*_chk
PORTCHECK_HDRS = linux/|sys/epoll|sys/sendfile|sys/prctl|sys/inotify|sys/signalfd|sys/eventfd|features\.h|endian\.h|byteswap\.h|malloc\.h|alloca\.h|error\.h
portcheck:
	$(CC) $(WARN) -O2 $(TLS_DEFS) -c mailsrv.c -o build-portcheck.o
	@if nm -u build-portcheck.o | grep -E ' ($(PORTCHECK_SYMS))'; then \
	    echo "portcheck: Linux/glibc-only symbols above"; rm -f build-portcheck.o; exit 1; fi
	@if grep -nE '#[[:space:]]*include[[:space:]]*<($(PORTCHECK_HDRS))' mailsrv.c; then \
	    echo "portcheck: non-portable headers above"; rm -f build-portcheck.o; exit 1; fi
	@if grep -nE '\b(MSG_NOSIGNAL|accept4|SOCK_NONBLOCK|SOCK_CLOEXEC|_GNU_SOURCE)\b' mailsrv.c; then \
	    echo "portcheck: Linux-only socket flags above"; rm -f build-portcheck.o; exit 1; fi
	@if nm -g --defined-only build-portcheck.o | grep -v -E ' (mailsrv_[a-z_]+|main)$$'; then \
	    echo "portcheck: symbols exported beyond the mailsrv.h API"; rm -f build-portcheck.o; exit 1; fi
	@if awk '/^\/\*==== 3\./{p=1} /^\/\*==== 4\./{p=0} !p' mailsrv.c | grep -nE '_WIN32|WSA|__unix__|__linux__' | grep -v '_WIN32_WINNT\|^[0-9]*:#ifdef _WIN32$$\|^[0-9]*:#else$$'; then \
	    echo "portcheck: platform code outside section 3"; rm -f build-portcheck.o; exit 1; fi
	@rm -f build-portcheck.o
	@$(PYTHON) test/toc.py --check mailsrv.c
	@$(PYTHON) web/embed.py --check mailsrv.c
	@echo "portcheck ok"

# The web page (web/index.html, app.css, app.js) into mailsrv.c's section 12.
page:
	$(PYTHON) web/embed.py mailsrv.c

# The table of contents at the top of mailsrv.c: one prototype per function, by section.
toc:
	$(PYTHON) test/toc.py mailsrv.c

# Stripped sizes of every build that exists.
sizes: build/musl-notls/mailsrv
	@for f in mailsrv build/notls/mailsrv build/musl/mailsrv build/musl-notls/mailsrv build/armhf/mailsrv build/arm64/mailsrv build/armv6/mailsrv build/windows/mailsrv.exe; do \
	    [ -f $$f ] || continue; cp $$f /tmp/mailsrv-size.$$$$; \
	    case $$f in *.exe) $(MINGW)-strip /tmp/mailsrv-size.$$$$;; *arm64*) $(ARM64)-strip /tmp/mailsrv-size.$$$$;; \
	    *armhf*) $(ARMHF)-strip /tmp/mailsrv-size.$$$$;; *armv6*) $(ARMEL)-strip /tmp/mailsrv-size.$$$$;; *) strip /tmp/mailsrv-size.$$$$;; esac; \
	    printf '%-28s %8d bytes stripped\n' $$f $$(wc -c < /tmp/mailsrv-size.$$$$); rm -f /tmp/mailsrv-size.$$$$; done

clean:
	rm -rf mailsrv test/unit build mailsrv-static build-portcheck.o

.PHONY: all run deps test page notls-test fault-test relay-dnsmasq-test valgrind-test bench clean static bearssl-lib musl-test cross-arm-test cross-arm64-test cross-armv6-test windows-test portcheck toc sizes

# ---- installing it as a service (issue 17): make install, make deb, make install-test ---------
# `make install` (PREFIX=/usr/local, DESTDIR= for staging) puts mailsrv in PREFIX/sbin, the man
# pages mailsrv(8) and mailsrv.ini(5) in PREFIX/share/man, and the example configuration in
# PREFIX/share/doc/mailsrv/mailsrv.ini.example. The configuration itself, /etc/mailsrv/mailsrv.ini
# (SYSCONFDIR=/etc whatever PREFIX is), is installed from the same example only when there is none:
# an existing one is never touched, by install or by uninstall. It is made 0640 in a folder 2750,
# both of group mailsrv when that group exists (the file holds password hashes; the set-group-ID
# folder keeps the group when `mailsrv add` rewrites the file). `make uninstall` removes exactly
# the files install put under PREFIX, never the configuration nor a spool.
# The account, the spool, the systemd unit and the logrotate snippet come with the package
# (`make deb`: packaging/mkdeb.sh; ARCH=amd64 from ./mailsrv, armhf and arm64 from the cross
# builds). INSTALL_BIN installs another binary than ./mailsrv (the e2e test installs a copy).
PREFIX     ?= /usr/local
DESTDIR    ?=
SYSCONFDIR ?= /etc
INSTALL_BIN ?= mailsrv
ARCH       ?= amd64
VERSION     = $(shell sed -n 's/^\#define MAILSRV_VERSION "\(.*\)"/\1/p' mailsrv.h)
DEB_BIN_amd64   = mailsrv
DEB_BIN_armhf   = build/armhf/mailsrv
DEB_BIN_arm64   = build/arm64/mailsrv
DEB_STRIP_amd64 = strip
DEB_STRIP_armhf = $(ARMHF)-strip
DEB_STRIP_arm64 = $(ARM64)-strip
I_SBIN = $(DESTDIR)$(PREFIX)/sbin
I_MAN  = $(DESTDIR)$(PREFIX)/share/man
I_DOC  = $(DESTDIR)$(PREFIX)/share/doc/mailsrv
I_ETC  = $(DESTDIR)$(SYSCONFDIR)/mailsrv

install: $(INSTALL_BIN)
	install -d $(I_SBIN) $(I_MAN)/man8 $(I_MAN)/man5 $(I_DOC)
	install -m 0755 $(INSTALL_BIN) $(I_SBIN)/mailsrv
	install -m 0644 packaging/mailsrv.8 $(I_MAN)/man8/mailsrv.8
	install -m 0644 packaging/mailsrv.ini.5 $(I_MAN)/man5/mailsrv.ini.5
	install -m 0644 packaging/mailsrv.ini $(I_DOC)/mailsrv.ini.example
	@if [ -e $(I_ETC)/mailsrv.ini ]; then \
	    echo "$(I_ETC)/mailsrv.ini exists: kept (the new example is $(I_DOC)/mailsrv.ini.example)"; \
	else \
	    install -d -m 2750 $(I_ETC) && install -m 0640 packaging/mailsrv.ini $(I_ETC)/mailsrv.ini && \
	    echo "installed $(I_ETC)/mailsrv.ini (replace example.org with your domain)"; \
	    if [ -z "$(DESTDIR)" ] && getent group mailsrv >/dev/null; then chgrp mailsrv $(I_ETC) $(I_ETC)/mailsrv.ini; \
	    else echo "make it readable by the account the server runs as: chgrp mailsrv $(I_ETC) $(I_ETC)/mailsrv.ini"; fi; \
	fi

uninstall:
	rm -f $(I_SBIN)/mailsrv $(I_MAN)/man8/mailsrv.8 $(I_MAN)/man5/mailsrv.ini.5 $(I_DOC)/mailsrv.ini.example
	rmdir $(I_DOC) 2>/dev/null || true
	@echo "kept: $(I_ETC) (configuration) and every spool"

deb: $(DEB_BIN_$(ARCH))
	@[ -n "$(DEB_BIN_$(ARCH))" ] || { echo "ARCH must be amd64, armhf or arm64, not \"$(ARCH)\"" >&2; exit 1; }
	./packaging/mkdeb.sh --arch $(ARCH) --version $(VERSION) --bin $(DEB_BIN_$(ARCH)) --strip $(DEB_STRIP_$(ARCH)) --out build

# Builds the amd64 package, installs it on THIS machine, runs it as the service would, removes and
# purges it (packaging/test-install.sh). It refuses to run unless root and CI=true (.ci/run) or
# YES=1 (`sudo make install-test YES=1` on a machine you may install on). Ends with "N passed, N failed".
install-test:
	./packaging/test-install.sh$(if $(filter 1,$(YES)), --yes)

.PHONY: install uninstall deb install-test

# ---- fuzzing (issue 7): libFuzzer harnesses, one per untrusted input ----------------
# test/fuzz/NAME.c includes mailsrv.c (as test/unit.c does); seeds in test/fuzz/corpus/NAME/.
# `make fuzz FUZZ_SECONDS=N` builds build/fuzz/NAME and runs each for N seconds on a copy
# of its seeds; it fails if any harness crashed (reproducer: build/fuzz/NAME-crash-*).
# The inputs that found bugs are kept in test/fuzz/crashes/ and, as seeds, in the corpora.
# Then the PEM seeds are read by openssl too: the same certificates and keys (pem_openssl.sh).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS    = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
               -fsanitize-coverage-ignorelist=test/fuzz/coverage-ignore.txt $(FUZZ_DEFS)
FUZZ_TARGETS  = dns dns_tcp reply queue_env data mime_conv auth smtp_cmd ini mbox maildir list list_post $(if $(filter 1,$(TLS)),pem starttls) smtp_session pop_session $(if $(filter 1,$(HTTP)),http mime)
build/fuzz/%: test/fuzz/%.c test/fuzz/fuzz.h test/fuzz/coverage-ignore.txt mailsrv.c mailsrv.h $(TLS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(WARN) -Wno-unused-function $(FUZZ_FLAGS) $(TLS_DEFS) -o $@ $< $(LIBS)
fuzz: $(addprefix build/fuzz/,$(FUZZ_TARGETS))
	./test/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
	$(if $(filter 1,$(TLS)),./test/fuzz/pem_openssl.sh)
.PHONY: fuzz
