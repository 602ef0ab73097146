#!/usr/bin/env bash
# install-bench-deps.sh — what benches/compare.sh needs on top of the test
# dependencies, on Debian 12 (bookworm). Run as root:
#
#   benches/install-bench-deps.sh
#
# Runs scripts/install-test-deps.sh first (postfix, whose smtp-sink is the
# common backend, openssl, procps...), then installs, --no-install-recommends:
#   nginx libnginx-mod-mail   nginx's mail proxy (a reference peer)
#   stunnel4                  stunnel's SMTP STARTTLS server side (a reference peer)
#   util-linux                taskset (pins servers and load generator to cores)
#   linux-perf                perf, for the flame graphs in docs/benchmarks.md (optional)
#   valgrind                  callgrind instruction counts (optional)
# Kept apart from install-test-deps.sh so that CI's test command does not pay
# for nginx. Maintainer scripts may not start nginx (policy-rc.d while
# installing); a system nginx that runs anyway is stopped afterwards.
# Idempotent: ~0.1 s when everything is there.
set -euo pipefail

ME=install-bench-deps.sh
die() { echo "$ME: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"
cd "$(dirname "$0")/.."

# The test dependencies, and the peers: one apt step, the same care not to
# start services while installing.
EXTRA_PACKAGES="nginx libnginx-mod-mail stunnel4 util-linux linux-perf valgrind" \
  scripts/install-test-deps.sh

# The system nginx must not hold :80; compare.sh runs private instances only.
if [ -d /run/systemd/system ]; then
  systemctl disable --now nginx stunnel4 >/dev/null 2>&1 || true
elif [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
  nginx -s quit || true
fi

[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || die "nginx mail module missing (libnginx-mod-mail)"
for c in nginx stunnel4 taskset smtp-sink openssl; do
  command -v "$c" >/dev/null 2>&1 || die "command '$c' not found after install"
done
printf '%s: ready: nginx %s, %s, %s\n' "$ME" \
  "$(dpkg-query -W -f='${Version}' nginx)" \
  "$(stunnel4 -version 2>&1 | awk '/^stunnel/{print $1" "$2; exit}')" \
  "$(openssl version | cut -d' ' -f1-2)"
