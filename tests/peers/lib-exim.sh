# lib-exim.sh — the Exim of the starttls-proxy tests: Debian's
# exim4-daemon-light, extracted (never installed: Debian's exim4 conflicts
# with postfix) into /usr/local/lib/starttls-proxy-exim by
# scripts/install-test-deps.sh. Sourced by exim-backend.sh and
# exim-sender.sh (after they define die), never run directly.
#
# Quirks: the extracted binary needs LD_LIBRARY_PATH for libidn12, and a
# private -C config needs exim_path for Exim's re-execs and
# keep_environment = LD_LIBRARY_PATH so that they find the library too.
ROOT=/usr/local/lib/starttls-proxy-exim
EXIM=$ROOT/usr/sbin/exim4
export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu

# ex_need: the extracted Exim and its compiled-in user are there.
ex_need() {
  [ -x "$EXIM" ] || die "$EXIM missing: run scripts/install-test-deps.sh"
  getent passwd Debian-exim >/dev/null || die "user Debian-exim missing: run scripts/install-test-deps.sh"
}
