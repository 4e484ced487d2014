# nomadlet — build, run, test, bench.
# `make run`  builds and starts a dev agent on 127.0.0.1:4646.
# `make test` installs what the tests need, checks formatting and lints, and runs every test.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: run build release test deps lint unit bench clean fuzz install deb deb-lint deps-deb idle-order

run: release
	./target/release/nomadlet agent -dev

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Debian packages and Python packages the tests use (curl inside tasks, python-nomad,
# systemd-analyze for the unit check, dpkg-deb and fakeroot for the package test, ip and
# nsenter for the network-namespace partition tests). The real-client tests make their own
# venvs from PyPI under target/tmp.
deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq systemd; }
	@command -v fakeroot >/dev/null 2>&1 && command -v dpkg-shlibdeps >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq dpkg-dev fakeroot; }
	@command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
	@command -v ip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iproute2; }
	@command -v nsenter >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq util-linux; }
	@command -v $(PYTHON) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3 python3-pip; }
	@$(PYTHON) -c 'import nomad' 2>/dev/null || $(PYTHON) -m pip install --quiet --disable-pip-version-check python-nomad \
		|| $(PYTHON) -m pip install --quiet --disable-pip-version-check --break-system-packages python-nomad

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	$(CARGO) test --all-targets -- --test-threads=2

bench: release
	bash bench/run.sh

# Remake src/idle-path.order (the idle agent's functions, laid out first in release builds; see
# src/build.rs) from the release build as it ships, with the linker's map beside it, then link
# the release binary with it. Needs valgrind; takes ~3 minutes plus two release links.
idle-order:
	NOMADLET_NO_ORDER=1 NOMADLET_LINK_MAP=$(CURDIR)/target/idle-order.map $(CARGO) build --release
	$(PYTHON) bench/idle_order.py target/release/nomadlet target/idle-order.map src/idle-path.order
	$(CARGO) build --release

# cargo-fuzz campaign over the request-facing parsers (not part of CI): FUZZ_SECONDS per target
# (default 600), FUZZ_PARALLEL targets at a time (default 1). Needs the nightly toolchain.
FUZZ_SECONDS ?= 600
FUZZ_PARALLEL ?= 1
FUZZ_TARGETS ?= http_head chunked_body filter hcl_policy job_json go_duration jwt safe_path gossip_datagram

fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build -s none
	FUZZ_PARALLEL=$(FUZZ_PARALLEL) bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	$(CARGO) clean

# ---- install and Debian package -------------------------------------------------------------
# `make install [PREFIX=/usr/local] [DESTDIR=]`: the binary, the man pages, the systemd unit
# (ExecStart pointing at $(PREFIX)/bin) and example configs in $(SYSCONFDIR)/nomadlet.d (an
# existing config is never overwritten). BUILD= BIN=<path> installs an already built binary.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
BIN ?= target/release/nomadlet
BUILD ?= release
INSTALL ?= install

install: $(BUILD)
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSCONFDIR)/nomadlet.d
	$(INSTALL) -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/nomadlet
	$(INSTALL) -m 0644 man/*.1 $(DESTDIR)$(MANDIR)/man1/
	sed 's|/usr/local/bin/nomadlet|$(BINDIR)/nomadlet|; s|/etc/nomadlet.d|$(SYSCONFDIR)/nomadlet.d|' \
		dist/nomadlet.service > $(DESTDIR)$(UNITDIR)/nomadlet.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nomadlet.service
	@for f in dist/nomadlet.d/*.hcl; do \
		t=$(DESTDIR)$(SYSCONFDIR)/nomadlet.d/$$(basename $$f); \
		if [ -e $$t ]; then echo "kept $$t (exists)"; \
		else $(INSTALL) -m 0644 $$f $$t && echo "installed $$t"; fi; \
	done

# `make deb [DEB_OUT=target/deb]`: a Debian package built with plain dpkg-deb (no debhelper):
# /usr/bin, /lib/systemd/system, /etc/nomadlet.d as conffiles, man pages gzipped, copyright
# and changelog; maintainer scripts enable and start the service the way dh_installsystemd's
# do (deb-systemd-helper, deb-systemd-invoke); an upgrade restarts the agent (tasks keep running).
DEB_OUT ?= target/deb
DEB_COMPRESS ?= xz
DEB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1
DEB_ARCH ?= $(shell dpkg --print-architecture)
DEB_MAINTAINER ?= nomadlet maintainers <maintainers@users.noreply.h-seed-05505895.example>
DEB_ROOT = $(DEB_OUT)/root
DEB_FILE = $(DEB_OUT)/nomadlet_$(DEB_VERSION)_$(DEB_ARCH).deb

deb: $(BUILD)
	rm -rf $(DEB_ROOT) && mkdir -p $(DEB_ROOT)/DEBIAN
	$(MAKE) --no-print-directory install BUILD= BIN=$(BIN) DESTDIR=$(abspath $(DEB_ROOT)) \
		PREFIX=/usr SYSCONFDIR=/etc UNITDIR=/lib/systemd/system >/dev/null
	strip --strip-unneeded --remove-section=.comment --remove-section=.note \
		$(DEB_ROOT)/usr/bin/nomadlet
	gzip -9n $(DEB_ROOT)/usr/share/man/man1/*.1
	$(INSTALL) -d $(DEB_ROOT)/usr/share/doc/nomadlet
	$(INSTALL) -m 0644 dist/debian/copyright $(DEB_ROOT)/usr/share/doc/nomadlet/copyright
	sed 's|@VERSION@|$(DEB_VERSION)|; s|@MAINTAINER@|$(DEB_MAINTAINER)|; s|@DATE@|$(shell date -R -d @$$(git log -1 --format=%ct 2>/dev/null || date +%s))|' \
		dist/debian/changelog | gzip -9n > $(DEB_ROOT)/usr/share/doc/nomadlet/changelog.Debian.gz
	chmod 0644 $(DEB_ROOT)/usr/share/doc/nomadlet/changelog.Debian.gz
	for s in postinst prerm postrm; do $(INSTALL) -m 0755 dist/debian/$$s $(DEB_ROOT)/DEBIAN/$$s; done
	cd $(DEB_ROOT) && find etc -type f | sed 's|^|/|' | sort > DEBIAN/conffiles
	mkdir -p $(DEB_OUT)/shlibs/debian && printf 'Source: nomadlet\n\nPackage: nomadlet\nArchitecture: any\n' \
		> $(DEB_OUT)/shlibs/debian/control
	cd $(DEB_OUT)/shlibs && dpkg-shlibdeps -O $(abspath $(DEB_ROOT))/usr/bin/nomadlet 2>/dev/null \
		| sed -n 's/^shlibs:Depends=//p' > ../depends
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e 's|@MAINTAINER@|$(DEB_MAINTAINER)|' \
		-e "s|@DEPENDS@|$$(cat $(DEB_OUT)/depends), init-system-helpers (>= 1.54~)|" \
		-e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)|" \
		dist/debian/control > $(DEB_ROOT)/DEBIAN/control
	fakeroot dpkg-deb -Z$(DEB_COMPRESS) --build $(DEB_ROOT) $(DEB_FILE)
	@echo "built $(DEB_FILE)"

# Tools `make deb` and `make deb-lint` use; lintian is large, so `make test` does not install it.
deps-deb:
	@command -v dpkg-deb >/dev/null 2>&1 && command -v fakeroot >/dev/null 2>&1 && command -v dpkg-shlibdeps >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq dpkg-dev fakeroot; }
	@command -v lintian >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq lintian; }

# Build the package and check it with lintian: errors fail, warnings are listed.
deb-lint: deps-deb deb
	lintian --fail-on error --tag-display-limit 0 $(DEB_FILE)
