#!/usr/bin/env bash
# exim-sender.sh — a strict, real Exim as TLS client for starttls-proxy tests:
# a private Exim (the one scripts/install-test-deps.sh extracted from Debian's
# exim4-daemon-light, as for exim-backend.sh) queues ONE message for
# example.test and runs its queue once; the router and transport are the
# recipe given in EXIM_SENDER (deploy/exim/sender.conf with the MX port, the
# CA file and maybe the MX name changed), which sends to MXNAME:PORT with
# hosts_require_tls, tls_verify_hosts and tls_verify_cert_hostnames.
#
#   exim-sender.sh send DIR MXNAME
#
#   MXNAME  the MX name of the recipe's route_list; it resolves to 127.0.0.1
#           for this Exim only: the queue run runs in a private mount
#           namespace (unshare -m) whose /etc/hosts is DIR/hosts. The name is
#           what Exim checks the certificate against (tls_verify_cert_hostnames)
#           and, with the recipe's tls_sni = $host, the SNI it sends.
# Environment:
#   EXIM_SENDER=text  the recipe: "begin routers", its router, "begin
#                     transports", its transport (required)
# Exit codes:
#   0  delivered ("=>" line) over TLS with the certificate verified (CV=yes)
#   1  not delivered: deferred (the message stays queued: "queued: 1"), or
#      delivered without CV=yes; the log lines say why
#   2  no delivery result in the log after the queue run
#   3  usage or setup error ("exim-sender.sh: ERROR: ..."), never a verdict
# What happened is printed: the log lines of the message, then "queued: N".
# The sender's own main section sets local_interfaces = 127.0.0.9 so that
# 127.0.0.1 is not "the local host" to it (Exim would refuse to send to
# itself: router option self = freeze); the sender runs no daemon.
# Log: DIR/log/mainlog.
set -euo pipefail
ME=exim-sender.sh
# Setup errors exit 3 so that they can never be mistaken for a deferral (1).
die() { echo "$ME: ERROR: $*" >&2; exit 3; }
. "$(dirname "$0")/lib-exim.sh"
ex_need
command -v unshare >/dev/null || die "unshare (util-linux) missing"
[ "$(id -u)" = 0 ] || die "must run as root (unshare -m, and Exim's queue run)"
[ $# -eq 3 ] && [ "$1" = send ] || die "usage: $ME send DIR MXNAME"
dir=$(realpath -m -- "$2") mx=$3
[[ $mx =~ ^[a-z0-9.-]+$ ]] || die "bad MXNAME '$mx'"
[ -n "${EXIM_SENDER:-}" ] || die "EXIM_SENDER (the recipe) is empty"
grep -q "^begin routers$" <<< "$EXIM_SENDER" || die "EXIM_SENDER has no 'begin routers'"
grep -q "^begin transports$" <<< "$EXIM_SENDER" || die "EXIM_SENDER has no 'begin transports'"

rm -rf "$dir"
mkdir -p "$dir/spool" "$dir/log"
chown -R Debian-exim "$dir/spool" "$dir/log"
chmod 755 "$dir"
printf '127.0.0.1\tlocalhost\n127.0.0.1\t%s\n' "$mx" > "$dir/hosts"
cat > "$dir/exim.conf" <<CONF
exim_path = $EXIM
keep_environment = LD_LIBRARY_PATH
primary_hostname = sender.example.test
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
local_interfaces = 127.0.0.9
log_selector = +tls_peerdn +tls_certificate_verified
${EXIM_SENDER}
# Retry after a minute: the test's one queue run is the only attempt.
begin retry
* * F,1d,1m
CONF
"$EXIM" -C "$dir/exim.conf" -bV >/dev/null 2>"$dir/bV.err" \
  || die "the config does not parse: $(cat "$dir/bV.err")"

msgid="exim-sender-$(date +%s%N)@sender.example.test"
printf 'From: sender@sender.example.test\nTo: rcpt@example.test\nSubject: exim-sender TLS check %s\nMessage-ID: <%s>\n\nsent by exim-sender.sh\n' \
  "$msgid" "$msgid" \
  | "$EXIM" -C "$dir/exim.conf" -odq -f sender@sender.example.test rcpt@example.test \
  || die "exim -odq injection failed; see $dir/log/mainlog"
log=$dir/log/mainlog
id=$(sed -n "s/.* \([0-9A-Za-z]\{6\}-[0-9A-Za-z]\{6\}-[0-9A-Za-z]\{2\}\) <= .*id=$msgid.*/\1/p" "$log" | head -n 1)
[ -n "$id" ] || die "no <= line for message-id $msgid in $log"

# One queue run (Exim waits for its delivery process), with MXNAME -> 127.0.0.1.
unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' \
  sh "$dir/hosts" "$EXIM" -C "$dir/exim.conf" -qf \
  || die "the queue run failed; see $log"

grep -F " $id " "$log" | sed 's/^/  /'
queued=$("$EXIM" -C "$dir/exim.conf" -bpc)
echo "  queued: $queued"
if grep -F " $id => " "$log" | grep -q ' CV=yes'; then
  echo "exim-sender: DELIVERED to $mx over verified TLS"
  exit 0
fi
if grep -qF " $id == " "$log" || grep -qF " $id => " "$log" || grep -qF " $id ** " "$log"; then
  echo "exim-sender: NOT DELIVERED to $mx over verified TLS (queued: $queued)" >&2
  exit 1
fi
echo "exim-sender: no delivery result for $id; see $log" >&2
exit 2
