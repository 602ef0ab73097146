#!/usr/bin/env bash
# postfix-sender.sh — a strict, real MTA as TLS client for starttls-proxy tests:
# a private Postfix instance in DIR relays ONE message to [127.0.0.1]:PORT with
# smtp_tls_security_level = secure, and reports what happened.
#
#   postfix-sender.sh send DIR PORT CAFILE MATCHNAME [SNI]
#   postfix-sender.sh stop DIR      only needed after an aborted/killed send
#
#   CAFILE     trust anchor(s) (smtp_tls_CAfile), e.g. certs.example/ca.pem
#   MATCHNAME  smtp_tls_secure_cert_match: the name the server certificate must
#              carry ('.example.test' = any subdomain; one-label wildcards in the
#              certificate are honoured)
#   SNI        smtp_tls_servername; no SNI is sent when omitted or empty
# Environment:
#   RCPT       recipient (default test@example.test)
#   PROTOCOLS  smtp_tls_mandatory_protocols (default '>=TLSv1.2'; '<=TLSv1.2'
#              forces TLS 1.2, '>=TLSv1.3' forces TLS 1.3)
#   TIMEOUT    seconds to wait for a delivery result (default 30)
# Exit codes:
#   0  status=sent AND "Verified TLS connection established" (both required)
#   1  deferred/bounced/not verified; the reason is printed on stderr and the
#      message is removed from the queue
#   2  no result within TIMEOUT
#   3  usage or setup error ("postfix-sender.sh: ERROR: ..."), never a verdict
# The instance is started for each send (with an empty queue) and stopped
# afterwards. Log: DIR/log/maillog.
set -euo pipefail
. "$(dirname "$0")/lib-postfix.sh"
# Setup errors exit 3 so that they can never be mistaken for a deferral (1).
die() { echo "$ME: ERROR: $*" >&2; exit 3; }
usage() { die "usage: postfix-sender.sh send DIR PORT CAFILE MATCHNAME [SNI] | stop DIR"; }

[ $# -ge 2 ] || usage
cmd=$1 dir=$(realpath -m -- "$2")
pf_need
case $cmd in
stop) [ $# -eq 2 ] || usage; pf_stop "$dir"; exit 0 ;;
send) [ $# -ge 5 ] && [ $# -le 6 ] || usage ;;
*) usage ;;
esac
port=$3 cafile=$4 match=$5 sni=${6:-}
rcpt=${RCPT:-test@example.test} timeout=${TIMEOUT:-30}
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "bad PORT '$port'"
[[ $timeout =~ ^[0-9]+$ ]] || die "bad TIMEOUT '$timeout' (whole seconds)"
[ -r "$cafile" ] || die "CA file '$cafile' not readable"
[ -n "$match" ] || die "MATCHNAME must not be empty"

pf_stop "$dir" >/dev/null
# A fresh queue for every send: a message left over from an aborted run must
# not be delivered along with this one.
rm -rf "$dir/spool"
pf_init "$dir" sender.example.test
postconf -c "$dir/etc" -e \
  "relayhost = [127.0.0.1]:$port" \
  "smtp_tls_CAfile = $(realpath "$cafile")" \
  "smtp_tls_secure_cert_match = $match" \
  "smtp_tls_servername = $sni" \
  "smtp_tls_mandatory_protocols = ${PROTOCOLS:->=TLSv1.2}" \
  smtp_tls_security_level=secure smtp_tls_loglevel=1 myorigin=sender.example.test \
  smtp_connect_timeout=5s smtp_helo_timeout=10s smtp_starttls_timeout=10s
: > "$dir/log/maillog"
pf_start "$dir"
trap 'pf_stop "$dir" >/dev/null || true' EXIT

msgid="sender-$(date +%s%N)@sender.example.test"
printf 'From: sender@sender.example.test\nTo: %s\nSubject: postfix-sender TLS check\nMessage-ID: <%s>\n\nsent by postfix-sender.sh\n' \
  "$rcpt" "$msgid" \
  | sendmail -C "$dir/etc" -f sender@sender.example.test "$rcpt" \
  || die "sendmail injection failed; see $dir/log/maillog"

log=$dir/log/maillog qid="" status=""
for _ in $(seq $((timeout * 10))); do
  [ -n "$qid" ] || qid=$(sed -n "s/.* \([0-9A-F]\{6,\}\): message-id=<$msgid>.*/\1/p" "$log" | head -n 1)
  if [ -n "$qid" ]; then
    status=$(grep -E " $qid: to=.* status=(sent|deferred|bounced)" "$log" | head -n 1 || true)
    [ -z "$status" ] || break
  fi
  sleep 0.1
done
if [ -z "$status" ]; then
  [ -z "$qid" ] || postsuper -c "$dir/etc" -d "$qid" >/dev/null 2>&1 || true
  echo "postfix-sender: TIMEOUT: no delivery result after ${timeout}s (qid=${qid:-none}); see $log" >&2
  exit 2
fi

# The smtp(8) process that handled it logged the TLS lines.
smtp=$(grep -o '/smtp\[[0-9]*\]' <<<"$status" || true)
if [ -n "$smtp" ]; then grep -F "$smtp" "$log" | grep -vF " $qid: " | sed 's/^.*\]: /  smtp: /' || true; fi
echo "  $(sed 's/^.*\]: //' <<<"$status")"
if grep -q 'status=sent' <<<"$status" && [ -n "$smtp" ] \
   && grep -F "$smtp" "$log" | grep -q 'Verified TLS connection established'; then
  echo "postfix-sender: DELIVERED over verified TLS to 127.0.0.1:$port (match=$match sni=${sni:-none})"
  exit 0
fi
postsuper -c "$dir/etc" -d "$qid" >/dev/null 2>&1 || true
# the certificate problem, if any (e.g. "untrusted issuer ...", "num=62:hostname mismatch")
detail=""
if [ -n "$smtp" ]; then
  detail=$(grep -F "$smtp" "$log" | grep -m 1 'verification failed' | sed "s/.*:$port: /; tls: /" || true)
fi
echo "postfix-sender: NOT DELIVERED to 127.0.0.1:$port (match=$match sni=${sni:-none}): $(sed -n 's/.*status=\(.*\)$/\1/p' <<<"$status")$detail" >&2
exit 1
