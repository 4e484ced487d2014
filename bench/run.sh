#!/usr/bin/env bash
# `make bench`: installs the load tool and baselines (Debian wrk and golang-go, tiny_http from
# crates.io), builds them outside the product, and runs bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
mkdir -p bench/build
cargo build --release -q --manifest-path bench/tinyhttp-hello/Cargo.toml --target-dir bench/build/tinyhttp
(cd bench/go-hello && GOFLAGS=-mod=mod GO111MODULE=off go build -o ../build/go-hello main.go)
exec python3 bench/bench.py "$@"
