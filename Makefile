# nomadlet — build, run, test, bench.
# `make run`  builds and starts a dev agent on 127.0.0.1:4646.
# `make test` installs what the tests need, checks formatting and lints, and runs every test.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: run build release test deps lint unit bench clean fuzz

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

# cargo-fuzz campaign over the request-facing parsers (not part of CI): FUZZ_SECONDS per target
# (default 600), FUZZ_PARALLEL targets at a time (default 1). Needs the nightly toolchain.
FUZZ_SECONDS ?= 600
FUZZ_PARALLEL ?= 1
FUZZ_TARGETS ?= http_head chunked_body filter hcl_policy job_json go_duration jwt safe_path

fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build -s none
	FUZZ_PARALLEL=$(FUZZ_PARALLEL) bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	$(CARGO) clean
