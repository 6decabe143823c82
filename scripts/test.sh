#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks format and
# lints, starts a real Kubernetes control plane (when a Go toolchain can build it), then
# runs every test of the workspace against kubesim and against that control plane.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

# Missing lint tools are reported loudly, and the tests still run.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
else
    echo "WARNING: rustfmt is not installed: the format check is SKIPPED (rustup component add rustfmt)" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    echo "WARNING: clippy is not installed: the lint check is SKIPPED (rustup component add clippy)" >&2
fi

# The real control plane: built once from Go modules (cached outside the work tree), one
# cluster shared by every test, each test in its own namespace.
if command -v go >/dev/null 2>&1; then
    bash scripts/cluster.sh build
    cluster_dir=$(mktemp -d "${TMPDIR:-/tmp}/kubervisor-cluster.XXXXXX")
    trap 'bash scripts/cluster.sh down "$cluster_dir" --purge >/dev/null 2>&1 || true' EXIT
    bash scripts/cluster.sh up "$cluster_dir" >/dev/null
    export KUBERVISOR_TEST_KUBECONFIG=$cluster_dir/kubeconfig
    # Every real-cluster test must then run: none may skip for want of a cluster.
    export KUBERVISOR_TEST_REQUIRE_REAL=1
else
    echo "WARNING: no Go toolchain: the real Kubernetes control plane cannot be built, so every" >&2
    echo "WARNING: test against it is SKIPPED (each says so); only kubesim is tested" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

# The parsers of untrusted input, fuzzed for a short bounded time each (longer runs by
# hand: scripts/fuzz.sh 600). Needs a nightly toolchain, which cannot be installed here
# when missing: then it is skipped, loudly.
# The smoke run uses the unoptimised build: after a change it rebuilds the project's crates
# in about a minute, where the optimised build takes several.
fuzz_status=0
KUBERVISOR_FUZZ_BUILD=${KUBERVISOR_FUZZ_BUILD:-dev} \
    bash scripts/fuzz.sh "${KUBERVISOR_FUZZ_SECONDS:-15}" || fuzz_status=$?
if [ "$fuzz_status" -eq 2 ]; then
    echo "WARNING: no nightly toolchain: the fuzz targets were not run" >&2
elif [ "$fuzz_status" -ne 0 ]; then
    exit "$fuzz_status"
fi
