//! `[[route]]` entries (DESIGN.md §10), checked into typed data: every
//! name lowercased and validated (an exact host name or a one-label
//! wildcard `*.parent`, as certificates name hosts), every backend known,
//! no name routed twice. Each problem is reported at the line of the value
//! that caused it.
//!
//! Matching is not here: `crate::backend::route` picks the pool from the
//! handshake's SNI.

use std::collections::HashMap;

use super::Checker;
use super::raw::RawConfig;

/// One checked `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lowercase, no trailing dot: `mx.tenant2.test` or `*.tenant3.test`.
    pub sni: Vec<String>,
    /// Index into [`super::Config::backends`].
    pub backend: usize,
    /// Key path of this entry, e.g. `route[1]` (for `check`'s warnings).
    pub key_path: String,
    /// Where the entry's `sni` list is, for warnings after the load.
    pub sni_at: super::Location,
}

impl Checker<'_> {
    pub(super) fn routes(
        &mut self,
        raw: &RawConfig,
        backends: &HashMap<&str, usize>,
    ) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        // Every name once, across all routes: `route[i].sni[j]` that has it.
        let mut seen: HashMap<String, String> = HashMap::new();
        for (i, r) in raw.route.iter().enumerate() {
            let key = format!("route[{i}]");
            let r = r.get_ref();
            let name = r.backend.get_ref();
            let backend = backends.get(name.as_str()).copied();
            if backend.is_none() {
                let mut known: Vec<_> = backends.keys().map(|k| format!("{k:?}")).collect();
                known.sort();
                self.error(
                    &r.backend,
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
            }
            if r.sni.get_ref().is_empty() {
                self.error(&r.sni, format!("{key}.sni"), "list at least one name");
            }
            let mut sni = Vec::new();
            for (j, item) in r.sni.get_ref().iter().enumerate() {
                let item_key = format!("{key}.sni[{j}]");
                match parse_route_name(item.get_ref()) {
                    Err(why) => self.error(item, item_key, why),
                    Ok(n) => match seen.get(&n) {
                        Some(first) => self.error(
                            item,
                            item_key,
                            format!("{n:?} is already routed by {first}"),
                        ),
                        None => {
                            seen.insert(n.clone(), item_key);
                            sni.push(n);
                        }
                    },
                }
            }
            if let Some(backend) = backend {
                out.push(RouteConfig {
                    sni,
                    backend,
                    key_path: key,
                    sni_at: self.at(&r.sni),
                });
            }
        }
        out
    }
}

/// `"mx.tenant2.test"` or `"*.tenant3.test"`, case-insensitive, a
/// trailing dot ignored; what a certificate's SAN may say.
pub fn parse_route_name(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('.').unwrap_or(&t).to_string();
    let host = t.strip_prefix("*.").unwrap_or(&t);
    if super::is_dns_name(host) && !host.contains('*') {
        Ok(t)
    } else {
        Err(format!(
            "{text:?}: give a host name (\"mx.tenant2.test\") or a one-label wildcard (\"*.tenant3.test\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_route_name;

    #[test]
    fn names_and_wildcards() {
        assert_eq!(
            parse_route_name("MX.Tenant2.test.").unwrap(),
            "mx.tenant2.test"
        );
        assert_eq!(
            parse_route_name("*.tenant3.test").unwrap(),
            "*.tenant3.test"
        );
        for bad in ["*.test", "a.*.test", "**.a.test", "mx", "", "a b.test", "*"] {
            assert!(parse_route_name(bad).is_err(), "{bad}");
        }
    }
}
