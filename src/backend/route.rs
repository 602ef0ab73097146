//! Routes (DESIGN.md §10): which backend pool a session goes to, chosen
//! from the handshake's SNI. Exact names first, then one-label wildcards
//! (`*.tenant3.test` for `mx.tenant3.test`, never for `a.mx.tenant3.test`),
//! as the certificate store matches; no SNI, or no route for it, is the
//! listener's own backend.
//!
//! The table is immutable; SIGHUP builds a new one and swaps it in
//! ([`SharedRoutes`]), so a session sees one table from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, RouteConfig};

/// The routes in force, swapped by SIGHUP.
pub type SharedRoutes = Arc<ArcSwap<Routes>>;

/// A name -> backend table (indexes into the configured backends).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Routes {
    exact: HashMap<String, usize>,
    /// Keyed by the parent of `*.parent`.
    wildcard: HashMap<String, usize>,
}

impl Routes {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut table = Self::default();
        for r in routes {
            for name in &r.sni {
                match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.insert(parent.to_string(), r.backend),
                    None => table.exact.insert(name.clone(), r.backend),
                };
            }
        }
        table
    }

    pub fn shared(routes: &[RouteConfig]) -> SharedRoutes {
        Arc::new(ArcSwap::from_pointee(Self::new(routes)))
    }

    /// The routes of a config loaded by SIGHUP, pointed at the backends
    /// the process runs (backends themselves need a restart): `Err` names
    /// the backend the new routes need that is not running.
    pub fn for_running(config: &Config, running: &[impl AsRef<str>]) -> Result<Self, String> {
        let mut mapped = Vec::new();
        for r in &config.routes {
            let name = config
                .backends
                .get(r.backend)
                .map(|b| b.name.as_str())
                .unwrap_or_default();
            let Some(i) = running.iter().position(|b| b.as_ref() == name) else {
                return Err(format!(
                    "{}: routes to backend {name:?}, which is not running (new backends need a restart)",
                    r.key_path
                ));
            };
            mapped.push(RouteConfig {
                backend: i,
                ..r.clone()
            });
        }
        Ok(Self::new(&mapped))
    }

    /// The backend for a session whose client sent `sni` (as the
    /// acceptor read it: lowercase); `None`: the listener's own.
    pub fn choose(&self, sni: Option<&str>) -> Option<usize> {
        let name = sni?;
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(b) = self.exact.get(name) {
            return Some(*b);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// Every backend some route leads to (sorted, once each).
    pub fn targets(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .copied()
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(names: &[&str], backend: usize) -> RouteConfig {
        RouteConfig {
            sni: names.iter().map(|s| s.to_string()).collect(),
            backend,
            key_path: String::new(),
            sni_at: Default::default(),
        }
    }

    #[test]
    fn exact_then_wildcard_then_none() {
        let r = Routes::new(&[
            route(&["mx.tenant2.test"], 1),
            route(&["*.tenant3.test", "mx.special.tenant3.test"], 2),
            route(&["mx.tenant3.test"], 3),
        ]);
        assert_eq!(r.choose(Some("mx.tenant2.test")), Some(1));
        assert_eq!(r.choose(Some("mx.tenant2.test.")), Some(1));
        assert_eq!(r.choose(Some("other.tenant3.test")), Some(2));
        // Exact beats the wildcard.
        assert_eq!(r.choose(Some("mx.tenant3.test")), Some(3));
        // One label only.
        assert_eq!(r.choose(Some("a.b.tenant3.test")), None);
        assert_eq!(r.choose(Some("tenant3.test")), None);
        assert_eq!(r.choose(Some("mx1.example.test")), None);
        assert_eq!(r.choose(None), None);
        assert_eq!(r.targets(), [1, 2, 3]);
    }
}
