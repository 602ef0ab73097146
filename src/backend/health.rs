//! Backend health (DESIGN.md §2): every server of a pool is probed
//! periodically (connect, PROXY LOCAL/UNKNOWN header if the pool sends
//! PROXY headers, greeting, EHLO, QUIT). The probe decides
//! - the order in which sessions try the servers (up ones first, a server
//!   that failed its last probe only as a last resort — the probe may be
//!   stale, a session never gives up without trying);
//! - the extensions offered in the pre-TLS EHLO reply (the first server up,
//!   filtered to a safe set);
//! - the greeting: while every server is known down, clients get 421 at
//!   once instead of a session that cannot go anywhere;
//! - `/ready` and `backend_up{backend,server}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use arc_swap::ArcSwapOption;

/// Extensions the pre-TLS EHLO may pass on from the backend: what a
/// plaintext relay can use unchanged. Never AUTH (no credentials in
/// plaintext), never STARTTLS (the proxy adds its own), never XCLIENT or
/// XFORWARD (the proxy's business with the backend, not the client's).
const SAFE_PRE_TLS: &[&str] = &[
    "PIPELINING",
    "SIZE",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "SMTPUTF8",
    "DSN",
    "CHUNKING",
    "BINARYMIME",
];

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Probe state of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Not probed yet (start-up): treated as up by sessions.
    Unknown,
    Up,
    Down,
}

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    state: AtomicU8,
}

/// The health of one backend pool, shared by its sessions and its probe.
#[derive(Debug)]
pub struct Health {
    servers: Vec<Server>,
    /// The built-in sink is always up.
    always_up: bool,
    /// Filtered EHLO extensions of the first server up, as last probed.
    extensions: ArcSwapOption<Vec<String>>,
}

impl Health {
    pub fn new(servers: &[SocketAddr]) -> Self {
        Self {
            servers: servers
                .iter()
                .map(|a| Server {
                    addr: *a,
                    state: AtomicU8::new(UNKNOWN),
                })
                .collect(),
            always_up: false,
            extensions: ArcSwapOption::empty(),
        }
    }

    pub fn always_up() -> Self {
        Self {
            servers: Vec::new(),
            always_up: true,
            extensions: ArcSwapOption::empty(),
        }
    }

    pub fn state(&self, addr: SocketAddr) -> ServerState {
        match self.servers.iter().find(|s| s.addr == addr) {
            Some(s) => match s.state.load(Ordering::Acquire) {
                UP => ServerState::Up,
                DOWN => ServerState::Down,
                _ => ServerState::Unknown,
            },
            None => ServerState::Unknown,
        }
    }

    /// Records a probe result; returns the previous state.
    pub fn set(&self, addr: SocketAddr, up: bool) -> ServerState {
        let before = self.state(addr);
        if let Some(s) = self.servers.iter().find(|s| s.addr == addr) {
            s.state.store(if up { UP } else { DOWN }, Ordering::Release);
        }
        before
    }

    /// Some server passed its last probe (for `/ready`).
    pub fn any_up(&self) -> bool {
        self.always_up
            || self
                .servers
                .iter()
                .any(|s| s.state.load(Ordering::Acquire) == UP)
    }

    /// Every server failed its last probe: greet with 421.
    pub fn all_down(&self) -> bool {
        !self.always_up
            && !self.servers.is_empty()
            && self
                .servers
                .iter()
                .all(|s| s.state.load(Ordering::Acquire) == DOWN)
    }

    /// The servers in the order a session should try them: up or not yet
    /// probed first, in configured order, then the ones that failed.
    pub fn connect_order(&self) -> Vec<SocketAddr> {
        let (good, bad): (Vec<&Server>, Vec<&Server>) = self
            .servers
            .iter()
            .partition(|s| s.state.load(Ordering::Acquire) != DOWN);
        good.iter().chain(bad.iter()).map(|s| s.addr).collect()
    }

    /// The pre-TLS EHLO extensions, when a probe has seen some.
    pub fn extensions(&self) -> Option<Arc<Vec<String>>> {
        self.extensions.load_full()
    }

    pub fn set_extensions(&self, ehlo_lines: Option<Vec<String>>) {
        self.extensions
            .store(ehlo_lines.map(|l| Arc::new(safe_extensions(&l))));
    }
}

/// Keeps the safe extensions of an EHLO reply's lines (the texts after
/// `250-`/`250 `, the first line — the greeting name — excluded).
pub fn safe_extensions(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .skip(1)
        .filter_map(|l| {
            let l = l.trim();
            let keyword = l.split([' ', '=']).next().unwrap_or_default();
            let safe = SAFE_PRE_TLS.iter().any(|s| s.eq_ignore_ascii_case(keyword));
            // Printable ASCII only and bounded: this text goes to clients.
            let clean = l.len() <= 128 && l.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            (safe && clean).then(|| l.to_ascii_uppercase())
        })
        .collect()
}

/// The pre-TLS EHLO extensions when a session may reach any of several
/// pools (routes are chosen only after the handshake): what every pool
/// takes, `SIZE` the smallest limit. A pool not probed yet counts as
/// offering the built-in set ([`crate::smtp::ehlo::PRE_TLS_EXTENSIONS`]);
/// `None` when no pool has been probed (the built-in set then).
pub fn common_extensions(views: &[Option<Arc<Vec<String>>>]) -> Option<Arc<Vec<String>>> {
    if views.len() == 1 {
        return views[0].clone();
    }
    if views.iter().all(Option::is_none) {
        return None;
    }
    let builtin: Vec<String> = crate::smtp::ehlo::PRE_TLS_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lists: Vec<&[String]> = views
        .iter()
        .map(|v| v.as_deref().map_or(builtin.as_slice(), Vec::as_slice))
        .collect();
    let keyword = |l: &str| l.split([' ', '=']).next().unwrap_or_default().to_string();
    let mut out = Vec::new();
    for ext in lists[0] {
        let k = keyword(ext);
        let all: Option<Vec<&String>> = lists
            .iter()
            .map(|l| l.iter().find(|e| keyword(e) == k))
            .collect();
        let Some(all) = all else { continue };
        if k == "SIZE" {
            out.push(smallest_size(&all));
        } else {
            out.push(ext.clone());
        }
    }
    Some(Arc::new(out))
}

/// `SIZE n` with the smallest limit; `SIZE` alone or `SIZE 0` is no limit.
fn smallest_size(sizes: &[&String]) -> String {
    let limit = sizes
        .iter()
        .filter_map(|s| s.split_once(' ')?.1.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .min();
    limit.map_or_else(|| "SIZE".to_string(), |n| format!("SIZE {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(e: &[&str]) -> Option<Arc<Vec<String>>> {
        Some(Arc::new(e.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn common_extensions_intersect_and_take_the_smallest_size() {
        let a = view(&["PIPELINING", "SIZE 10240000", "CHUNKING", "DSN"]);
        let b = view(&["PIPELINING", "DSN", "SIZE 5000", "SMTPUTF8"]);
        assert_eq!(
            common_extensions(&[a.clone(), b.clone()])
                .unwrap()
                .as_slice(),
            ["PIPELINING", "SIZE 5000", "DSN"]
        );
        // No limit on one side: the other's limit.
        let c = view(&["SIZE", "PIPELINING"]);
        assert_eq!(
            common_extensions(&[c, a.clone()]).unwrap().as_slice(),
            ["SIZE 10240000", "PIPELINING"]
        );
        // Not probed yet: the built-in set stands in for it.
        assert_eq!(
            common_extensions(&[a.clone(), None]).unwrap().as_slice(),
            ["PIPELINING"]
        );
        assert_eq!(common_extensions(&[None, None]), None);
        assert_eq!(common_extensions(std::slice::from_ref(&a)), a);
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn filters_to_the_safe_set() {
        let lines: Vec<String> = [
            "backend.example greets you",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "REQUIRETLS",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
            "AUTH=PLAIN",
            "XCLIENT NAME ADDR",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
            "pipelining\u{7}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            safe_extensions(&lines),
            [
                "PIPELINING",
                "SIZE 10240000",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "DSN",
                "SMTPUTF8",
                "CHUNKING"
            ]
        );
    }

    #[test]
    fn unknown_counts_as_up_for_sessions_but_not_for_readiness() {
        let h = Health::new(&[a("127.0.0.1:1"), a("127.0.0.1:2")]);
        assert!(!h.all_down());
        assert!(!h.any_up());
        h.set(a("127.0.0.1:1"), false);
        assert_eq!(h.connect_order(), [a("127.0.0.1:2"), a("127.0.0.1:1")]);
        assert!(!h.all_down());
        h.set(a("127.0.0.1:2"), false);
        assert!(h.all_down());
        assert_eq!(h.connect_order(), [a("127.0.0.1:1"), a("127.0.0.1:2")]);
        assert_eq!(h.set(a("127.0.0.1:2"), true), ServerState::Down);
        assert!(h.any_up());
        assert!(!h.all_down());
        assert!(Health::always_up().any_up());
        assert!(!Health::always_up().all_down());
    }
}
