//! Configuration: the TOML file of DESIGN.md §4, parsed and checked.
//!
//! `raw` is the file as written (serde, spans); this module turns it into the
//! typed [`Config`] the rest of the proxy uses, collecting every problem with
//! its file, line and key. Nothing here touches the network; certificate
//! files are read by `tls::load`, which reports through the same
//! [`ConfigError`] shape using the locations kept here.

pub mod error;
pub mod raw;
pub mod routes;
pub mod tls_policy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors, Location};
pub use raw::{
    BackendTlsMode, BareNewline, ChainCheck, Identity, ListenerMode, LogFormat, LogLevel,
    MinVersion, PolicyMode, RefusalReply, Require, TlsPolicy,
};
pub use routes::RouteConfig;
pub use tls_policy::{DomainPattern, TlsRule};

use raw::RawConfig;
use toml::Spanned;

/// Default path of the config file.
pub const DEFAULT_PATH: &str = "/etc/starttls-proxy/starttls-proxy.toml";

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub hostname: String,
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub certificates: Vec<CertificateConfig>,
    pub backends: Vec<BackendConfig>,
    pub metrics: Option<SocketAddr>,
    /// `[dns] nameservers`: `None` means the system's resolv.conf.
    pub dns_servers: Option<Vec<SocketAddr>>,
    pub log: LogConfig,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub reload: ReloadConfig,
    /// `[[tls_policy]]` rules, in file order (reloaded by SIGHUP).
    pub tls_policy: Vec<TlsRule>,
    /// `[[route]]` entries, in file order (reloaded by SIGHUP).
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub mode: ListenerMode,
    pub tls: TlsPolicy,
    /// Index into [`Config::backends`].
    pub backend: usize,
    /// Behind an L4 balancer: read its PROXY header first.
    pub proxy_protocol: Option<crate::proxy_protocol::InboundProxy>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub min_version: MinVersion,
    pub session_tickets: u32,
    /// Offer the hybrid post-quantum group X25519MLKEM768 first; false
    /// leaves X25519, P-256, P-384 (DESIGN.md §2).
    pub post_quantum: bool,
    /// Index into [`Config::certificates`].
    pub default_certificate: usize,
    pub trust_anchors: Option<PathBuf>,
    pub trust_anchors_at: Location,
    pub expiry_warning: Duration,
}

#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub name: String,
    pub chain: PathBuf,
    pub key: PathBuf,
    /// Key path of this entry, e.g. `certificate[1]`.
    pub key_path: String,
    pub chain_at: Location,
    pub key_at: Location,
    pub chain_check: ChainCheck,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub target: BackendTarget,
    pub identity: Identity,
    pub received_header: bool,
    /// Health probe period (connect + EHLO to every server).
    pub health_interval: Duration,
    /// The sink fsyncs every message before answering 250.
    pub sink_fsync: bool,
    /// TLS to the backend's servers; `None`: plaintext (`tls = "none"`).
    pub tls: Option<BackendTlsConfig>,
}

/// `[[backend]] tls = "starttls" | "implicit"` and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    pub mode: BackendTlsMode,
    /// Trust only this CA file; `None`: the system roots.
    pub ca: Option<PathBuf>,
    /// The name to verify; `None`: each server's IP address.
    pub name: Option<String>,
    /// `false`: accept any certificate (warned at start).
    pub verify: bool,
}

/// Every server is probed this often unless `health_interval` says otherwise.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum BackendTarget {
    /// Real MTAs, tried in order.
    Servers(Vec<SocketAddr>),
    /// The built-in sink: a Maildir.
    Sink(PathBuf),
}

#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub line_length: usize,
    pub max_errors: u32,
    /// IPv6 clients share per-IP limits by this prefix (a /64 is one site).
    pub ipv6_prefix: u8,
    pub bare_newline: BareNewline,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub command: Duration,
    pub handshake: Duration,
    pub session: Duration,
    pub backend_connect: Duration,
    pub shutdown_grace: Duration,
    /// Message content, from the 354 or the first BDAT to the end.
    pub data: Duration,
    /// Command and handshake timeouts under connection pressure.
    pub stress: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ReloadConfig {
    pub debounce: Duration,
    pub poll_interval: Duration,
    pub events: bool,
}

/// `expiring_soon` in `probe` uses the same 21 days.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(21 * 86_400);

/// TLS 1.3 tickets sent per handshake; clients use one, a few cover retries.
const MAX_SESSION_TICKETS: u32 = 16;

/// Smallest line limit that still holds any RFC 5321 command (512 octets).
const MIN_LINE_LENGTH: u32 = 512;

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path,
                Location { line: 0, column: 0 },
                "",
                format!("cannot read config file: {e}"),
            )
        })?;
        let config = Self::parse(path, &source)?;
        let errors = relative_path_errors(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses `source` as if read from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigErrors> {
        let raw = parse_raw(path, source)?;
        Checker {
            path,
            source,
            errors: Vec::new(),
        }
        .check(raw)
    }

    /// The certificate a client without a matching SNI gets.
    pub fn default_certificate(&self) -> &CertificateConfig {
        &self.certificates[self.tls.default_certificate]
    }
}

fn parse_raw(path: &Path, source: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(source).map_err(|e| toml_error(path, source, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = clean_key_path(&e.path().to_string());
        toml_error(path, source, &key, e.inner())
    })
}

fn toml_error(path: &Path, source: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim_end().to_string();
    ConfigError::new(path, Location::from_span(source, e.span()), key, message)
}

/// serde_path_to_error renders `listener[0].tls` as `listener[0].tls`, but
/// `Spanned` adds private segments and an empty path renders as `.`.
fn clean_key_path(p: &str) -> String {
    p.split('.')
        .filter(|seg| !seg.is_empty() && !seg.starts_with("$__serde_spanned"))
        .collect::<Vec<_>>()
        .join(".")
}

struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn at<T>(&self, s: &Spanned<T>) -> Location {
        Location::from_span(self.source, Some(s.span()))
    }

    fn error<T>(&mut self, s: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        let e = ConfigError::new(self.path, self.at(s), key, message);
        self.errors.push(e);
    }

    fn check(mut self, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let hostname = raw.hostname.get_ref().trim().to_ascii_lowercase();
        if !is_dns_name(&hostname) {
            self.error(
                &raw.hostname,
                "hostname",
                format!(
                    "{:?} is not a fully qualified host name",
                    raw.hostname.get_ref()
                ),
            );
        }

        let backends = self.backends(&raw);
        let backend_index: HashMap<&str, usize> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let listeners = self.listeners(&raw, &backend_index);
        let certificates = self.certificates(&raw);
        let tls = self.tls(&raw, &certificates);
        let tls_policy = self.tls_policy(&raw);
        let routes = self.routes(&raw, &backend_index);

        let limits = Limits {
            max_connections: self.positive(&raw.limits.max_connections, "limits.max_connections"),
            max_connections_per_ip: self.positive(
                &raw.limits.max_connections_per_ip,
                "limits.max_connections_per_ip",
            ),
            line_length: self.line_length(&raw.limits.line_length) as usize,
            max_errors: self.positive(&raw.limits.max_errors, "limits.max_errors"),
            ipv6_prefix: self.ipv6_prefix(&raw.limits.ipv6_prefix),
            bare_newline: raw.limits.bare_newline,
        };
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            command: t.command.0,
            handshake: t.handshake.0,
            session: t.session.0,
            backend_connect: t.backend_connect.0,
            shutdown_grace: t.shutdown_grace.0,
            data: t.data.0,
            stress: t.stress.0,
        };
        let r = raw.reload.unwrap_or_default();
        let reload = ReloadConfig {
            debounce: r.debounce.0,
            poll_interval: r.poll_interval.0,
            events: r.events,
        };

        let dns_servers = raw.dns.as_ref().map(|d| {
            if d.nameservers.get_ref().is_empty() {
                self.error(
                    &d.nameservers,
                    "dns.nameservers",
                    "give at least one IP:PORT, or leave [dns] out to use /etc/resolv.conf",
                );
            }
            d.nameservers.get_ref().clone()
        });

        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        let Some(tls) = tls else {
            // tls() only returns None after recording an error.
            return Err(ConfigErrors(self.errors));
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            hostname,
            listeners,
            tls,
            certificates,
            backends,
            metrics: raw.metrics.map(|m| m.listen.into_inner()),
            dns_servers,
            log: LogConfig {
                format: raw.log.format,
                level: raw.log.level,
            },
            limits,
            timeouts,
            reload,
            tls_policy,
            routes,
        })
    }

    fn ipv6_prefix(&mut self, v: &Spanned<u8>) -> u8 {
        let p = *v.get_ref();
        if p == 0 || p > 128 {
            self.error(v, "limits.ipv6_prefix", "must be 1 to 128 (64: one site)");
        }
        p.clamp(1, 128)
    }

    fn positive(&mut self, v: &Spanned<u32>, key: &str) -> u32 {
        if *v.get_ref() == 0 {
            self.error(v, key, "must be at least 1");
        }
        *v.get_ref()
    }

    fn line_length(&mut self, v: &Spanned<u32>) -> u32 {
        if *v.get_ref() < MIN_LINE_LENGTH {
            self.error(
                v,
                "limits.line_length",
                format!("must be at least {MIN_LINE_LENGTH} (RFC 5321 §4.5.3.1.4)"),
            );
        }
        *v.get_ref()
    }

    fn backends(&mut self, raw: &RawConfig) -> Vec<BackendConfig> {
        let mut out: Vec<BackendConfig> = Vec::new();
        for (i, b) in raw.backend.iter().enumerate() {
            let key = format!("backend[{i}]");
            let name = b.get_ref().name.get_ref().clone();
            if name.is_empty() {
                self.error(
                    &b.get_ref().name,
                    format!("{key}.name"),
                    "must not be empty",
                );
            } else if out.iter().any(|o| o.name == name) {
                self.error(
                    &b.get_ref().name,
                    format!("{key}.name"),
                    format!("a backend named {name:?} is already defined"),
                );
            }
            let b = b.get_ref();
            // On error the entry is still kept (with no servers) so that
            // listeners naming it do not report a second, misleading error.
            let target = match (&b.servers, &b.sink) {
                (Some(s), None) if s.get_ref().is_empty() => {
                    self.error(s, format!("{key}.servers"), "must list at least one server");
                    BackendTarget::Servers(Vec::new())
                }
                (Some(s), None) => BackendTarget::Servers(s.get_ref().clone()),
                (None, Some(p)) => BackendTarget::Sink(p.get_ref().clone()),
                (Some(s), Some(_)) => {
                    self.error(
                        s,
                        format!("{key}.servers"),
                        "give either `servers` or `sink`, not both",
                    );
                    BackendTarget::Servers(Vec::new())
                }
                (None, None) => {
                    self.error(
                        &b.name,
                        key.clone(),
                        "needs `servers` (real MTAs) or `sink` (a Maildir)",
                    );
                    BackendTarget::Servers(Vec::new())
                }
            };
            let identity = b.identity.as_ref().map_or(Identity::None, |i| *i.get_ref());
            let health_interval = match &b.health_interval {
                None => DEFAULT_HEALTH_INTERVAL,
                Some(h) => {
                    let d = h.get_ref().0;
                    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                        self.error(
                            h,
                            format!("{key}.health_interval"),
                            "must be between 1s and 1h",
                        );
                    }
                    d
                }
            };
            out.push(BackendConfig {
                name,
                target,
                identity,
                received_header: b.received_header.as_ref().is_some_and(|r| *r.get_ref()),
                health_interval,
                sink_fsync: self.sink_fsync(b, &key),
                tls: self.backend_tls(b, &key),
            });
        }
        out
    }

    /// `tls` and its keys: only for `servers`; `tls_ca`, `tls_name` and
    /// `tls_verify` only with `tls` set; no CA for a pool that verifies
    /// nothing.
    fn backend_tls(&mut self, b: &raw::RawBackend, key: &str) -> Option<BackendTlsConfig> {
        let mode = b
            .tls
            .as_ref()
            .map_or(BackendTlsMode::None, |t| *t.get_ref());
        if mode == BackendTlsMode::None {
            let extra = [
                b.tls_ca.as_ref().map(|s| (s.span(), "tls_ca")),
                b.tls_name.as_ref().map(|s| (s.span(), "tls_name")),
                b.tls_verify.as_ref().map(|s| (s.span(), "tls_verify")),
            ];
            for (span, k) in extra.into_iter().flatten() {
                let at = Spanned::new(span, ());
                self.error(
                    &at,
                    format!("{key}.{k}"),
                    "only with tls = \"starttls\" or \"implicit\"",
                );
            }
            return None;
        }
        if let (Some(t), Some(_)) = (&b.tls, &b.sink) {
            self.error(t, format!("{key}.tls"), "the built-in sink has no TLS");
        }
        let verify = b.tls_verify.as_ref().is_none_or(|v| *v.get_ref());
        if let (false, Some(ca)) = (verify, &b.tls_ca) {
            self.error(
                ca,
                format!("{key}.tls_ca"),
                "tls_verify = false verifies nothing: give tls_ca or tls_verify = false, not both",
            );
        }
        let name = b.tls_name.as_ref().map(|n| {
            let text = n.get_ref().trim().to_ascii_lowercase();
            if !is_dns_name(&text) && text.parse::<std::net::IpAddr>().is_err() {
                self.error(
                    n,
                    format!("{key}.tls_name"),
                    format!("{:?} is not a host name or IP address", n.get_ref()),
                );
            }
            text
        });
        Some(BackendTlsConfig {
            mode,
            ca: b.tls_ca.as_ref().map(|p| p.get_ref().clone()),
            name,
            verify,
        })
    }

    /// `sink_fsync`: only with `sink`; true unless turned off.
    fn sink_fsync(&mut self, b: &raw::RawBackend, key: &str) -> bool {
        match (&b.sink_fsync, &b.sink) {
            (Some(f), None) => {
                self.error(
                    f,
                    format!("{key}.sink_fsync"),
                    "only a `sink` backend has it",
                );
                true
            }
            (Some(f), Some(_)) => *f.get_ref(),
            (None, _) => true,
        }
    }

    fn listeners(
        &mut self,
        raw: &RawConfig,
        backends: &HashMap<&str, usize>,
    ) -> Vec<ListenerConfig> {
        if raw.listener.is_empty() {
            self.error(
                &raw.hostname,
                "listener",
                "at least one [[listener]] is required",
            );
        }
        let mut out: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            let l = l.get_ref();
            let address = *l.address.get_ref();
            // Port 0 (any free port, used by tests) never collides.
            if address.port() != 0 && out.iter().any(|o| o.address == address) {
                self.error(
                    &l.address,
                    format!("{key}.address"),
                    format!("{address} is already used by another listener"),
                );
            }
            let proxy_protocol = l.proxy_protocol.as_ref().and_then(|pp| {
                let raw = pp.get_ref();
                if raw.version != 1 && raw.version != 2 {
                    self.error(pp, format!("{key}.proxy_protocol.version"), "must be 1 or 2");
                    return None;
                }
                if raw.trusted.is_empty() {
                    self.error(pp, format!("{key}.proxy_protocol.trusted"), "list the balancer's addresses or networks (a PROXY header from anyone else is refused)");
                    return None;
                }
                let mut trusted = Vec::new();
                for t in &raw.trusted {
                    let net = t.parse::<ipnet::IpNet>().or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                    match net {
                        Ok(n) => trusted.push(n),
                        Err(_) => {
                            self.error(pp, format!("{key}.proxy_protocol.trusted"), format!("{t:?} is not an address or network (e.g. \"10.0.0.0/8\", \"2001:db8::1\")"));
                            return None;
                        }
                    }
                }
                Some(crate::proxy_protocol::InboundProxy { version: raw.version, trusted })
            });
            let name = l.backend.get_ref();
            let Some(&backend) = backends.get(name.as_str()) else {
                let mut known: Vec<_> = backends.keys().map(|k| format!("{k:?}")).collect();
                known.sort();
                self.error(
                    &l.backend,
                    format!("{key}.backend"),
                    format!(
                        "no [[backend]] named {name:?} (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                continue;
            };
            out.push(ListenerConfig {
                address,
                mode: l.mode,
                tls: l.tls,
                backend,
                proxy_protocol,
            });
        }
        out
    }

    fn certificates(&mut self, raw: &RawConfig) -> Vec<CertificateConfig> {
        let mut out: Vec<CertificateConfig> = Vec::new();
        for (i, c) in raw.certificate.iter().enumerate() {
            let key_path = format!("certificate[{i}]");
            let c = c.get_ref();
            let name = c.name.get_ref().clone();
            if name.is_empty() {
                self.error(&c.name, format!("{key_path}.name"), "must not be empty");
            } else if out.iter().any(|o| o.name == name) {
                self.error(
                    &c.name,
                    format!("{key_path}.name"),
                    format!("a certificate named {name:?} is already defined"),
                );
            }
            out.push(CertificateConfig {
                name,
                chain: c.chain.get_ref().clone(),
                key: c.key.get_ref().clone(),
                key_path,
                chain_at: self.at(&c.chain),
                key_at: self.at(&c.key),
                chain_check: c.chain_check,
            });
        }
        out
    }

    fn tls(&mut self, raw: &RawConfig, certs: &[CertificateConfig]) -> Option<TlsConfig> {
        let t = &raw.tls;
        let default_certificate = match (&t.default_certificate, certs.len()) {
            (_, 0) => {
                self.error(
                    &raw.hostname,
                    "certificate",
                    "at least one [[certificate]] is required",
                );
                return None;
            }
            (None, 1) => 0,
            (None, _) => {
                self.error(&raw.hostname, "tls.default_certificate", format!(
                    "required when more than one certificate is configured: name the one senders without SNI get (one of {})",
                    quoted_names(certs)
                ));
                return None;
            }
            (Some(d), _) => match certs.iter().position(|c| &c.name == d.get_ref()) {
                Some(i) => i,
                None => {
                    self.error(
                        d,
                        "tls.default_certificate",
                        format!(
                            "no [[certificate]] named {:?} (known: {})",
                            d.get_ref(),
                            quoted_names(certs)
                        ),
                    );
                    return None;
                }
            },
        };
        Some(TlsConfig {
            min_version: t.min_version,
            session_tickets: match &t.session_tickets {
                Some(n) if *n.get_ref() > MAX_SESSION_TICKETS => {
                    self.error(
                        n,
                        "tls.session_tickets",
                        format!("at most {MAX_SESSION_TICKETS} tickets per handshake"),
                    );
                    return None;
                }
                Some(n) => *n.get_ref(),
                None => 0,
            },
            post_quantum: t.post_quantum.unwrap_or(true),
            default_certificate,
            trust_anchors: t.trust_anchors.as_ref().map(|p| p.get_ref().clone()),
            trust_anchors_at: t
                .trust_anchors
                .as_ref()
                .map_or(Location::default(), |p| self.at(p)),
            expiry_warning: t.expiry_warning.map_or(DEFAULT_EXPIRY_WARNING, |w| w.0),
        })
    }
}

/// Relative paths are taken as they are, i.e. relative to the proxy's
/// working directory (not to the config file's directory). For such a path
/// that cannot be opened, the error says so at the key, before any loader
/// reports a bare "No such file" that leaves the reader guessing.
fn relative_path_errors(config: &Config) -> Vec<ConfigError> {
    let mut paths: Vec<(&Path, Location, String)> = Vec::new();
    if let Some(p) = &config.tls.trust_anchors {
        paths.push((p, config.tls.trust_anchors_at, "tls.trust_anchors".into()));
    }
    for c in &config.certificates {
        paths.push((&c.chain, c.chain_at, format!("{}.chain", c.key_path)));
        paths.push((&c.key, c.key_at, format!("{}.key", c.key_path)));
    }
    paths
        .into_iter()
        .filter(|(p, ..)| p.is_relative())
        .filter_map(|(p, at, key)| {
            let e = std::fs::File::open(p).err()?;
            let note = relative_note_for(p, &config.path)?;
            let message = format!("cannot read {}: {e}{note}", p.display());
            Some(ConfigError::new(&config.path, at, key, message))
        })
        .collect()
}

/// For a relative `path`: what it is relative to, as a parenthesis to
/// append to a message about it; `None` for an absolute path.
pub fn relative_note(path: &Path) -> Option<String> {
    relative_note_with(path, None)
}

/// [`relative_note`], with a hint when the path exists relative to the
/// config file's directory (the likely intent).
fn relative_note_for(path: &Path, config_file: &Path) -> Option<String> {
    let beside = config_file
        .parent()
        .map(|d| d.join(path))
        .filter(|b| b.exists());
    relative_note_with(path, beside.as_deref())
}

fn relative_note_with(path: &Path, beside: Option<&Path>) -> Option<String> {
    if path.is_absolute() {
        return None;
    }
    let cwd = std::env::current_dir()
        .map_or_else(|e| format!("(unknown: {e})"), |d| d.display().to_string());
    let hint = beside.map_or_else(
        || "use an absolute path".to_string(),
        |b| format!("did you mean {}?", b.display()),
    );
    Some(format!(
        " (relative to the working directory {cwd}, not to the config file's directory: {hint})"
    ))
}

fn quoted_names(certs: &[CertificateConfig]) -> String {
    certs
        .iter()
        .map(|c| format!("{:?}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A syntactically valid DNS host name with at least two labels.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;
