//! The long `--help` texts, written to read as the man page they become
//! (deploy/man/starttls-proxy.1 is generated from them with clap_mangen by
//! tests/man_page.rs, which also fails when the committed page is stale).

/// `starttls-proxy --help`: DESCRIPTION.
pub const LONG_ABOUT: &str = "\
STARTTLS-terminating SMTP proxy.

starttls-proxy sits in front of Postfix or Exim on port 25 (and 587, 465). \
It answers the greeting, EHLO and STARTTLS itself, terminates TLS with \
rustls (TLS 1.2 and 1.3 only), picks the certificate by SNI (a named \
default certificate for clients without SNI), always serves the full \
chain, and relays the plaintext SMTP session to the backend MTA, passing \
the client's address with the PROXY protocol or XCLIENT. It has no queue: \
a message is accepted only when the backend's own 250 reaches the sender.

Certificates reload by themselves when their files change (certbot, \
cert-manager); SIGHUP re-reads the config file. One log line per \
handshake and per session, Prometheus metrics and a status page on the \
[metrics] listen address.

Without a command, `run` is assumed.";

/// `starttls-proxy --help`: the sections after OPTIONS.
pub const AFTER_LONG_HELP: &str = "\
FILES:
  /etc/starttls-proxy/starttls-proxy.toml
      The config file (TOML; unknown keys are errors, every error names
      file, line and key). The Debian package ships it as a conffile that
      listens on 127.0.0.1:2525 until edited.
  /var/lib/starttls-proxy
      Home and working directory of the starttls-proxy user.

SIGNALS (run):
  SIGHUP     Re-read the config file and every certificate; a bad config
             is refused and the running one kept.
  SIGTERM, SIGINT
             Stop accepting, let sessions finish for [timeouts]
             shutdown_grace, then answer 421 to the rest and exit.

EXIT STATUS:
  run      0 after a clean shutdown; 2 on a config, certificate or bind
           error, or when started as root without --allow-root.
  check    0 no errors (warnings allowed); non-zero on errors.
  probe    0 nothing found; 1 warnings only; 2 errors.
  status   0 all well; 1 a certificate expires soon or a backend server
           is down; 2 the proxy does not answer.

ENVIRONMENT:
  STARTTLS_PROXY_ALLOW_ROOT=true   the same as --allow-root.
  RUST_LOG   overrides [log] level (tracing filter syntax).

EXAMPLES:
  starttls-proxy check --config /etc/starttls-proxy/starttls-proxy.toml
  starttls-proxy check --dns
  starttls-proxy probe mx1.example.net
  starttls-proxy probe --domain example.net --json
  starttls-proxy status --url http://127.0.0.1:9125
  systemctl reload starttls-proxy        (SIGHUP)

SEE ALSO:
  postfix(1), exim(8), systemd.exec(5); docs/operations.md in the
  source (deploy, rotate certificates, DANE, troubleshooting).";
