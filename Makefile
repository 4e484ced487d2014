# nomadlet — build, run, test, bench.
# `make run`  builds and starts a dev agent on 127.0.0.1:4646.
# `make test` installs what the tests need, checks formatting and lints, and runs every test.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: run build release test deps lint unit bench clean

run: release
	./target/release/nomadlet agent -dev

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Debian packages and Python packages the tests use (curl inside tasks, python-nomad).
deps:
	@command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
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

clean:
	$(CARGO) clean
