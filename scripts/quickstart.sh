#!/usr/bin/env bash
# Builds starttls-proxy and runs it on config/quickstart.toml: STARTTLS on
# 127.0.0.1:2525 with the demo certificates from certs.example/, messages
# stored by the built-in sink in var/mail/new/. Stop with Ctrl-C.
#
#   scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "quickstart.sh: ERROR: $*" >&2; exit 1; }
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.88)"
if ! command -v cc >/dev/null; then
  [ "$(id -u)" = 0 ] || die "no C compiler: run 'apt-get install gcc libc6-dev' as root"
  apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null || die "could not install gcc"
fi
cargo build --release --locked
# git checks the demo keys out world-readable (it keeps no modes but +x);
# the proxy warns about such keys, as it should for real ones.
chmod 600 certs.example/*/privkey.pem certs.example/*/*/privkey.pem
# The proxy runs as whoever runs this script. `run` refuses root (in
# production it runs as its own user, deploy/systemd/); for a trial on
# loopback as root the script says so and passes --allow-root.
allow=()
if [ "$(id -u)" = 0 ]; then
  echo "quickstart.sh: running as root: passing --allow-root (production runs as the starttls-proxy user)"
  allow=(--allow-root)
fi
echo "quickstart.sh: starting on 127.0.0.1:2525; try: swaks -s 127.0.0.1 -p 2525 --tls --to you@example.test"
exec target/release/starttls-proxy run "${allow[@]}" --config config/quickstart.toml
