#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo fuzz, libFuzzer), each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    default: 30 s each, every target
#
# Needs a nightly toolchain (rustup toolchain install nightly) and cargo-fuzz, which it
# installs from crates.io when missing. Each target starts from its committed seeds
# (fuzz/seeds/TARGET) and the corpus of earlier runs (fuzz/corpus/TARGET, kept). The
# instrumented build lives outside the work tree (~/.cache/kubervisor/fuzz-target), so a
# second run does not rebuild. Prints, per target, the executions and the coverage
# libFuzzer reached; exits non-zero on the first crash, leaving its input in
# fuzz/artifacts/TARGET (turn it into a regression test, then fix the bug).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
targets=("$@")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly): fuzzing SKIPPED" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

# KUBERVISOR_FUZZ_BUILD=release (the default): optimised, with debug assertions (overflow
# checks) and AddressSanitizer, for long runs. =dev: unoptimised, same checks; it runs
# several times slower but builds in a fraction of the time, which suits a short smoke run
# after every change (scripts/test.sh). Each has its own cached target directory.
cache=${KUBERVISOR_FUZZ_TARGET_DIR:-$HOME/.cache/kubervisor/fuzz-target}
case "${KUBERVISOR_FUZZ_BUILD:-release}" in
    release) flags=(--fuzz-dir fuzz -O -a --target-dir "$cache") ;;
    dev) flags=(--fuzz-dir fuzz --dev -a --target-dir "$cache-dev") ;;
    *)
        echo "fuzz.sh: KUBERVISOR_FUZZ_BUILD must be release or dev" >&2
        exit 64
        ;;
esac
cargo +nightly fuzz build "${flags[@]}"

status=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    log=$(mktemp)
    if cargo +nightly fuzz run "${flags[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    echo "fuzz $target: $result after ${seconds}s, $runs executions, coverage $cov edges, corpus $(ls "$corpus" | wc -l) inputs"
    if [ "$result" = CRASH ]; then
        tail -40 "$log" >&2
        rm -f "$log"
        break
    fi
    rm -f "$log"
done
exit "$status"
