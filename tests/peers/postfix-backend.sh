#!/usr/bin/env bash
# postfix-backend.sh — a private Postfix "backend MTA" for starttls-proxy tests:
# smtpd on 127.0.0.1:PORT that accepts mail for ANY domain and delivers it
# into one Maildir under DIR.
#
#   postfix-backend.sh start DIR PORT   (re)start; a running instance in DIR is restarted
#   postfix-backend.sh stop DIR         stop (exit 0 also when not running)
#
# Environment (start):
#   PROXY=1               smtpd_upstream_proxy_protocol = haproxy (PROXY v1/v2 required
#                         on every connection; without one: 421 after ~5 s)
#   TLS_CERT=f TLS_KEY=k  also offer STARTTLS with this chain (leaf first) and key
#   DISCARD=1             accept and queue, but discard instead of writing Maildir files
#   PROCS=N               default_process_limit (default 100)
#   TRANSCRIPT=1          log every command smtpd reads from loopback clients
#                         ("< localhost[127.0.0.1]: MAIL FROM:<…>", debug_peer_list):
#                         what the backend saw, for tests that assert it saw nothing
#   XCLIENT_HOSTS=list    smtpd_authorized_xclient_hosts (default 127.0.0.0/8)
#   FORBID_BARE_NEWLINE=yes|no
#                         smtpd_forbid_bare_newline (Postfix >= 3.5.23/3.6.13/3.7.9/3.8.4,
#                         the SMTP smuggling fix) with no exclusions, so loopback clients
#                         are held to it too (the default exclusion is $mynetworks);
#                         unset: Postfix's default (no)
#   POSTCONF=lines        more main.cf settings, one "name = value" a line, applied last
#                         with postconf -e (e.g. the TLS protocols a test needs)
#   MASTER_CF=entry       the smtpd service entry of master.cf instead of the default
#                         line (first line "127.0.0.1:PORT inet ...", then "-o" lines);
#                         PROXY is then ignored: the entry says what it wants
#                         (tests/postfix_recipes.rs passes deploy/postfix/'s snippets)
#
# Delivery: one file per recipient in DIR/maildir/new/, starting with
# Return-Path:, X-Original-To:, Delivered-To: <recipient>, then the backend's
# Received: header (shows the client identity the backend believed, e.g. as set
# by XCLIENT or a PROXY header). Delivery is asynchronous: poll for the file.
# XCLIENT and XFORWARD are allowed from 127.0.0.0/8. Log: DIR/log/maillog.
# Exit 0 on success; 1 with "postfix-backend.sh: ERROR: ..." otherwise.
set -euo pipefail
. "$(dirname "$0")/lib-postfix.sh"
usage() { die "usage: postfix-backend.sh start DIR PORT | stop DIR"; }

[ $# -ge 2 ] || usage
cmd=$1 dir=$(realpath -m -- "$2")
pf_need

case $cmd in
stop)
  [ $# -eq 2 ] || usage
  pf_stop "$dir"
  ;;
start)
  [ $# -eq 3 ] || usage
  port=$3
  [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "bad PORT '$port'"
  case ${FORBID_BARE_NEWLINE:-} in
    ""|yes|no) ;;
    *) die "FORBID_BARE_NEWLINE must be yes or no, got '$FORBID_BARE_NEWLINE'" ;;
  esac
  if [ -n "${FORBID_BARE_NEWLINE:-}" ]; then
    postconf -d smtpd_forbid_bare_newline >/dev/null 2>&1 \
      || die "this Postfix ($(postconf -d -h mail_version)) has no smtpd_forbid_bare_newline (needs >= 3.5.23, 3.6.13, 3.7.9 or 3.8.4)"
  fi
  if [ -n "${TLS_CERT:-}" ] || [ -n "${TLS_KEY:-}" ]; then
    [ -r "${TLS_CERT:-}" ] && [ -r "${TLS_KEY:-}" ] || die "TLS_CERT and TLS_KEY must both be readable files"
  fi
  pf_stop "$dir" >/dev/null
  pf_listening "$port" && die "port $port is already in use: $(ss -Hltnp "sport = :$port" | head -1)"
  pf_init "$dir" backend.example.test
  mkdir -p "$dir/maildir"
  chown nobody:nogroup "$dir/maildir"
  cat >> "$dir/etc/main.cf" <<EOF
smtpd_banner = \$myhostname ESMTP backend
virtual_mailbox_domains = static:all
virtual_mailbox_maps = static:maildir/
virtual_mailbox_base = $dir
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
virtual_transport = virtual
smtpd_authorized_xclient_hosts = ${XCLIENT_HOSTS:-127.0.0.0/8}
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = ${PROCS:-100}
EOF
  if [ -n "${FORBID_BARE_NEWLINE:-}" ]; then
    postconf -c "$dir/etc" -e "smtpd_forbid_bare_newline = $FORBID_BARE_NEWLINE" \
      "smtpd_forbid_bare_newline_exclusions ="
  fi
  if [ "${TRANSCRIPT:-}" = 1 ]; then
    postconf -c "$dir/etc" -e "debug_peer_list = 127.0.0.0/8" "debug_peer_level = 2"
  fi
  if [ "${DISCARD:-}" = 1 ]; then postconf -c "$dir/etc" -e virtual_transport=discard; fi
  if [ -n "${TLS_CERT:-}" ]; then
    postconf -c "$dir/etc" -e \
      "smtpd_tls_chain_files = $(realpath "$TLS_KEY"), $(realpath "$TLS_CERT")" \
      smtpd_tls_security_level=may smtpd_tls_loglevel=1 smtpd_tls_received_header=yes
  fi
  if [ -n "${POSTCONF:-}" ]; then
    while IFS= read -r setting; do
      [ -n "$setting" ] || continue
      postconf -c "$dir/etc" -e "$setting" || die "POSTCONF: postconf -e '$setting' failed"
    done <<< "$POSTCONF"
  fi
  tls=off; [ -z "${TLS_CERT:-}" ] || tls=on
  proxy=""
  if [ "${PROXY:-}" = 1 ]; then proxy="-o smtpd_upstream_proxy_protocol=haproxy"; fi
  if [ -n "${MASTER_CF:-}" ]; then
    case $MASTER_CF in
      "127.0.0.1:$port "*) ;;
      *) die "MASTER_CF must start with '127.0.0.1:$port ', got: ${MASTER_CF%%$'\n'*}" ;;
    esac
    printf '%s\n' "$MASTER_CF" >> "$dir/etc/master.cf"
  else
    echo "127.0.0.1:$port inet n - n - - smtpd $proxy" >> "$dir/etc/master.cf"
  fi
  pf_start "$dir"
  for _ in $(seq 50); do pf_listening "$port" && break; sleep 0.1; done
  pf_listening "$port" || die "smtpd not listening on 127.0.0.1:$port; see $dir/log/maillog"
  echo "postfix-backend: started 127.0.0.1:$port pid=$(pf_pid "$dir") proxy=${PROXY:-0}" \
       "tls=$tls discard=${DISCARD:-0} forbid_bare_newline=${FORBID_BARE_NEWLINE:-default}" \
       "maildir=$dir/maildir/new log=$dir/log/maillog"
  ;;
*) usage ;;
esac
