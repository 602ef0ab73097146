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

scripts/install-test-deps.sh

PKGS=(nginx libnginx-mod-mail stunnel4 util-linux linux-perf valgrind)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

added_policy=0
cleanup() { if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

if [ "${#missing[@]}" -gt 0 ]; then
  echo "$ME: installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from %s: do not start services during install\nexit 101\n' "$ME" \
      > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    echo "$ME: apt-get install failed: running apt-get update and retrying"
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || die "apt-get install failed for: ${missing[*]}"
  fi
  cleanup; added_policy=0
else
  echo "$ME: all packages already installed"
fi

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
