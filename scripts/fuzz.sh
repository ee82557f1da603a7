#!/usr/bin/env bash
# Fuzzes everything idlegate reads from outside (fuzz/fuzz_targets: the engine, the config
# parser, the importer's inputs, the echo/probe protocol, the tunnel's frames and handshake, the
# HTTP server's requests, the control socket's requests) with cargo-fuzz and libFuzzer, each
# target for SECONDS, one after another. Each run starts from the committed seeds in
# fuzz/corpus/TARGET and keeps what it finds in a scratch corpus, so the checkout stays clean.
# Prints a table: target, executions, result. A crash leaves its input in
# fuzz/artifacts/TARGET/ and makes the script fail.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, which it installs
# if missing. Without nightly it says so and exits 3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(engine config import echo_protocol tunnel_frame tunnel_handshake control http_request)
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: no nightly toolchain here (rustup toolchain install nightly); nothing fuzzed" >&2
    exit 3
fi
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build -O 2>&1 | tail -n 3
status=0
results=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    log=$scratch/$t.log
    if cargo +nightly fuzz run -O "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (input in fuzz/artifacts/$t/; log below)"
        status=1
        tail -n 40 "$log" >&2
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    results+=("$(printf '%-18s %12s  %s' "$t" "${runs:-?}" "$result")")
done
printf '%-18s %12s  %s\n' target executions "result (${secs} s each)"
printf '%s\n' "${results[@]}"
exit $status
