#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (SMTP codec, commands, backend
# replies, pre-TLS dialogue, DATA scanner), one after the other, each for a
# bounded time:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#   scripts/fuzz.sh 60 smtp_reply data_scanner   (only these targets)
#
# NOT run in CI: it needs a nightly toolchain and is too slow for a 2-core
# runner (five targets x SECONDS plus a first build of a few minutes). Run it
# by hand before a release or after touching src/smtp/.
#
# Each target runs as one libFuzzer process on one core (no -jobs/-workers
# fan-out). Seeds come from fuzz/corpus/<target>/ (committed, read only);
# what libFuzzer adds goes to fuzz/work-corpus/<target>/ (ignored by git, kept
# between runs). A crash, a timeout or an out-of-memory leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit 1 after the remaining
# targets have run. Reproduce one with
#   cargo +nightly fuzz run -s none <target> fuzz/artifacts/<target>/<file>
#
# Environment: FUZZ_SANITIZER (default "none": the code under test is safe
# Rust, and debug assertions stay on; "address" for ASan), CARGO_BUILD_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "fuzz.sh: ERROR: $*" >&2; exit 2; }

secs=${1:-60}
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || die "SECONDS_PER_TARGET must be a positive integer, got '$secs'"
shift $(( $# > 0 ? 1 : 0 ))
sanitizer=${FUZZ_SANITIZER:-none}

command -v cargo >/dev/null || die "cargo not found: install rustup and a toolchain"
cargo +nightly --version >/dev/null 2>&1 \
    || die "no nightly toolchain (cargo-fuzz needs one): rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || die "could not install cargo-fuzz"
fi

if (( $# > 0 )); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
(( ${#targets[@]} > 0 )) || die "no fuzz targets found in fuzz/"

echo "== building ${#targets[@]} targets (sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "fuzz/work-corpus/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    # The first corpus directory is where libFuzzer writes new inputs.
    if ! cargo +nightly fuzz run -s "$sanitizer" "$t" \
        "fuzz/work-corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
        echo "== $t: FAILED (input in fuzz/artifacts/$t/)" >&2
    fi
done

if (( ${#failed[@]} > 0 )); then
    echo "fuzz.sh: ${#failed[@]} target(s) found a problem: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${secs}s without a finding"
