//! A newcomer's first day: the walkthrough of docs/operations.md, run as
//! written. The test takes every ```sh block between its
//! `<!-- walkthrough -->` markers, in order, and runs them as root on a
//! throwaway copy of this Debian machine (an overlay of `/` in its own
//! mount, network and PID namespaces: port 25 there collides with nothing,
//! and everything it installs vanishes with it).
//!
//! The starting point is what the walkthrough assumes: Debian's "Internet
//! Site" Postfix (dpkg-reconfigure) receiving for example.net on port 25,
//! `mx1.example.net` resolving to the host, and a certificate for it from a
//! CA the system trusts (a test CA added with update-ca-certificates, as a
//! public one would be). From the test, not the docs: the .deb (the test
//! build of the binary, as tests/deb_package.rs builds it), the certificate
//! files, and `systemctl` (tests/peers/systemctl-standin.sh: no systemd
//! here). At the end a sender that verifies the chain and the name
//! (Python's ssl with the system roots) delivers a message into a Postfix
//! mailbox through the proxy, and the evidence is read back: the mailbox,
//! Postfix's log (`postfix/proxied`), the proxy's handshake lines and the
//! user it runs as.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The ```sh blocks of docs/operations.md between the walkthrough markers.
fn walkthrough() -> Vec<String> {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let start = doc
        .find("<!-- walkthrough -->")
        .expect("walkthrough start marker");
    let end = doc
        .find("<!-- /walkthrough -->")
        .expect("walkthrough end marker");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "unterminated ```sh block in the walkthrough"
    );
    blocks
}

/// A root CA, an intermediate and a leaf for mx1.example.net, as a CA
/// would issue them: `fullchain.pem` (leaf, intermediate), `privkey.pem`,
/// and `root.pem` for the system's trust store.
fn issue_certificate(dir: &Path) {
    let script = r#"
set -euo pipefail
cd "$1"
o() { openssl "$@" 2>/dev/null; }
o req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=Newcomer Test Root" \
  -keyout root.key -out root.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=Newcomer Test Intermediate" -keyout int.key -out int.csr
o x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -days 30 -out int.pem \
  -extfile <(printf "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign")
o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=mx1.example.net" -keyout privkey.pem -out leaf.csr
o x509 -req -in leaf.csr -CA int.pem -CAkey int.key -CAcreateserial -days 30 -out leaf.pem \
  -extfile <(printf "subjectAltName=DNS:mx1.example.net\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature")
cat leaf.pem int.pem > fullchain.pem
rm -f root.key int.key int.csr leaf.csr
"#;
    let out = Command::new("bash")
        .args(["-c", script, "issue"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "issuing the test certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inside the copy: the starting point, the walkthrough, the strict
/// sender, the evidence. `$1` is the test's directory (bind-mounted).
const INSIDE: &str = r#"
set -euo pipefail
T=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
poll() { # WHAT SECONDS COMMAND...: until COMMAND succeeds
  local what=$1 n=$(( $2 * 10 )); shift 2
  until "$@" >/dev/null 2>&1; do
    n=$((n - 1)); [ $n -gt 0 ] || { echo "timed out waiting for $what" >&2; return 1; }
    sleep 0.1
  done
}

echo "== starting point: Debian's Internet Site Postfix for example.net on port 25"
debconf-set-selections <<SEL
postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string mx1.example.net
postfix postfix/protocols select ipv4
SEL
echo mx1.example.net > /etc/mailname
dpkg-reconfigure -f noninteractive postfix >/dev/null 2>&1
postconf -e 'myhostname = mx1.example.net' 'mydestination = $myhostname, example.net, localhost' \
  'maillog_file = /var/log/postfix.log'
echo '127.0.0.1 mx1.example.net' >> /etc/hosts
id alice >/dev/null 2>&1 || useradd -m alice
newaliases
postfix start 2>/dev/null
poll "Postfix on port 25" 20 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25'
cp "$T/work/root.pem" /usr/local/share/ca-certificates/newcomer-test-root.crt
update-ca-certificates >/dev/null 2>&1
install -m 0755 "$T/systemctl" /usr/local/sbin/systemctl

cd "$T/work"
for step in "$T"/steps/*.sh; do
  echo "== walkthrough block $(basename "$step")"
  bash -euxo pipefail "$step"
done

echo "== a sender that verifies the chain and the name"
python3 - <<'PY'
import smtplib, ssl
ctx = ssl.create_default_context()          # the system's roots, check_hostname on
with smtplib.SMTP("mx1.example.net", 25, timeout=20) as s:
    s.ehlo("sender.example.org")
    s.starttls(context=ctx)                 # SNI and the name checked: mx1.example.net
    print("sender tls", s.sock.version(), s.sock.cipher()[0])
    s.ehlo("sender.example.org")
    s.sendmail("someone@sender.example.org", ["alice@example.net"],
               b"From: someone@sender.example.org\r\nTo: alice@example.net\r\n"
               b"Subject: newcomer walkthrough delivery\r\n\r\nHello through the proxy.\r\n")
PY
poll "the message in alice's mailbox" 30 grep -q 'newcomer walkthrough delivery' /var/mail/alice

mkdir -p "$T/out"
cp /var/mail/alice "$T/out/mailbox"
cp /var/log/postfix.log "$T/out/postfix.log"
cp /var/log/starttls-proxy.log "$T/out/proxy.log"
ps -o user= -p "$(cat /run/starttls-proxy.standin.pid)" > "$T/out/proxy-user"
grep CapAmb "/proc/$(cat /run/starttls-proxy.standin.pid)/status" > "$T/out/proxy-caps"
echo "== done"
"#;

/// Outside: the overlay root, the namespaces' loopback, the chroot.
const HOST: &str = r#"
set -euo pipefail
T=$1
R=$T/root
mkdir -p "$R" && mount -t tmpfs tmpfs "$R"
mkdir -p "$R/upper" "$R/work" "$R/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/merged"
M=$R/merged
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
mount -t tmpfs tmpfs "$M/run"
mount -t tmpfs tmpfs "$M/tmp"
mkdir -p "$M$T" && mount --bind "$T" "$M$T"
ip link set lo up
exec chroot "$M" bash "$T/inside.sh" "$T"
"#;

#[test]
fn a_newcomer_following_the_walkthrough_gets_mail_into_postfix_over_verified_tls() {
    let steps = walkthrough();
    assert!(steps.len() >= 5, "walkthrough blocks: {steps:#?}");
    let t = tempdir();
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(t.path().join("steps")).unwrap();
    for (i, block) in steps.iter().enumerate() {
        std::fs::write(t.path().join(format!("steps/{:02}.sh", i + 1)), block).unwrap();
    }
    build_deb(&work);
    issue_certificate(&work);
    std::fs::copy(
        repo().join("tests/peers/systemctl-standin.sh"),
        t.path().join("systemctl"),
    )
    .unwrap();
    std::fs::write(t.path().join("inside.sh"), INSIDE).unwrap();
    std::fs::write(t.path().join("host.sh"), HOST).unwrap();

    let out = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--mount-proc"])
        .args(["timeout", "300", "bash"])
        .arg(t.path().join("host.sh"))
        .arg(t.path())
        .output()
        .expect("unshare (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(t.path().join("out").join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the walkthrough failed: {text}\n-- proxy log:\n{}",
        read("proxy.log")
    );

    // The documented checks ran and verified: both openssl runs and swaks.
    assert_eq!(
        text.matches("Verification: OK").count(),
        2,
        "openssl s_client with and without SNI: {text}"
    );
    assert!(text.contains("sender tls TLSv1.3"), "{text}");

    // The message is in Postfix's mailbox, received on the proxied service.
    let mailbox = read("mailbox");
    assert!(
        mailbox.contains("Subject: newcomer walkthrough delivery"),
        "{mailbox}"
    );
    assert!(
        mailbox.contains("by mx1.example.net (Postfix) with ESMTP"),
        "{mailbox}"
    );
    let postfix = read("postfix.log");
    assert!(
        postfix.contains("postfix/proxied/smtpd") && postfix.contains("connect from"),
        "Postfix did not take the session on the proxied service: {postfix}"
    );
    assert!(
        postfix.contains("to=<postmaster@example.net>")
            || postfix.contains("orig_to=<postmaster@example.net>"),
        "swaks's message was not delivered: {postfix}"
    );

    // The proxy: the unprivileged user, CAP_NET_BIND_SERVICE its only
    // capability (bit 10), the named certificate with and without SNI.
    assert_eq!(read("proxy-user").trim(), "starttls-proxy");
    assert!(
        read("proxy-caps").trim().ends_with("0000000000000400"),
        "{}",
        read("proxy-caps")
    );
    let proxy = read("proxy.log");
    let handshakes: Vec<&str> = proxy
        .lines()
        .filter(|l| l.contains("tls handshake ") && l.contains("certificate=mx1"))
        .collect();
    assert!(
        handshakes
            .iter()
            .any(|l| l.contains("sni=\"mx1.example.net\"")),
        "{proxy}"
    );
    assert!(
        handshakes.iter().any(|l| l.contains("sni=\"none\"")),
        "{proxy}"
    );
}
