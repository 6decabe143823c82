#!/usr/bin/env bash
# Runs `kubervisor demo`: installs Prometheus (and kubectl, to poke around with --keep)
# when missing, builds the operator and plays the scenario. Arguments go to the demo,
# e.g. `bash scripts/demo.sh --no-tui` or `bash scripts/demo.sh --keep`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --quiet --locked -p kubervisor
exec target/debug/kubervisor demo "$@"
