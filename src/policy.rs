//! TLS policy (DESIGN.md §9): `[[tls_policy]]` rules, matched without I/O.
//!
//! The session asks at a plaintext MAIL FROM before it starts a relay (so a
//! refused client stays in the pre-TLS dialogue and may still STARTTLS);
//! the relay asks at every other MAIL FROM and at each RCPT TO. Client,
//! HELO and sender rules are asked at MAIL FROM, rules with `recipients`
//! at RCPT TO. The answer is a [`Verdict`]: pass, or the reply that
//! refuses the command. Every rule that matches is counted
//! (`tls_policy_evaluations_total{policy,result}`) and every refusal,
//! enforced or only reported, is one `tls policy` log line.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::info;

use crate::config::{DomainPattern, PolicyMode, RefusalReply, Require, TlsRule};
use crate::smtp::reply::{self, Reply};
use crate::telemetry::metrics::{self, PolicyCounters};
use crate::telemetry::sanitize;

/// The rules in force. SIGHUP stores new ones; every evaluation loads the
/// current set, so a change applies from the next MAIL or RCPT on, and no
/// session is dropped for it.
pub type SharedPolicy = Arc<ArcSwap<Policy>>;

/// `rules` as the shared policy every listener asks.
pub fn shared(rules: &[TlsRule]) -> SharedPolicy {
    Arc::new(ArcSwap::from_pointee(Policy::new(rules)))
}

/// Checked rules with their counters.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    rule: TlsRule,
    counters: PolicyCounters,
}

/// Where in the dialogue a rule is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// MAIL FROM: rules without `recipients`.
    Mail,
    /// Each RCPT TO: rules with `recipients`.
    Rcpt,
}

impl Stage {
    /// The stage `rule` is asked at.
    pub fn of(rule: &TlsRule) -> Stage {
        if rule.recipients.is_empty() {
            Stage::Mail
        } else {
            Stage::Rcpt
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mail => "mail_from",
            Self::Rcpt => "rcpt_to",
        }
    }
}

/// The session's TLS when the command arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsState {
    None,
    Tls12,
    Tls13,
}

impl TlsState {
    /// From rustls's version name (`TLSv1.2`, `TLSv1.3`). The proxy never
    /// negotiates less than 1.2, so anything but 1.3 is taken as 1.2.
    pub fn of_version(version: &str) -> TlsState {
        if version == "TLSv1.3" {
            TlsState::Tls13
        } else {
            TlsState::Tls12
        }
    }

    pub fn meets(self, require: Require) -> bool {
        match require {
            Require::Tls => self >= TlsState::Tls12,
            Require::Tls13 => self >= TlsState::Tls13,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        }
    }
}

/// What the session knows when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client (behind a trusted balancer, the one its PROXY header named).
    pub peer: SocketAddr,
    /// The client's last HELO/EHLO name, as sent.
    pub helo: Option<&'a str>,
    pub tls: TlsState,
    /// At MAIL FROM, this command's sender domain; at RCPT TO, every sender
    /// the backend's transaction may have (one, unless MAILs are pipelined
    /// ahead of their replies). `None`: the null sender or no domain.
    pub senders: &'a [Option<&'a str>],
    /// At RCPT TO, the recipient's domain.
    pub recipient: Option<&'a str>,
}

/// The result of one rule for one command (the metric's `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rule matched and the session meets its requirement.
    Satisfied,
    /// A `report` rule would have refused the command; it went on.
    WouldRefuse,
    /// An `enforce` rule refused the command.
    Refused,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Satisfied => "satisfied",
            Self::WouldRefuse => "would_refuse",
            Self::Refused => "refused",
        }
    }
}

/// What the caller does with the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it.
    Pass,
    /// Answer it with this reply; it never reaches the backend.
    Refuse(Reply),
}

impl Policy {
    /// Registers the counters of every rule (at 0).
    pub fn new(rules: &[TlsRule]) -> Policy {
        Policy {
            rules: rules
                .iter()
                .map(|r| Loaded {
                    rule: r.clone(),
                    counters: metrics::tls_policy_counters(&r.name),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Asks every rule of `stage`; counts and logs each that matches. When
    /// several `enforce` rules refuse, the reply is the first permanent
    /// one's, else the first temporary one's, in file order.
    pub fn evaluate(&self, stage: Stage, facts: &Facts<'_>) -> Verdict {
        let mut refusal: Option<RefusalReply> = None;
        for l in self.rules.iter().filter(|l| Stage::of(&l.rule) == stage) {
            if !matches(&l.rule, facts) {
                continue;
            }
            let outcome = if facts.tls.meets(l.rule.require) {
                Outcome::Satisfied
            } else if l.rule.mode == PolicyMode::Report {
                Outcome::WouldRefuse
            } else {
                Outcome::Refused
            };
            l.counters.count(outcome.as_str());
            if outcome == Outcome::Satisfied {
                continue;
            }
            log(stage, &l.rule, outcome, facts);
            if outcome == Outcome::Refused && refusal != Some(RefusalReply::Permanent) {
                refusal = Some(l.rule.reply);
            }
        }
        match refusal {
            Some(kind) => Verdict::Refuse(refusal_reply(kind, facts.tls)),
            None => Verdict::Pass,
        }
    }
}

/// A rule matches when every key it gives matches.
fn matches(rule: &TlsRule, facts: &Facts<'_>) -> bool {
    let ip = facts.peer.ip();
    (rule.clients.is_empty() || rule.clients.iter().any(|net| net.contains(&ip)))
        && (rule.helo.is_empty() || facts.helo.is_some_and(|h| any_matches(&rule.helo, h)))
        && (rule.senders.is_empty()
            || facts
                .senders
                .iter()
                .flatten()
                .any(|d| any_matches(&rule.senders, d)))
        && (rule.recipients.is_empty()
            || facts
                .recipient
                .is_some_and(|d| any_matches(&rule.recipients, d)))
}

/// `domain` as sent (any case, a trailing dot) against the patterns.
fn any_matches(patterns: &[DomainPattern], domain: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    let domain = domain.strip_suffix('.').unwrap_or(&domain);
    patterns.iter().any(|p| p.matches(domain))
}

/// The reply of an enforced refusal: STARTTLS first for a plaintext
/// session, else the version (only `tls1.3` can refuse a TLS session).
pub fn refusal_reply(kind: RefusalReply, tls: TlsState) -> Reply {
    match (tls, kind) {
        (TlsState::None, RefusalReply::Permanent) => reply::MUST_ISSUE_STARTTLS,
        (TlsState::None, RefusalReply::Temporary) => reply::MUST_ISSUE_STARTTLS_TEMPORARY,
        (_, RefusalReply::Permanent) => reply::MUST_USE_TLS13,
        (_, RefusalReply::Temporary) => reply::MUST_USE_TLS13_TEMPORARY,
    }
}

/// One line per `would_refuse` or `refused`: who, what, and which rule.
/// Client-supplied names are sanitised and bounded.
fn log(stage: Stage, rule: &TlsRule, outcome: Outcome, facts: &Facts<'_>) {
    let senders: Vec<&str> = facts.senders.iter().map(|s| s.unwrap_or("<>")).collect();
    let sender = if senders.is_empty() {
        "none".to_string()
    } else {
        sanitize(&senders.join(","))
    };
    info!(
        peer = %facts.peer,
        helo = facts.helo.map(sanitize).as_deref().unwrap_or("none"),
        sender,
        recipient = facts.recipient.map(sanitize).as_deref(),
        tls = facts.tls.as_str(),
        policy = %rule.name,
        require = rule.require.as_str(),
        mode = rule.mode.as_str(),
        stage = stage.as_str(),
        result = outcome.as_str(),
        reply = refusal_reply(rule.reply, facts.tls).code(),
        "tls policy"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls_policy::parse_pattern;

    fn rule(name: &str, mode: PolicyMode) -> TlsRule {
        TlsRule {
            name: name.into(),
            clients: Vec::new(),
            helo: Vec::new(),
            senders: Vec::new(),
            recipients: Vec::new(),
            require: Require::Tls,
            mode,
            reply: RefusalReply::Permanent,
        }
    }

    fn facts<'a>(peer: &str, tls: TlsState, senders: &'a [Option<&'a str>]) -> Facts<'a> {
        Facts {
            peer: peer.parse().unwrap(),
            helo: Some("Mail.Bank.Example."),
            tls,
            senders,
            recipient: None,
        }
    }

    #[test]
    fn every_given_key_must_match() {
        let mut r = rule("r", PolicyMode::Enforce);
        r.clients = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        r.helo = vec![parse_pattern(".bank.example").unwrap()];
        r.senders = vec![parse_pattern("bank.example").unwrap()];
        let p = Policy::new(&[r]);
        let refuse = Verdict::Refuse(reply::MUST_ISSUE_STARTTLS);
        let s = [Some("bank.example")];
        assert_eq!(
            p.evaluate(Stage::Mail, &facts("192.0.2.9:25", TlsState::None, &s)),
            refuse
        );
        assert_eq!(
            p.evaluate(Stage::Mail, &facts("[2001:db8::7]:25", TlsState::None, &s)),
            refuse
        );
        assert_eq!(
            p.evaluate(Stage::Rcpt, &facts("192.0.2.9:25", TlsState::None, &s)),
            Verdict::Pass,
            "a MAIL rule is not asked at RCPT"
        );
        assert_eq!(
            p.evaluate(Stage::Mail, &facts("198.51.100.1:25", TlsState::None, &s)),
            Verdict::Pass
        );
        assert_eq!(
            p.evaluate(
                Stage::Mail,
                &facts("192.0.2.9:25", TlsState::None, &[Some("other.test")])
            ),
            Verdict::Pass
        );
        assert_eq!(
            p.evaluate(Stage::Mail, &facts("192.0.2.9:25", TlsState::None, &[None])),
            Verdict::Pass
        );
        assert_eq!(
            p.evaluate(Stage::Mail, &facts("192.0.2.9:25", TlsState::Tls12, &s)),
            Verdict::Pass
        );
        let mut f = facts("192.0.2.9:25", TlsState::None, &s);
        f.helo = None;
        assert_eq!(
            p.evaluate(Stage::Mail, &f),
            Verdict::Pass,
            "no HELO matches no helo rule"
        );
    }

    #[test]
    fn recipient_rules_are_asked_at_rcpt_against_every_possible_sender() {
        let mut r = rule("r", PolicyMode::Enforce);
        r.senders = vec![parse_pattern("bank.example").unwrap()];
        r.recipients = vec![parse_pattern(".legal.test").unwrap()];
        r.reply = RefusalReply::Temporary;
        let p = Policy::new(&[r]);
        let s = [Some("other.test"), Some("bank.example")];
        let mut f = facts("192.0.2.9:25", TlsState::None, &s);
        assert_eq!(p.evaluate(Stage::Mail, &f), Verdict::Pass);
        f.recipient = Some("x.legal.test");
        assert_eq!(
            p.evaluate(Stage::Rcpt, &f),
            Verdict::Refuse(reply::MUST_ISSUE_STARTTLS_TEMPORARY)
        );
        f.recipient = Some("legal.test");
        assert_eq!(p.evaluate(Stage::Rcpt, &f), Verdict::Pass);
    }

    #[test]
    fn tls13_rules_refuse_tls12_only() {
        let mut r = rule("r", PolicyMode::Enforce);
        r.clients = vec!["0.0.0.0/0".parse().unwrap()];
        r.require = Require::Tls13;
        let p = Policy::new(&[r]);
        let f = |tls| facts("192.0.2.9:25", tls, &[]);
        assert_eq!(
            p.evaluate(Stage::Mail, &f(TlsState::Tls12)),
            Verdict::Refuse(reply::MUST_USE_TLS13)
        );
        assert_eq!(p.evaluate(Stage::Mail, &f(TlsState::Tls13)), Verdict::Pass);
        assert_eq!(
            p.evaluate(Stage::Mail, &f(TlsState::None)),
            Verdict::Refuse(reply::MUST_ISSUE_STARTTLS)
        );
    }

    #[test]
    fn report_rules_never_refuse_and_permanent_beats_temporary() {
        let all = |name, mode, reply| {
            let mut r = rule(name, mode);
            r.clients = vec!["0.0.0.0/0".parse().unwrap()];
            r.reply = reply;
            r
        };
        let f = facts("192.0.2.9:25", TlsState::None, &[]);
        let p = Policy::new(&[all("a", PolicyMode::Report, RefusalReply::Permanent)]);
        assert_eq!(p.evaluate(Stage::Mail, &f), Verdict::Pass);
        let p = Policy::new(&[
            all("a", PolicyMode::Enforce, RefusalReply::Temporary),
            all("b", PolicyMode::Enforce, RefusalReply::Permanent),
            all("c", PolicyMode::Enforce, RefusalReply::Temporary),
        ]);
        assert_eq!(
            p.evaluate(Stage::Mail, &f),
            Verdict::Refuse(reply::MUST_ISSUE_STARTTLS)
        );
    }
}
