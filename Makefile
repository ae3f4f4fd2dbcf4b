# echod — build, demo, test. Run as root on Debian 12 (set-up installs packages with apt).
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr
DESTDIR ?=

# Debian packages the build and the tests need.
APT_PACKAGES := libsystemd-dev pkg-config systemd systemd-container python3 procps iproute2

.PHONY: all setup build release demo test test-unit clean

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
	./scripts/demo.sh .build/release/echod

## test: set-up, build, every test.
test: build
	$(SWIFT) test --skip-build

clean:
	rm -rf .build .build-*
