# lib-postfix.sh — helpers for private Postfix instances used by the
# starttls-proxy tests. Sourced by postfix-backend.sh and postfix-sender.sh,
# never run directly.
#
# An instance lives entirely in one directory DIR, never in /etc or /var:
#   DIR/etc/{main.cf,master.cf}   config (postfix -c DIR/etc)
#   DIR/spool/                    queue_directory (pid: DIR/spool/pid/master.pid)
#   DIR/data/                     data_directory
#   DIR/log/maillog               log (maillog_file via postlogd; no syslog needed)
#
# Quirks handled here (all found the hard way):
# - Postfix daemons run as 'postfix' and virtual(8) delivers as 'nobody'; they
#   open absolute paths under DIR, so DIR and all its parents must be
#   world-searchable (mktemp -d makes 0700): DIR is chmod 755 and reachability
#   is checked as both users.
# - `postfix -c` with a relative path silently misbehaves: DIR is made absolute.
# - Debian's master.cf runs services chrooted in /var/spool/postfix; a private
#   queue directory has no chroot files, so we write our own master.cf with
#   chroot off everywhere, plus the postlog service that maillog_file needs.
# - inet_protocols = all even on an IPv4 listener: otherwise a PROXY header or
#   XCLIENT carrying an IPv6 client fails ("IPv6 support is disabled").
# - No DNS: smtp_dns_support_level = disabled, smtpd_peername_lookup = no.
# - smtpd_error_sleep_time = 0 so rejected commands do not slow tests down.
# - Unix sockets live in DIR/spool/{private,public}: DIR must be short enough
#   for the 108-byte sun_path limit.

ME=$(basename "$0")
die() { echo "$ME: ERROR: $*" >&2; exit 1; }

# pf_need: preconditions common to every command.
pf_need() {
  [ "$(id -u)" = 0 ] || die "must run as root (the postfix master needs it)"
  command -v postfix >/dev/null 2>&1 || die "postfix not installed (run scripts/install-test-deps.sh)"
  command -v postconf >/dev/null 2>&1 || die "postconf not found (run scripts/install-test-deps.sh)"
  command -v ss >/dev/null 2>&1 || die "ss not found (install iproute2)"
  [ -x /usr/lib/postfix/sbin/postlogd ] || die "postfix >= 3.4 (postlogd) required"
}

pf_running() { postfix -c "$1/etc" status >/dev/null 2>&1; }
pf_pid() { tr -d ' \n' 2>/dev/null < "$1/spool/pid/master.pid" || true; }
pf_listening() { ss -Hltn "sport = :$1" | grep -q .; }

# pf_init DIR MYHOSTNAME: write a fresh base config (no listeners yet).
# DIR must already be absolute.
pf_init() {
  local d=$1 host=$2 sock
  case $d in /*) ;; *) die "internal: pf_init needs an absolute DIR, got '$d'" ;; esac
  sock="$d/spool/private/proxywrite"   # the longest socket name we create
  [ "${#sock}" -le 107 ] || die "DIR '$d' is too long (max 82 characters): postfix's unix sockets such as $sock would exceed the 108-byte sun_path limit; use a shorter path"
  mkdir -p "$d"/{etc,spool,data,log}
  chmod 755 "$d" "$d/etc" "$d/log"
  chown postfix "$d/data"
  runuser -u postfix -- test -x "$d/data" \
    || die "$d is not reachable by user 'postfix': a parent directory is not world-searchable (mktemp -d makes 0700 dirs; chmod o+x the parents)"
  runuser -u nobody -- test -x "$d" \
    || die "$d is not reachable by user 'nobody' (virtual delivery): a parent directory is not world-searchable"
  cat > "$d/etc/master.cf" <<'EOF'
# private instance: every service unchrooted (no chroot files in our queue dir)
# service type  private unpriv chroot wakeup maxproc command
pickup    unix  n  -  n  60    1  pickup
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
tlsmgr    unix  -  -  n  1000? 1  tlsmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000? 0  flush
proxymap  unix  -  -  n  -     -  proxymap
proxywrite unix -  -  n  -     1  proxymap
smtp      unix  -  -  n  -     -  smtp
relay     unix  -  -  n  -     -  smtp
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
virtual   unix  -  n  n  -     -  virtual
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n - n - 1 postlogd
EOF
  cat > "$d/etc/main.cf" <<EOF
# private postfix instance written by $ME; do not edit (regenerated on start)
compatibility_level = 3.6
queue_directory = $d/spool
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = $host
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = all
mynetworks = 127.0.0.0/8
maillog_file = $d/log/maillog
maillog_file_prefixes = $d
syslog_name = postfix-$(basename "$d")
alias_maps =
alias_database =
biff = no
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0
message_size_limit = 104857600
virtual_mailbox_limit = 0
EOF
}

# pf_start DIR: start the master and wait until it reports running.
pf_start() {
  local d=$1 out
  # 'postfix start' runs 'postfix check', which creates the queue tree.
  if ! out=$(postfix -c "$d/etc" start 2>&1); then
    [ -z "$out" ] || echo "$out" >&2
    tail -n 20 "$d/log/maillog" >&2 2>/dev/null || true
    # Errors before postlogd runs go to syslog only (lost without /dev/log);
    # postfix(1) prints them on stderr only when that is a terminal, so give it one.
    if command -v script >/dev/null 2>&1; then
      script -qec "postfix -c $(printf %q "$d/etc") check" /dev/null 2>&1 | tr -d '\r' >&2 || true
    fi
    die "postfix start failed; see $d/log/maillog"
  fi
  for _ in $(seq 50); do pf_running "$d" && return 0; sleep 0.1; done
  die "postfix master did not come up; see $d/log/maillog"
}

# pf_stop DIR: stop the instance if it runs; prints what it did.
pf_stop() {
  local d=$1 pid
  if [ ! -f "$d/etc/main.cf" ] || ! pf_running "$d"; then
    echo "$ME: not running ($d)"; return 0
  fi
  pid=$(pf_pid "$d")
  postfix -c "$d/etc" stop >/dev/null 2>&1 || true
  for _ in $(seq 100); do
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "$ME: stopped pid ${pid:-?} ($d)"; return 0
    fi
    sleep 0.1
  done
  die "postfix master pid $pid did not exit ($d)"
}
