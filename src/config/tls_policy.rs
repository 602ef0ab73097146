//! `[[tls_policy]]` rules (DESIGN.md §9), checked into typed data: CIDRs
//! parsed, domain patterns lowercased and validated, every problem
//! reported at the line of the value that caused it.
//!
//! Matching is not here: `crate::policy` asks these rules at MAIL FROM and
//! RCPT TO.

use std::collections::HashSet;

use ipnet::IpNet;
use toml::Spanned;

use super::Checker;
use super::raw::{PolicyMode, RawConfig, RawTlsRule, RefusalReply, Require};

/// One checked `[[tls_policy]]` rule. An empty list means the key was not
/// given (it does not restrict the match); at least one list is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRule {
    /// Metric label and log field: `[A-Za-z0-9_.-]`, unique.
    pub name: String,
    /// Client networks (the inbound PROXY address behind a balancer).
    pub clients: Vec<IpNet>,
    /// HELO/EHLO names.
    pub helo: Vec<DomainPattern>,
    /// MAIL FROM domains.
    pub senders: Vec<DomainPattern>,
    /// RCPT TO domains: such a rule is asked at every RCPT TO.
    pub recipients: Vec<DomainPattern>,
    pub require: Require,
    pub mode: PolicyMode,
    pub reply: RefusalReply,
}

/// `"example.test"`: that domain; `".example.test"`: any domain under it
/// (as Postfix's access tables read a leading dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    Exact(String),
    Subdomains(String),
}

impl DomainPattern {
    /// Whether `domain` (already lowercase, no trailing dot) matches.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            Self::Exact(d) => domain == d,
            Self::Subdomains(parent) => domain
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(d) => f.write_str(d),
            Self::Subdomains(d) => write!(f, ".{d}"),
        }
    }
}

/// Longest rule name (it is a metric label).
const MAX_NAME: usize = 64;

impl Checker<'_> {
    pub(super) fn tls_policy(&mut self, raw: &RawConfig) -> Vec<TlsRule> {
        let mut out: Vec<TlsRule> = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in raw.tls_policy.iter().enumerate() {
            let key = format!("tls_policy[{i}]");
            let rule = r.get_ref();
            let name = rule.name.get_ref().clone();
            if !valid_name(&name) {
                self.error(
                    &rule.name,
                    format!("{key}.name"),
                    format!(
                        "{name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ . - (it is a metric label)"
                    ),
                );
            } else if !names.insert(name.clone()) {
                self.error(
                    &rule.name,
                    format!("{key}.name"),
                    format!("a rule named {name:?} is already defined"),
                );
            }
            if rule.clients.is_none()
                && rule.helo.is_none()
                && rule.senders.is_none()
                && rule.recipients.is_none()
            {
                self.error(
                    r,
                    key.clone(),
                    "give at least one of clients, helo, senders, recipients (clients = [\"0.0.0.0/0\", \"::/0\"] matches every client)",
                );
            }
            out.push(TlsRule {
                name,
                clients: self.policy_clients(rule, &key),
                helo: self.domain_patterns(&rule.helo, &format!("{key}.helo")),
                senders: self.domain_patterns(&rule.senders, &format!("{key}.senders")),
                recipients: self.domain_patterns(&rule.recipients, &format!("{key}.recipients")),
                require: rule.require,
                mode: rule.mode,
                reply: rule.reply,
            });
        }
        out
    }

    fn policy_clients(&mut self, rule: &RawTlsRule, key: &str) -> Vec<IpNet> {
        let key = format!("{key}.clients");
        let Some(list) = self.non_empty(&rule.clients, &key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (j, item) in list.get_ref().iter().enumerate() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match net {
                // Clients arrive as IPv4 (the listener unmaps ::ffff:a.b.c.d):
                // a mapped network would never match.
                Ok(IpNet::V6(n)) if n.prefix_len() >= 96 && n.network().to_ipv4_mapped().is_some() => {
                    self.error(
                        item,
                        format!("{key}[{j}]"),
                        format!("{text:?}: IPv4 clients are matched as IPv4; write the network as IPv4 (e.g. \"192.0.2.0/24\")"),
                    );
                }
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.error(
                    item,
                    format!("{key}[{j}]"),
                    format!("{text:?} is not an address or network (e.g. \"192.0.2.0/24\", \"2001:db8::/32\", \"192.0.2.7\")"),
                ),
            }
        }
        out
    }

    fn domain_patterns(
        &mut self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Vec<DomainPattern> {
        let Some(list) = self.non_empty(list, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (j, item) in list.get_ref().iter().enumerate() {
            match parse_pattern(item.get_ref()) {
                Ok(p) if !out.contains(&p) => out.push(p),
                Ok(_) => {}
                Err(why) => self.error(item, format!("{key}[{j}]"), why),
            }
        }
        out
    }

    /// A list key that is present must list something.
    fn non_empty<'l>(
        &mut self,
        list: &'l Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Option<&'l Spanned<Vec<Spanned<String>>>> {
        let list = list.as_ref()?;
        if list.get_ref().is_empty() {
            self.error(
                list,
                key,
                "must not be empty (leave the key out to match any)",
            );
            return None;
        }
        Some(list)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `"example.test"` or `".example.test"`, case-insensitive, a trailing
/// dot ignored.
pub fn parse_pattern(text: &str) -> Result<DomainPattern, String> {
    let t = text.trim().to_ascii_lowercase();
    if t.contains('@') {
        return Err(format!(
            "{text:?}: give a domain, not an address (\"example.test\", or \".example.test\" for its subdomains)"
        ));
    }
    if let Some(parent) = t.strip_prefix("*.") {
        return Err(format!(
            "{text:?}: write \".{parent}\" for the subdomains of {parent}"
        ));
    }
    let (sub, rest) = match t.strip_prefix('.') {
        Some(r) => (true, r),
        None => (false, t.as_str()),
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "{text:?} is not a domain (\"example.test\", or \".example.test\" for its subdomains)"
        ));
    }
    Ok(if sub {
        DomainPattern::Subdomains(rest.to_string())
    } else {
        DomainPattern::Exact(rest.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let exact = parse_pattern("Bank.Example.").unwrap();
        assert_eq!(exact, DomainPattern::Exact("bank.example".into()));
        assert!(exact.matches("bank.example"));
        assert!(!exact.matches("mx.bank.example"));
        assert!(!exact.matches("notbank.example"));
        let sub = parse_pattern(".bank.example").unwrap();
        assert!(sub.matches("mx.bank.example"));
        assert!(sub.matches("a.b.bank.example"));
        assert!(!sub.matches("bank.example"));
        assert!(!sub.matches("evilbank.example"));
        assert!(!sub.matches(".bank.example"));
        assert_eq!(sub.to_string(), ".bank.example");
        for bad in [
            "",
            ".",
            "a..b",
            "a b.test",
            "user@bank.example",
            "*.bank.example",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
