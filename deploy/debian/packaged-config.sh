#!/bin/sh
# packaged-config.sh — prints the config the Debian package ships as the
# conffile /etc/starttls-proxy/starttls-proxy.toml: config/production.example.toml
# with three changes, so that installing the package next to a running MTA
# collides with nothing and `starttls-proxy check` passes at once:
#   - the listeners on 127.0.0.1:2525 and 127.0.0.1:2587 instead of [::]:25
#     and [::]:587 (edit them back when the proxy takes over the ports);
#   - chain_check = "dane-ee" on each certificate, because postinst puts a
#     self-signed placeholder at each certificate path that has none (remove
#     the line when you install a CA-issued chain);
#   - a header that says so.
# The committed deploy/debian/starttls-proxy.toml is its output;
# tests/deb_package.rs fails when they differ. Regenerate with
#   deploy/debian/packaged-config.sh > deploy/debian/starttls-proxy.toml
set -eu
cd "$(dirname "$0")/../.."
cat <<'HEADER'
# Installed by the Debian package starttls-proxy. Until you edit it, the
# proxy listens on 127.0.0.1:2525 and 127.0.0.1:2587 only (no collision
# with an MTA on 25 and 587), and serves self-signed placeholder
# certificates that postinst created (chain_check = "dane-ee" below).
# To go live (docs/operations.md): put your certificates at the paths
# below, remove the chain_check lines, set hostname and the listeners to
# "[::]:25" and "[::]:587", set up Postfix (deploy/postfix/), then
#   starttls-proxy check && systemctl enable --now starttls-proxy
#
HEADER
sed -e 's|^address = "\[::\]:25" .*|address = "127.0.0.1:2525"      # package default; "[::]:25" to take over port 25|' \
    -e 's|^address = "\[::\]:587"$|address = "127.0.0.1:2587"      # package default; "[::]:587" for submission|' \
    -e 's|^\(key = "/etc/starttls-proxy/certs/[a-z0-9]*/privkey.pem"\)$|\1\nchain_check = "dane-ee"        # package placeholder (self-signed): remove with a CA-issued chain|' \
    config/production.example.toml
