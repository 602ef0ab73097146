//! The shape of `/status.json` (docs/status.md): what the page, the JSON
//! and `starttls-proxy status` all render. Serialized by the proxy,
//! deserialized by the `status` command. Fields may be added, none renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped only if a field changes meaning; new fields keep it.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// The proxy's version (Cargo package version).
    pub version: String,
    /// `hostname` from the config.
    pub hostname: String,
    /// Unix seconds when the snapshot was taken.
    pub now: i64,
    pub started_at: i64,
    pub uptime_seconds: u64,
    /// `[tls] expiry_warning`, in whole days.
    pub expiry_warning_days: u64,
    /// No warning (the `status` command exits 0).
    pub ok: bool,
    /// One sentence per certificate in the warning window and per backend
    /// server down; empty when all is well.
    pub warnings: Vec<String>,
    /// The last SIGHUP reload of the config, if any.
    pub config_reload: Option<Stamp>,
    pub listeners: Vec<Listener>,
    pub certificates: Vec<Certificate>,
    pub tls: Windows,
    /// Most frequent first.
    pub handshake_failures: Vec<Failure>,
    /// Connections refused before any SMTP, by reason, since start.
    pub connections_rejected: BTreeMap<String, u64>,
    pub backends: Vec<Backend>,
    /// Every rule registered or evaluated, in the order first seen.
    pub tls_policy: Vec<PolicyRule>,
}

/// A result and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub result: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listener {
    /// As bound (the `listener` label of the metrics).
    pub address: String,
    pub mode: String,
    pub tls: String,
    pub backend: String,
    pub connections: u64,
    pub smuggling_attempts: u64,
    pub starttls_injections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    /// `[[certificate]] name`.
    pub name: String,
    /// The leaf's SAN DNS names.
    pub names: Vec<String>,
    pub algorithm: String,
    /// Served to clients without SNI or with an SNI nothing matches.
    pub default: bool,
    /// Unix seconds.
    pub not_after: i64,
    /// Whole days until `not_after`, rounded down (negative once expired).
    pub days_left: i64,
    /// Less than `expiry_warning` left (or expired).
    pub expiring: bool,
    pub expired: bool,
    /// Handshakes that served it, since start.
    pub handshakes: u64,
    /// Reloads that took a new version, and that failed, since start.
    pub reloads_success: u64,
    pub reloads_failure: u64,
    /// The last reload that took a new version or failed.
    pub last_reload: Option<Stamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Windows {
    pub since_start: Window,
    /// The current minute and the 59 before it.
    pub last_hour: Window,
}

/// Counts over one period. Every map has every key of its fixed set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Completed handshakes by negotiated version.
    pub versions: BTreeMap<String, u64>,
    /// Completed handshakes by SNI: matched, unmatched, absent.
    pub sni: BTreeMap<String, u64>,
    /// Failed handshakes (every reason).
    pub failures: u64,
    /// Highest version offered in ClientHellos, refused ones included.
    pub client_max_versions: BTreeMap<String, u64>,
    /// Sessions relayed, by TLS: starttls, implicit, none (plaintext).
    pub sessions: BTreeMap<String, u64>,
    pub messages_relayed: u64,
    pub smuggling_attempts: u64,
    pub starttls_injections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The `reason` label (docs/telemetry.md).
    pub reason: String,
    pub since_start: u64,
    pub last_hour: u64,
    /// Since start, by the client's highest offered version (non-zero only).
    pub client_max_versions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    /// `servers`, or `sink` (the built-in sink, always up).
    pub kind: String,
    pub identity: String,
    /// The sink, or a server that passed its last probe.
    pub up: bool,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub address: String,
    /// `up`, `down`, or `unknown` (not probed yet).
    pub state: String,
    /// Unix seconds of the last probe.
    pub last_probe_at: Option<i64>,
    /// When the state last changed.
    pub state_since: Option<i64>,
    /// Why the last probe failed (null when it passed).
    pub error: Option<String>,
    /// Failed connections of sessions and probes, since start.
    pub connect_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRule {
    pub rule: String,
    pub satisfied: u64,
    pub would_refuse: u64,
    pub refused: u64,
}

impl Snapshot {
    /// What makes `status` exit 1: a certificate inside the warning window
    /// (or expired), a backend server down. Built from the fields above
    /// only, so the command judges any proxy's JSON the same way.
    pub fn compute_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.certificates {
            if c.expired {
                out.push(format!("certificate {} has expired", c.name));
            } else if c.expiring {
                out.push(format!(
                    "certificate {} expires in {} days (warning at {})",
                    c.name, c.days_left, self.expiry_warning_days
                ));
            }
        }
        for b in &self.backends {
            for s in b.servers.iter().filter(|s| s.state == "down") {
                let why = s.error.as_deref().unwrap_or("probe failed");
                out.push(format!(
                    "backend {} server {} down: {why}",
                    b.name, s.address
                ));
            }
        }
        out
    }
}

impl Window {
    /// The count of `key` in one of the maps (0 when absent).
    pub fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
        map.get(key).copied().unwrap_or(0)
    }
}
