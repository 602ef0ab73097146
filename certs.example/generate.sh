#!/usr/bin/env bash
# generate.sh — the starttls-proxy DEMO PKI (FOR TESTING ONLY, never deploy).
# Uses openssl only. See README.md in this directory.
#
#   certs.example/generate.sh [all]
#       Regenerate EVERYTHING from scratch into the directory this script lives
#       in: new root CA, new intermediate CA, and the demo leaves below. Old
#       keys and certificates are deleted first.
#   certs.example/generate.sh leaf DIR SAN[,SAN...] [rsa|ecdsa]
#       Issue ONE extra leaf from the EXISTING intermediate (ca-keys/) into DIR
#       (created if needed; relative to the current directory): DIR/fullchain.pem,
#       DIR/leaf-only.pem, DIR/privkey.pem. Default key type rsa. A SAN that is an
#       IPv4/IPv6 address becomes an IP SAN, anything else a DNS SAN; the first
#       SAN is also the subject CN. Existing files in DIR are replaced, each one
#       atomically (rename), but not the three as a set: a watcher may briefly
#       see a new key with the old certificate, so reload after the command returns.
#   certs.example/generate.sh verify
#       Only re-run the checks on the demo leaves.
# Environment: DAYS  leaf validity in days (default 825).
#
# Layout (all in this directory):
#   ca.pem                 root CA "starttls-proxy demo Root CA" (RSA 2048, 3650 days): the trust anchor
#   intermediate.pem       intermediate CA (pathlen:0), signed by the root, signs every leaf
#   ca-keys/root-ca.key, ca-keys/intermediate-ca.key   CA private keys (committed on purpose: throwaway demo PKI)
#   mx1.example.test/            RSA 2048, SAN mx1.example.test, mail.example.test
#   mx1.example.test/ecdsa/      ECDSA P-256, same SANs
#   mx.tenant2.test/             RSA 2048, SAN mx.tenant2.test, *.tenant2.test
#   wild.test/                   RSA 2048, SAN *.wild.test only
#   each leaf dir: fullchain.pem (leaf + intermediate, never the root),
#                  leaf-only.pem (leaf alone), privkey.pem (PKCS#8, unencrypted)
# Leaves: 825 days, CA:FALSE, EKU serverAuth, SKI/AKI, keyUsage digitalSignature
# (+keyEncipherment for RSA). Everything is world-readable (0644), keys too.
# Exit 0 when every check passed; 1 with "generate.sh: ERROR: ..." otherwise.
set -euo pipefail

ME=generate.sh
die() { echo "$ME: ERROR: $*" >&2; exit 1; }
command -v openssl >/dev/null 2>&1 || die "openssl not found"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT_KEY=$HERE/ca-keys/root-ca.key
INTER_KEY=$HERE/ca-keys/intermediate-ca.key
CA_DAYS=3650
LEAF_DAYS=${DAYS:-825}
ORG="starttls-proxy demo — NOT FOR PRODUCTION"
DEMO_LEAVES=(
  "mx1.example.test|mx1.example.test,mail.example.test|rsa"
  "mx1.example.test/ecdsa|mx1.example.test,mail.example.test|ecdsa"
  "mx.tenant2.test|mx.tenant2.test,*.tenant2.test|rsa"
  "wild.test|*.wild.test|rsa"
)

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

genkey() {  # genkey OUTFILE rsa|ecdsa   (PKCS#8 PEM)
  case $2 in
    rsa)   openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null ;;
    ecdsa) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null ;;
    *) die "key type must be rsa or ecdsa, got '$2'" ;;
  esac || die "openssl genpkey ($2) failed"
  chmod 644 "$1"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

san_ext() {  # san_ext "a,b,c" -> "DNS:a,DNS:b,IP:c"
  local out="" s names
  IFS=, read -r -a names <<<"$1"   # no word splitting/globbing: '*.x' must stay literal
  for s in "${names[@]}"; do
    [ -n "$s" ] || die "empty name in SAN list '$1'"
    if [[ $s =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $s == *:* ]]; then out+="${out:+,}IP:$s"
    else out+="${out:+,}DNS:$s"; fi
  done
  echo "$out"
}

make_ca() {
  echo "$ME: new root CA and intermediate in $HERE"
  mkdir -p "$HERE/ca-keys"
  genkey "$ROOT_KEY" rsa
  cat > "$TMP/root.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3
[dn]
[v3]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -new -x509 -utf8 -config "$TMP/root.cnf" -key "$ROOT_KEY" -sha256 -days "$CA_DAYS" \
    -set_serial "$(serial)" -subj "/O=$ORG/CN=starttls-proxy demo Root CA" -out "$HERE/ca.pem" \
    || die "root CA creation failed"

  genkey "$INTER_KEY" rsa
  printf '%s\n' 'basicConstraints = critical,CA:TRUE,pathlen:0' \
    'keyUsage = critical,keyCertSign,cRLSign' 'subjectKeyIdentifier = hash' \
    'authorityKeyIdentifier = keyid:always' > "$TMP/inter.ext"
  openssl req -new -utf8 -config "$TMP/root.cnf" -key "$INTER_KEY" \
    -subj "/O=$ORG/CN=starttls-proxy demo Intermediate CA" -out "$TMP/inter.csr" \
    || die "intermediate CSR failed"
  openssl x509 -req -in "$TMP/inter.csr" -CA "$HERE/ca.pem" -CAkey "$ROOT_KEY" -set_serial "$(serial)" \
    -days "$CA_DAYS" -sha256 -extfile "$TMP/inter.ext" -out "$HERE/intermediate.pem" 2>/dev/null \
    || die "intermediate signing failed"
  chmod 644 "$HERE/ca.pem" "$HERE/intermediate.pem"
}

issue_leaf() {  # issue_leaf DIR SANS rsa|ecdsa
  local dir=$1 sans=$2 type=$3 cn ku w
  [ -s "$HERE/intermediate.pem" ] && [ -s "$INTER_KEY" ] \
    || die "no CA in $HERE (intermediate.pem, ca-keys/intermediate-ca.key): run '$0' first"
  case $type in rsa) ku="digitalSignature,keyEncipherment" ;; ecdsa) ku="digitalSignature" ;;
    *) die "key type must be rsa or ecdsa, got '$type'" ;; esac
  [[ $LEAF_DAYS =~ ^[0-9]+$ ]] && [ "$LEAF_DAYS" -ge 1 ] || die "DAYS must be a positive integer, got '$LEAF_DAYS'"
  san_ext "$sans" >/dev/null   # validate here: a die inside $(...) below would not stop us
  cn=${sans%%,*}
  mkdir -p "$dir"
  w=$(mktemp -d "$dir/.new.XXXXXX")   # same filesystem as DIR: renames are atomic
  printf '%s\n' 'basicConstraints = critical,CA:FALSE' "keyUsage = critical,$ku" \
    'extendedKeyUsage = serverAuth' 'subjectKeyIdentifier = hash' \
    'authorityKeyIdentifier = keyid:always' "subjectAltName = $(san_ext "$sans")" > "$w/ext"
  genkey "$w/privkey.pem" "$type"
  openssl req -new -config "$TMP/root.cnf" -key "$w/privkey.pem" -subj "/CN=$cn" -out "$w/csr" 2>/dev/null \
    || { rm -rf "$w"; die "leaf CSR for $cn failed"; }
  openssl x509 -req -in "$w/csr" -CA "$HERE/intermediate.pem" -CAkey "$INTER_KEY" -set_serial "$(serial)" \
    -days "$LEAF_DAYS" -sha256 -extfile "$w/ext" -out "$w/leaf-only.pem" 2>/dev/null \
    || { rm -rf "$w"; die "leaf signing for $cn failed"; }
  cat "$w/leaf-only.pem" "$HERE/intermediate.pem" > "$w/fullchain.pem"
  chmod 644 "$w"/*.pem
  mv -f "$w/privkey.pem" "$dir/privkey.pem"
  mv -f "$w/leaf-only.pem" "$dir/leaf-only.pem"
  mv -f "$w/fullchain.pem" "$dir/fullchain.pem"
  rm -rf "$w"
  chmod 755 "$dir"
  echo "$ME: issued $type leaf $dir  SAN=$sans  days=$LEAF_DAYS"
}

check_leaf() {  # check_leaf DIR SANS: the invariants the tests rely on
  local d=$1 sans=$2 n got s opt names
  for f in fullchain.pem leaf-only.pem privkey.pem; do [ -s "$d/$f" ] || die "$d/$f missing"; done
  openssl verify -CAfile "$HERE/ca.pem" -untrusted "$HERE/intermediate.pem" "$d/fullchain.pem" >/dev/null \
    || die "$d/fullchain.pem does not verify against ca.pem + intermediate.pem"
  # the chain file alone must be enough to build the path to the root
  openssl verify -CAfile "$HERE/ca.pem" -untrusted "$d/fullchain.pem" "$d/fullchain.pem" >/dev/null \
    || die "$d/fullchain.pem does not carry the intermediate"
  n=$(grep -c 'BEGIN CERTIFICATE' "$d/fullchain.pem")
  [ "$n" = 2 ] || die "$d/fullchain.pem has $n certificates, expected 2 (leaf + intermediate)"
  cmp -s <(cat "$d/leaf-only.pem" "$HERE/intermediate.pem") "$d/fullchain.pem" \
    || die "$d/fullchain.pem is not exactly leaf-only.pem + intermediate.pem"
  if openssl verify -CAfile "$HERE/ca.pem" "$d/leaf-only.pem" >/dev/null 2>&1; then
    die "$d/leaf-only.pem verifies without the intermediate (it must not)"
  fi
  # SAN: same number of entries, and openssl's own name check accepts each one
  got=$(openssl x509 -in "$d/leaf-only.pem" -noout -ext subjectAltName | tail -n +2)
  IFS=, read -r -a names <<<"$sans"
  n=$(tr ',' '\n' <<<"$got" | grep -c .)
  [ "$n" = "${#names[@]}" ] || die "$d: SAN is '$got', expected $sans"
  for s in "${names[@]}"; do
    case $(san_ext "$s") in IP:*) opt=-verify_ip ;; *) opt=-verify_hostname ;; esac
    openssl verify -CAfile "$HERE/ca.pem" -untrusted "$d/fullchain.pem" "$opt" "${s/\*/x}" "$d/fullchain.pem" >/dev/null 2>&1 \
      || die "$d: certificate does not match '$s' (SAN is '$got')"
  done
  grep -q '^-----BEGIN PRIVATE KEY-----' "$d/privkey.pem" || die "$d/privkey.pem is not unencrypted PKCS#8"
  [ "$(openssl pkey -in "$d/privkey.pem" -pubout 2>/dev/null)" = \
    "$(openssl x509 -in "$d/leaf-only.pem" -noout -pubkey)" ] || die "$d/privkey.pem does not match its certificate"
}

verify_all() {
  openssl verify -CAfile "$HERE/ca.pem" "$HERE/intermediate.pem" >/dev/null \
    || die "intermediate.pem does not verify against ca.pem"
  for spec in "${DEMO_LEAVES[@]}"; do
    IFS='|' read -r sub sans _ <<<"$spec"
    check_leaf "$HERE/$sub" "$sans"
  done
  echo "$ME: OK: every fullchain verifies (ca.pem + intermediate.pem), no leaf-only.pem verifies without the intermediate"
}

case ${1:-all} in
all)
  [ $# -le 1 ] || die "usage: $ME [all] | leaf DIR SAN[,SAN...] [rsa|ecdsa] | verify"
  rm -rf "$HERE/ca.pem" "$HERE/intermediate.pem" "$HERE/ca-keys"
  for spec in "${DEMO_LEAVES[@]}"; do rm -rf "${HERE:?}/${spec%%[|/]*}"; done
  make_ca
  for spec in "${DEMO_LEAVES[@]}"; do
    IFS='|' read -r sub sans type <<<"$spec"
    issue_leaf "$HERE/$sub" "$sans" "$type"
  done
  chmod 755 "$HERE/ca-keys"
  verify_all
  ;;
verify) verify_all ;;
leaf)
  [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $ME leaf DIR SAN[,SAN...] [rsa|ecdsa]"
  [ -n "$2" ] || die "empty DIR"
  [ -n "$3" ] || die "empty SAN list"
  # root.cnf is only needed as an empty [req] section for CSRs
  printf '[req]\ndistinguished_name = dn\n[dn]\n' > "$TMP/root.cnf"
  issue_leaf "$2" "$3" "${4:-rsa}"
  check_leaf "$2" "$3"
  echo "$ME: OK: $2/fullchain.pem verifies against $HERE/ca.pem"
  ;;
*) die "usage: $ME [all] | leaf DIR SAN[,SAN...] [rsa|ecdsa] | verify" ;;
esac
