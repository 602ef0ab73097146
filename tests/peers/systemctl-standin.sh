#!/usr/bin/env bash
# systemctl-standin.sh — what `systemctl` does for one simple unit, on a
# machine without systemd (CI containers, the overlay root of
# tests/newcomer.rs). Installed as `systemctl` first in PATH by that test
# only, never on a real host. It reads the unit file the package installed
# and does what systemd would for the lines it understands:
#
#   enable --now UNIT | start UNIT   ExecStartPre (must succeed), then
#                                    ExecStart as User=/Group= with
#                                    AmbientCapabilities= (setpriv), in
#                                    WorkingDirectory=, after creating
#                                    StateDirectory=; stdout and stderr go to
#                                    /var/log/UNIT.log (the journal's stand-in)
#   reload UNIT                      ExecReload's signal: kill -HUP
#   stop UNIT                        KillSignal=SIGTERM
#   is-active UNIT                   0 when the process runs
#
# systemd's sandboxing lines (ProtectSystem=, SystemCallFilter=, ...) are
# not applied: tests/systemd_unit.rs checks those with systemd-analyze.
# Anything else is refused loudly.
set -euo pipefail
ME=systemctl-standin
die() { echo "$ME: ERROR: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: systemctl (enable --now|start|reload|stop|is-active) UNIT"
verb=$1; shift
if [ "$verb" = enable ]; then
  [ "${1:-}" = --now ] || die "only 'enable --now' is supported"
  shift; verb=start
fi
unit=${1%.service}
file=/usr/lib/systemd/system/$unit.service
[ -f "$file" ] || file=/lib/systemd/system/$unit.service
[ -f "$file" ] || die "no unit file for $unit"
pidfile=/run/$unit.standin.pid
log=/var/log/$unit.log

# The value of KEY= in [Service] (the last one wins, as in systemd).
key() { sed -n "/^\[Service\]/,/^\[/{s/^$1=//p}" "$file" | tail -n 1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case $verb in
start)
  running && exit 0
  user=$(key User) group=$(key Group) caps=$(key AmbientCapabilities)
  [ -n "$user" ] || die "$file has no User="
  state=$(key StateDirectory)
  if [ -n "$state" ]; then
    install -d -o "$user" -g "${group:-$user}" -m 0755 "/var/lib/$state"
  fi
  pre=$(key ExecStartPre)
  if [ -n "$pre" ]; then
    # shellcheck disable=SC2086 # the unit's command line, split as systemd does for plain words
    setpriv --reuid="$user" --regid="${group:-$user}" --init-groups -- $pre >>"$log" 2>&1 \
      || die "ExecStartPre failed ($pre): $(tail -n 5 "$log")"
  fi
  capargs=()
  if [ -n "$caps" ]; then
    list=$(tr ' ' '\n' <<<"$caps" | sed 's/^CAP_//' | tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd,)
    capargs=(--inh-caps="$list" --ambient-caps="$list")
  fi
  wd=$(key WorkingDirectory)
  cd "${wd:-/}"
  # shellcheck disable=SC2046
  setsid setpriv --reuid="$user" --regid="${group:-$user}" --init-groups "${capargs[@]}" \
    -- $(key ExecStart) >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  ;;
reload) running || die "$unit is not running"; kill -HUP "$(cat "$pidfile")" ;;
stop) if running; then kill -TERM "$(cat "$pidfile")"; fi; rm -f "$pidfile" ;;
is-active) running ;;
*) die "verb $verb is not supported" ;;
esac
