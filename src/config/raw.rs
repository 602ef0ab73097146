//! The config file as written: serde structs, unknown keys refused.
//!
//! Values a later check may reject are wrapped in `Spanned` so that the
//! error can name the line. Values that can be checked while parsing
//! (durations, addresses, enums) are checked by serde itself, which gives
//! the error its span and key path for free.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub hostname: Spanned<String>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub certificate: Vec<Spanned<RawCertificate>>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
    pub metrics: Option<RawMetrics>,
    /// Name servers for the XCLIENT NAME lookup (default: /etc/resolv.conf).
    pub dns: Option<RawDns>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub reload: Option<RawReload>,
    /// Staged TLS enforcement (DESIGN.md §9), in file order.
    #[serde(default)]
    pub tls_policy: Vec<Spanned<RawTlsRule>>,
    /// SNI -> backend after the handshake (DESIGN.md §10), in file order.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

/// One `[[route]]` as written: the names (exact or `*.parent`) and the
/// backend their sessions go to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub sni: Spanned<Vec<Spanned<String>>>,
    pub backend: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Spanned<SocketAddr>,
    #[serde(default)]
    pub mode: ListenerMode,
    #[serde(default)]
    pub tls: TlsPolicy,
    pub backend: Spanned<String>,
    pub proxy_protocol: Option<Spanned<RawProxyProtocol>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    pub version: u8,
    #[serde(default)]
    pub trusted: Vec<String>,
}

/// `mode` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerMode {
    /// Plaintext greeting, TLS after `STARTTLS` (ports 25, 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl ListenerMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Implicit => "implicit",
        }
    }
}

/// `tls` of a listener: what happens to a transaction started without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// RFC 3207 on port 25: a sender that does not STARTTLS is relayed in plaintext.
    #[default]
    Opportunistic,
    /// `530 5.7.0 Must issue a STARTTLS command first`.
    Required,
}

impl TlsPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Opportunistic => "opportunistic",
            Self::Required => "required",
        }
    }
}

/// One `[[tls_policy]]` rule as written. Every list element keeps its
/// span, so that a bad CIDR or domain is reported at its own line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsRule {
    pub name: Spanned<String>,
    pub clients: Option<Spanned<Vec<Spanned<String>>>>,
    pub helo: Option<Spanned<Vec<Spanned<String>>>>,
    pub senders: Option<Spanned<Vec<Spanned<String>>>>,
    pub recipients: Option<Spanned<Vec<Spanned<String>>>>,
    pub require: Require,
    pub mode: PolicyMode,
    #[serde(default)]
    pub reply: RefusalReply,
}

/// `require` of a TLS policy rule: what a matching session must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Require {
    /// Any TLS (1.2 or 1.3).
    #[serde(rename = "tls")]
    Tls,
    /// TLS 1.3.
    #[serde(rename = "tls1.3")]
    Tls13,
}

impl Require {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Tls13 => "tls1.3",
        }
    }
}

/// `mode` of a TLS policy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    /// Count and log what would be refused; the session goes on.
    Report,
    /// Refuse the command (it never reaches the backend).
    Enforce,
}

impl PolicyMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Enforce => "enforce",
        }
    }
}

/// `reply` of a TLS policy rule: how an enforced refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReply {
    /// `530 5.7.0`: the sender bounces the message.
    #[default]
    Permanent,
    /// `450 4.7.0`: the sender queues it and retries (a soft start).
    Temporary,
}

impl RefusalReply {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Temporary => "temporary",
        }
    }
}

/// `limits.bare_newline`: how a bare LF is taken (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BareNewline {
    /// As Postfix >= 3.9: a bare LF ends a line and goes on as CRLF; only
    /// `<CR><LF>.<CR><LF>` ends DATA.
    #[default]
    Normal,
    /// Any bare LF, in a command or in content: `521 5.5.2` and close.
    Strict,
}

impl BareNewline {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Strict => "strict",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub min_version: MinVersion,
    pub session_tickets: Option<Spanned<u32>>,
    /// Offer the hybrid X25519MLKEM768 first (default true).
    pub post_quantum: Option<bool>,
    pub default_certificate: Option<Spanned<String>>,
    pub trust_anchors: Option<Spanned<PathBuf>>,
    /// Warn when a certificate expires within this window (default 21 days).
    pub expiry_warning: Option<WarnWindow>,
}

/// The lowest TLS version accepted; never below 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MinVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub name: Spanned<String>,
    pub chain: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
    #[serde(default)]
    pub chain_check: ChainCheck,
}

/// How far a certificate's chain is checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainCheck {
    /// Ordered and complete up to a trust anchor (system roots plus
    /// `tls.trust_anchors`).
    #[default]
    Full,
    /// DANE-only (TLSA 3 1 1): key, dates and names are checked, the path to
    /// a trust anchor is not.
    DaneEe,
}

impl ChainCheck {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::DaneEe => "dane-ee",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Spanned<String>,
    #[serde(default)]
    pub servers: Option<Spanned<Vec<SocketAddr>>>,
    pub identity: Option<Spanned<Identity>>,
    #[serde(default)]
    pub received_header: Option<Spanned<bool>>,
    pub sink: Option<Spanned<PathBuf>>,
    /// The sink fsyncs each message before its 250 (default true).
    pub sink_fsync: Option<Spanned<bool>>,
    /// How often each server is probed (connect, EHLO, QUIT).
    pub health_interval: Option<Spanned<HumanDuration>>,
    /// TLS to the backend (DESIGN.md §10).
    pub tls: Option<Spanned<BackendTlsMode>>,
    /// Verify the backend against this CA file (default: system roots).
    pub tls_ca: Option<Spanned<PathBuf>>,
    /// The name to verify (default: the server's IP address from
    /// `servers`, which the certificate must carry as an IP SAN).
    pub tls_name: Option<Spanned<String>>,
    /// `false`: no verification at all (warned at start).
    pub tls_verify: Option<Spanned<bool>>,
}

/// `[[backend]] tls`: how the hop to the backend is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    #[default]
    None,
    /// Plaintext greeting, then STARTTLS (after the PROXY header).
    Starttls,
    /// TLS from the first byte after the PROXY header.
    Implicit,
}

impl BackendTlsMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starttls => "starttls",
            Self::Implicit => "implicit",
        }
    }
}

/// How the client's identity reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    ProxyV2,
    ProxyV1,
    Xclient,
    #[default]
    None,
}

impl Identity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ProxyV2 => "proxy-v2",
            Self::ProxyV1 => "proxy-v1",
            Self::Xclient => "xclient",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub nameservers: Spanned<Vec<SocketAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Spanned<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_connections: Spanned<u32>,
    pub max_connections_per_ip: Spanned<u32>,
    pub line_length: Spanned<u32>,
    pub max_errors: Spanned<u32>,
    /// Per-IP limits count IPv6 clients by this prefix length.
    pub ipv6_prefix: Spanned<u8>,
    pub bare_newline: BareNewline,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: Spanned::new(0..0, 10_000),
            max_connections_per_ip: Spanned::new(0..0, 50),
            line_length: Spanned::new(0..0, 4096),
            max_errors: Spanned::new(0..0, 10),
            ipv6_prefix: Spanned::new(0..0, 64),
            bare_newline: BareNewline::Normal,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub command: HumanDuration,
    pub handshake: HumanDuration,
    pub session: HumanDuration,
    pub backend_connect: HumanDuration,
    pub shutdown_grace: HumanDuration,
    /// Message content, from the 354 or the first BDAT.
    pub data: HumanDuration,
    /// Command and handshake timeouts while connections are above 80% of
    /// `max_connections` (Postfix's stress mode uses 10s).
    pub stress: HumanDuration,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            command: HumanDuration(Duration::from_secs(300)),
            handshake: HumanDuration(Duration::from_secs(30)),
            session: HumanDuration(Duration::from_secs(3600)),
            backend_connect: HumanDuration(Duration::from_secs(30)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            data: HumanDuration(Duration::from_secs(600)),
            stress: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    pub debounce: HumanDuration,
    pub poll_interval: HumanDuration,
    /// Watch the certificate directories for changes (inotify); the poll
    /// runs either way. Off for filesystems whose events cannot be trusted.
    pub events: bool,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            debounce: HumanDuration(Duration::from_millis(500)),
            poll_interval: HumanDuration(Duration::from_secs(30)),
            events: true,
        }
    }
}

/// A warning window such as "21d": more than 0, at most a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarnWindow(pub Duration);

impl<'de> Deserialize<'de> for WarnWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let w = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"21d\")"))
        })?;
        if w.is_zero() || w > Duration::from_secs(366 * 86_400) {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} out of range: more than 0 and at most a year"
            )));
        }
        Ok(WarnWindow(w))
    }
}

/// Longest duration any setting takes: a week is already far past any
/// sensible SMTP timeout, and keeps deadline arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration written as a humantime string ("30s", "5m", "500ms").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration such as "30s", "5m" or "500ms""#)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                let d = humantime::parse_duration(s).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {s:?}: {e} (write e.g. \"30s\", \"5m\")"
                    ))
                })?;
                if d.is_zero() || d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "duration {s:?} out of range: more than 0 and at most 7 days"
                    )));
                }
                Ok(HumanDuration(d))
            }
        }
        d.deserialize_str(V)
    }
}
