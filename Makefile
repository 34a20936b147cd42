# mailsrv - see README.md. `make run` and `make test` install missing packages where they can.
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN     = -std=c99 -Wall -Wextra -pedantic -Werror
LIBS     = -linih
PYTHON  ?= python3

all: mailsrv

mailsrv: mailsrv.c mailsrv.h
	@./test/deps.sh
	$(CC) $(WARN) $(CFLAGS) -o $@ mailsrv.c $(LIBS)

test/unit: test/unit.c mailsrv.c mailsrv.h
	$(CC) $(WARN) $(CFLAGS) -Wno-unused-function -o $@ test/unit.c $(LIBS)

run: mailsrv
	./mailsrv -c mailsrv.ini

deps:
	./test/deps.sh

test:
	@./test/deps.sh --test
	$(MAKE) mailsrv test/unit
	./test/run_tests.sh

bench: mailsrv
	$(PYTHON) test/bench.py

# ---- other platforms (see README "Platforms") --------------------------------------
# Toolchains come from Debian (test/deps.sh --cross); inih is built from Debian's
# source package, pinned by version and verified by apt, never committed.
INIH_VER   = 59-1
INIH_DIR   = deps/inih-r59
XDEFS      = -DINI_HANDLER_LINENO=1 -I$(INIH_DIR)
XFLAGS     = -Os -ffunction-sections -fdata-sections -Wl,--gc-sections
ARMHF      = arm-linux-gnueabihf
ARM64      = aarch64-linux-gnu
ARMEL      = arm-linux-gnueabi
MINGW      = x86_64-w64-mingw32
QEMU_ARM   ?= qemu-arm-static
QEMU_ARM64 ?= qemu-aarch64-static
WINEPREFIX_DIR = $(CURDIR)/build/wineprefix
WINE       = env WINEPREFIX=$(WINEPREFIX_DIR) WINEDEBUG=-all WINEDLLOVERRIDES=mscoree,mshtml= wine

$(INIH_DIR)/ini.c:
	./test/deps.sh --sources
	mkdir -p deps && cd deps && apt-get source --download-only libinih=$(INIH_VER) >/dev/null
	cd deps && tar xzf libinih_59.orig.tar.gz && touch inih-r59/ini.c

# build/TARGET/libinih.a with that target's compiler: make XCC=... XAR=... build/TARGET/libinih.a
build/%/libinih.a: $(INIH_DIR)/ini.c
	@mkdir -p $(@D)
	$(XCC) -Os -DINI_HANDLER_LINENO=1 -c $(INIH_DIR)/ini.c -o $(@D)/ini.o
	rm -f $@ && $(XAR) rcs $@ $(@D)/ini.o

# One rule per target: compiler, flags, libraries.
build/musl/mailsrv: mailsrv.c mailsrv.h $(INIH_DIR)/ini.c
	$(MAKE) --no-print-directory XCC=musl-gcc XAR=ar build/musl/libinih.a
	musl-gcc $(WARN) $(XFLAGS) $(XDEFS) -static -o $@ mailsrv.c build/musl/libinih.a
build/musl/unit: test/unit.c mailsrv.c build/musl/mailsrv
	musl-gcc $(WARN) -Wno-unused-function -O1 $(XDEFS) -static -o $@ test/unit.c build/musl/libinih.a
build/armhf/mailsrv: mailsrv.c mailsrv.h $(INIH_DIR)/ini.c
	$(MAKE) --no-print-directory XCC=$(ARMHF)-gcc XAR=$(ARMHF)-ar build/armhf/libinih.a
	$(ARMHF)-gcc $(WARN) $(XFLAGS) $(XDEFS) -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 -o $@ mailsrv.c build/armhf/libinih.a
build/armhf/unit: test/unit.c mailsrv.c build/armhf/mailsrv
	$(ARMHF)-gcc $(WARN) -Wno-unused-function -O1 $(XDEFS) -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 -o $@ test/unit.c build/armhf/libinih.a
build/arm64/mailsrv: mailsrv.c mailsrv.h $(INIH_DIR)/ini.c
	$(MAKE) --no-print-directory XCC=$(ARM64)-gcc XAR=$(ARM64)-ar build/arm64/libinih.a
	$(ARM64)-gcc $(WARN) $(XFLAGS) $(XDEFS) -o $@ mailsrv.c build/arm64/libinih.a
build/arm64/unit: test/unit.c mailsrv.c build/arm64/mailsrv
	$(ARM64)-gcc $(WARN) -Wno-unused-function -O1 $(XDEFS) -o $@ test/unit.c build/arm64/libinih.a
# ARMv6 (Pi Zero/1): armel soft-float, static, run on an emulated ARM1176
build/armv6/mailsrv: mailsrv.c mailsrv.h $(INIH_DIR)/ini.c
	$(MAKE) --no-print-directory XCC=$(ARMEL)-gcc XAR=$(ARMEL)-ar build/armv6/libinih.a
	$(ARMEL)-gcc $(WARN) $(XFLAGS) $(XDEFS) -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 -static -o $@ mailsrv.c build/armv6/libinih.a
build/armv6/unit: test/unit.c mailsrv.c build/armv6/mailsrv
	$(ARMEL)-gcc $(WARN) -Wno-unused-function -O1 $(XDEFS) -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 -static -o $@ test/unit.c build/armv6/libinih.a
build/windows/mailsrv.exe: mailsrv.c mailsrv.h $(INIH_DIR)/ini.c
	$(MAKE) --no-print-directory XCC=$(MINGW)-gcc XAR=$(MINGW)-ar build/windows/libinih.a
	$(MINGW)-gcc $(WARN) $(XFLAGS) $(XDEFS) -o $@ mailsrv.c build/windows/libinih.a -lws2_32 -liphlpapi

static: build/musl/mailsrv
	cp build/musl/mailsrv mailsrv-static && strip mailsrv-static

# Each *-test runs the unit tests and the end-to-end suite against that binary,
# with a native client; emulated servers get more time (MAILSRV_TEST_SLACK).
musl-test: build/musl/mailsrv build/musl/unit
	./test/run_tests.sh --unit "build/musl/unit" --bin build/musl/mailsrv
cross-arm-test: build/armhf/mailsrv build/armhf/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM) -L /usr/$(ARMHF) build/armhf/unit" \
	    --bin build/armhf/mailsrv --run "$(QEMU_ARM) -L /usr/$(ARMHF)"
cross-arm64-test: build/arm64/mailsrv build/arm64/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM64) -L /usr/$(ARM64) build/arm64/unit" \
	    --bin build/arm64/mailsrv --run "$(QEMU_ARM64) -L /usr/$(ARM64)"
cross-armv6-test: build/armv6/mailsrv build/armv6/unit
	MAILSRV_TEST_SLACK=4 ./test/run_tests.sh --unit "$(QEMU_ARM) -cpu arm1176 build/armv6/unit" \
	    --bin build/armv6/mailsrv --run "$(QEMU_ARM) -cpu arm1176"
# A persistent wineserver: one that exits between two servers makes the next
# one fail at start ("wine client error ... recvmsg").
windows-test: build/windows/mailsrv.exe
	mkdir -p $(WINEPREFIX_DIR)
	WINEPREFIX=$(WINEPREFIX_DIR) wineserver -p || true
	$(WINE) wineboot -i >/dev/null 2>&1 || true
	MAILSRV_TEST_SLACK=4 MAILSRV_TEST_PLATFORM=windows ./test/run_tests.sh --unit "" --bin build/windows/mailsrv.exe --run "$(WINE)"; \
	    rc=$$?; WINEPREFIX=$(WINEPREFIX_DIR) wineserver -k 2>/dev/null; exit $$rc

# No Linux- or glibc-only calls or headers (the BSD stand-in), and nothing
# exported but the API of mailsrv.h.
PORTCHECK_SYMS = accept4|epoll_|eventfd|signalfd|inotify_|sendfile|splice|pipe2|dup3|getrandom|prctl|memrchr|rawmemchr|strchrnul|mempcpy|qsort_r|asprintf|vasprintf|error|secure_getenv|getauxval|__.*_chk
PORTCHECK_HDRS = linux/|sys/epoll|sys/sendfile|sys/prctl|sys/inotify|sys/signalfd|sys/eventfd|features\.h|endian\.h|byteswap\.h|malloc\.h|alloca\.h|error\.h
portcheck:
	$(CC) $(WARN) -O2 -c mailsrv.c -o build-portcheck.o
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
	@rm -f build-portcheck.o; echo "portcheck ok"

# Stripped sizes of every build that exists.
sizes:
	@for f in mailsrv build/musl/mailsrv build/armhf/mailsrv build/arm64/mailsrv build/armv6/mailsrv build/windows/mailsrv.exe; do \
	    [ -f $$f ] || continue; cp $$f /tmp/mailsrv-size.$$$$; \
	    case $$f in *.exe) $(MINGW)-strip /tmp/mailsrv-size.$$$$;; *arm64*) $(ARM64)-strip /tmp/mailsrv-size.$$$$;; \
	    *armhf*) $(ARMHF)-strip /tmp/mailsrv-size.$$$$;; *armv6*) $(ARMEL)-strip /tmp/mailsrv-size.$$$$;; *) strip /tmp/mailsrv-size.$$$$;; esac; \
	    printf '%-28s %8d bytes stripped\n' $$f $$(wc -c < /tmp/mailsrv-size.$$$$); rm -f /tmp/mailsrv-size.$$$$; done

clean:
	rm -rf mailsrv test/unit build mailsrv-static build-portcheck.o

.PHONY: all run deps test bench clean static musl-test cross-arm-test cross-arm64-test cross-armv6-test windows-test portcheck sizes
