#!/usr/bin/env bash
# stunnel as a second reference TLS terminator in front of an SMTP backend.
#   stunnel.sh start DIR PORT BACKEND_PORT CERT KEY     stunnel.sh stop DIR
# MODE=starttls (default): 'protocol = smtp' in server mode. stunnel relays the
#   backend's 220 greeting, answers the client's first EHLO itself with only
#   "250 STARTTLS" (no other extensions), accepts STARTTLS, and after the
#   handshake everything (the client's second EHLO included) goes to the backend.
#   Plaintext MAIL before STARTTLS is impossible: this is a 'required TLS' peer.
# MODE=implicit: TLS from the first byte (port-465 style), no protocol option.
# Copied from the team's peer scripts for benches/compare.sh (issue #11).
# Files: DIR/stunnel.conf, DIR/stunnel.pid, DIR/stunnel.log
set -euo pipefail
die() { echo "stunnel.sh: ERROR: $*" >&2; exit 1; }
usage() { die "usage: stunnel.sh start DIR PORT BACKEND_PORT CERT KEY | stop DIR"; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$(realpath -m "$2")
command -v stunnel4 >/dev/null || die "stunnel4 not installed (run benches/install-bench-deps.sh)"

stop() {
  local pid; pid=$(tr -d ' ' 2>/dev/null < "$dir/stunnel.pid" || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "stunnel.sh: not running ($dir)"; return 0; fi
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { echo "stunnel.sh: stopped pid $pid"; return 0; }; sleep 0.1; done
  die "stunnel pid $pid did not exit"
}

case $cmd in
stop) stop; exit 0 ;;
start) [ $# -eq 6 ] || usage ;;
*) usage ;;
esac
port=$3 bport=$4 mode=${MODE:-starttls}
cert=$(realpath "$5") key=$(realpath "$6")
[ -r "$cert" ] && [ -r "$key" ] || die "CERT/KEY not readable"
case $mode in starttls) proto="protocol = smtp" ;; implicit) proto="" ;; *) die "MODE must be starttls or implicit" ;; esac
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
stop >/dev/null
ss -Hltn "sport = :$port" | grep -q . && die "127.0.0.1:$port already in use"
rm -f "$dir/stunnel.pid"
cat > "$dir/stunnel.conf" <<EOF
foreground = no
pid = $dir/stunnel.pid
output = $dir/stunnel.log
debug = notice
[smtp]
client = no
accept = 127.0.0.1:$port
connect = 127.0.0.1:$bport
cert = $cert
key = $key
sslVersionMin = TLSv1.2
$proto
EOF
stunnel4 "$dir/stunnel.conf" || die "stunnel failed to start; see $dir/stunnel.log"
for _ in $(seq 50); do ss -Hltn "sport = :$port" | grep -q . && [ -s "$dir/stunnel.pid" ] && break; sleep 0.1; done
ss -Hltn "sport = :$port" | grep -q . || die "stunnel not listening on $port; see $dir/stunnel.log"
echo "stunnel: 127.0.0.1:$port -> 127.0.0.1:$bport mode=$mode pid=$(tr -d ' ' < "$dir/stunnel.pid") log=$dir/stunnel.log"
