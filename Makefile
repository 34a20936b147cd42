# mailsrv - see README.md. `make run` and `make test` install missing packages where they can.
CC ?= cc
CFLAGS ?= -O2 -g
WARN = -std=c99 -Wall -Wextra -pedantic -Werror
LIBS = -linih
PYTHON ?= python3

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

clean:
	rm -f mailsrv test/unit

.PHONY: all run deps test bench clean
