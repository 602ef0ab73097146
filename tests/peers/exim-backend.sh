#!/usr/bin/env bash
# exim-backend.sh — a private Exim "backend MTA" for starttls-proxy tests, run
# from the Exim that scripts/install-test-deps.sh extracted from Debian's
# exim4-daemon-light (Debian's exim4 conflicts with postfix, so it is never
# installed): a daemon on 127.0.0.1:PORT with a private -C config that
# delivers mail for example.test into DIR/maildir/new and relays nothing
# else (unless relay_from_hosts lets it).
#
#   exim-backend.sh start DIR PORT   start (a running instance in DIR is stopped first)
#   exim-backend.sh deliver DIR      run the queue once, as root (the tests poll with it)
#   exim-backend.sh stop DIR
#
# Environment (start):
#   EXIM_MAIN=lines   main-section lines (e.g. deploy/exim/backend.conf with the
#                     port changed); they must set daemon_smtp_ports = PORT
# Quirks: the extracted binary needs LD_LIBRARY_PATH for libidn12 and
# exim_path for its re-execs (keep_environment keeps the variable). The
# daemon receives, but its own deliveries run re-executed as Debian-exim,
# and Exim drops privilege for a -C config not listed in
# /etc/exim4/trusted_configs (which we leave alone): so the daemon only
# queues, and `deliver` runs the queue as root. Log: DIR/log/mainlog.
set -euo pipefail
ME=exim-backend.sh
die() { echo "$ME: ERROR: $*" >&2; exit 1; }
. "$(dirname "$0")/lib-exim.sh"
ex_need
[ $# -ge 2 ] || die "usage: $ME start DIR PORT | stop DIR"
cmd=$1 dir=$(realpath -m -- "$2")

stop() {
  if [ -f "$dir/exim.pid" ]; then
    kill "$(cat "$dir/exim.pid")" 2>/dev/null || true
    rm -f "$dir/exim.pid"
  fi
}

case $cmd in
stop) stop ;;
deliver) "$EXIM" -C "$dir/exim.conf" -qf ;;
start)
  [ $# -eq 3 ] || die "usage: $ME start DIR PORT"
  port=$3
  stop
  rm -rf "$dir"
  mkdir -p "$dir/spool" "$dir/log" "$dir/maildir"
  chown -R Debian-exim "$dir/spool" "$dir/log"
  chown nobody:nogroup "$dir/maildir"
  chmod 755 "$dir"
  grep -q "^daemon_smtp_ports = $port\$" <<< "${EXIM_MAIN:-}" \
    || die "EXIM_MAIN must set daemon_smtp_ports = $port"
  cat > "$dir/exim.conf" <<CONF
exim_path = $EXIM
keep_environment = LD_LIBRARY_PATH
primary_hostname = exim.backend.test
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
pid_file_path = $dir/exim.pid
domainlist local_domains = example.test
acl_smtp_rcpt = acl_check_rcpt
${EXIM_MAIN:-}

begin acl
# As Debian's default ACL: relay_from_hosts may relay, others only to local domains.
acl_check_rcpt:
  accept hosts = +relay_from_hosts
  accept domains = +local_domains
  deny message = relay not permitted

begin routers
local:
  driver = accept
  domains = +local_domains
  transport = maildir
# Anything else that was accepted: kept on the queue (no outbound mail here).
elsewhere:
  driver = redirect
  data = :blackhole:

begin transports
maildir:
  driver = appendfile
  directory = $dir/maildir
  maildir_format
  user = nobody
  group = nogroup
  create_directory
CONF
  "$EXIM" -C "$dir/exim.conf" -bd
  for _ in $(seq 50); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
  ss -Hltn "sport = :$port" | grep -q . || die "exim not listening on $port; see $dir/log/"
  echo "exim-backend: started 127.0.0.1:$port maildir=$dir/maildir/new log=$dir/log/mainlog"
  ;;
*) die "usage: $ME start DIR PORT | stop DIR" ;;
esac
