# echod — build, demo, test. Run as root on Debian 12 (set-up installs packages with apt).
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr
DESTDIR ?=

# Debian packages the build and the tests need.
APT_PACKAGES := libsystemd-dev pkg-config systemd systemd-container python3 python3-jsonschema procps iproute2 gcc util-linux \
	debhelper dpkg-dev man-db

# Release binaries with the Swift runtime linked in (they run where no toolchain is: a .deb, a
# container), built in their own scratch directory.
STATIC_SCRATCH ?= .build-static
BUILT ?= $(STATIC_SCRATCH)/release
VERSION := 0.1.0
# Installation directories (GNU names). echod's configuration path is fixed: /etc/echod.
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
SYSCTL_DIR ?= $(PREFIX)/lib/sysctl.d
SYSCONFDIR ?= /etc

.PHONY: all setup build release demo test test-unit test-sanitize mutants bench bench-smoke clean release-static install uninstall deb e2e

all: build

## setup: install what building and testing need (idempotent; apt only when something is missing).
setup:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "setup: run as root (or install:$$missing)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "setup: swift not found on PATH (Swift 6.1 or newer is needed)" >&2; exit 1; }

## build: debug build of everything, tests included.
build: setup
	$(SWIFT) build --build-tests

## release: optimised binaries in .build/release.
release: setup
	$(SWIFT) build -c release

## demo: build, run echod on loopback, push traffic through it, show the result.
demo: release
	./scripts/demo.sh .build/release

## test: set-up, build, the end-to-end test against real systemd (e2e), bench-smoke, the Swift suites.
# The Swift suites run last so that their summary line closes the output.
# Each part has a time budget (timeout(1) for e2e and bench-smoke; per suite for the Swift
# suites, checked by scripts/test-report.py, which also prints the ten slowest tests and then
# repeats the summary line so it stays last).
E2E_BUDGET ?= 420
BENCH_SMOKE_BUDGET ?= 180
test: build
	timeout --foreground $(E2E_BUDGET) $(MAKE) --no-print-directory e2e
	timeout --foreground $(BENCH_SMOKE_BUDGET) $(MAKE) bench-smoke
	SWIFT=$(SWIFT) python3 scripts/test-report.py --skip-build

## test-sanitize: the Swift suites under ThreadSanitizer, then AddressSanitizer, with echod and
## echoload (which the suites run as child processes) built the same way, each in its own
## scratch directory. Not part of make test (slow).
test-sanitize: setup
	$(SWIFT) build --build-tests -sanitize=thread --scratch-path .build-tsan
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  $(SWIFT) test --skip-build -sanitize=thread --scratch-path .build-tsan
	$(SWIFT) build --build-tests -sanitize=address --scratch-path .build-asan
	ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" \
	  $(SWIFT) test --skip-build -sanitize=address --scratch-path .build-asan

## mutants: apply each one-line break listed in Tests/mutants/mutants.json, build, run the
## tests that must catch it, restore; fails if any mutant survives or is stale. Slow; not in test.
mutants: setup
	SWIFT=$(SWIFT) python3 scripts/mutants.py

## release-static: echod and echoload with the Swift runtime linked in, in $(BUILT).
release-static: setup
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(STATIC_SCRATCH) --product echod
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(STATIC_SCRATCH) --product echoload

## install: binaries, units, sysctl drop-in, configuration, man pages (DESTDIR, PREFIX=/usr).
## Does not build (run release-static first); never overwrites an existing echod.conf.
install:
	@for b in echod echoload; do [ -x $(BUILT)/$$b ] || { echo "install: $(BUILT)/$$b missing: run 'make release-static'" >&2; exit 1; }; done
	install -D -m 0755 $(BUILT)/echod $(DESTDIR)$(SBINDIR)/echod
	install -D -m 0755 $(BUILT)/echoload $(DESTDIR)$(BINDIR)/echoload
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/sbin/echod|$(SBINDIR)/echod|' packaging/echod.service >$(DESTDIR)$(SYSTEMD_UNIT_DIR)/echod.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/echod.service
	install -m 0644 packaging/echod.socket $(DESTDIR)$(SYSTEMD_UNIT_DIR)/echod.socket
	install -D -m 0644 packaging/sysctl.d/60-echod.conf $(DESTDIR)$(SYSCTL_DIR)/60-echod.conf
	install -d $(DESTDIR)$(SYSCONFDIR)/echod/echod.conf.d
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/echod/echod.conf ]; then \
	  echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/echod/echod.conf (the shipped one is etc/echod.conf)"; \
	else install -v -m 0644 etc/echod.conf $(DESTDIR)$(SYSCONFDIR)/echod/echod.conf; fi
	install -D -m 0644 packaging/man/echod.8 $(DESTDIR)$(MANDIR)/man8/echod.8
	install -D -m 0644 packaging/man/echod.conf.5 $(DESTDIR)$(MANDIR)/man5/echod.conf.5
	install -D -m 0644 packaging/man/echoload.1 $(DESTDIR)$(MANDIR)/man1/echoload.1
	@[ -n "$(DESTDIR)" ] || echo "install: now run 'systemctl daemon-reload && systemctl enable --now echod.socket'"

## uninstall: removes what install put there except the configuration in $(SYSCONFDIR)/echod.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/echod $(DESTDIR)$(BINDIR)/echoload \
	  $(DESTDIR)$(SYSTEMD_UNIT_DIR)/echod.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/echod.socket \
	  $(DESTDIR)$(SYSCTL_DIR)/60-echod.conf $(DESTDIR)$(MANDIR)/man8/echod.8 \
	  $(DESTDIR)$(MANDIR)/man5/echod.conf.5 $(DESTDIR)$(MANDIR)/man1/echoload.1

## deb: the Debian package, .build-deb/echod_$(VERSION)-1_<arch>.deb, built by dpkg-buildpackage
## from a copy of the source tree (so debhelper's clean step cannot touch this tree's builds),
## with the binaries of release-static.
deb: release-static
	rm -rf .build-deb && mkdir -p .build-deb/echod-$(VERSION)
	cp -a Makefile Package.swift $(wildcard Package.resolved) README.md Sources etc packaging debian .build-deb/echod-$(VERSION)/
	cd .build-deb/echod-$(VERSION) && ECHOD_PREBUILT=$(CURDIR)/$(BUILT) \
	  dpkg-buildpackage --build=binary --no-sign >../build.log 2>&1 \
	  || { tail -40 ../build.log; exit 1; }
	@ls .build-deb/*.deb

## e2e: install the .deb in a throwaway systemd-nspawn container booted from this machine's own tree
## and drive it with systemctl and echoload (Tests/e2e/run.sh). Needs root.
e2e: deb
	E2E_RESULTS=.build-e2e Tests/e2e/run.sh .build-deb/echod_$(VERSION)-1_$$(dpkg --print-architecture).deb

## bench: the three models against the C baseline (bench/baseline.c); several minutes.
BENCH_OUT ?= bench/out
$(BENCH_OUT)/baseline: bench/baseline.c
	@mkdir -p $(BENCH_OUT)
	$(CC) -O2 -Wall -Wextra -o $@ $<

bench: release-static $(BENCH_OUT)/baseline
	python3 bench/run.py --echod $(BUILT)/echod --echoload $(BUILT)/echoload \
	  --baseline $(BENCH_OUT)/baseline --out $(BENCH_OUT)

## bench-smoke: the benchmark end to end in under a minute; asserts nothing about speed.
bench-smoke: release-static $(BENCH_OUT)/baseline
	python3 bench/run.py --echod $(BUILT)/echod --echoload $(BUILT)/echoload \
	  --baseline $(BENCH_OUT)/baseline --out $(BENCH_OUT)/smoke --smoke --quiet

clean:
	rm -rf .build .build-*
