//! Findings: one record type for every problem the probe can report, with
//! the stable codes and severities of DESIGN.md §7, produced by small pure
//! checks over what was observed and ranked by what breaks delivery first.
//! The human text (message, fix) may change; codes never do.
//!
//! Other sources (DANE, MTA-STS, TLS-RPT, PTR) build [`Finding`]s with
//! [`Finding::new`] and append them before [`rank`].

use std::collections::BTreeMap;

use super::chain::{CertInfo, ChainReport, Order, Trust, Validity};
use super::endpoint::{EndpointReport, Handshake, Session};
use super::legacy::LegacyReply;
use super::{describe, report::fmt_date};

/// Fewer days than this to the leaf's notAfter: `expiring_soon`.
pub const EXPIRING_SOON_DAYS: i64 = 21;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// Every finding code of DESIGN.md §7, in ranking order within each tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    // Tier 0: no TLS at all.
    Unreachable,
    StarttlsNotOffered,
    Tls12Unsupported,
    // Tier 1: TLS, but senders that validate refuse it.
    Expired,
    ChainIncomplete,
    Untrusted,
    NameMismatch,
    DaneMismatch,
    MtaStsPolicyInvalid,
    MtaStsMxNotCovered,
    Ipv4Ipv6Mismatch,
    ChainMisordered,
    // Tier 2: warnings.
    NosniNameMismatch,
    ExpiringSoon,
    LegacyTlsAccepted,
    RootIncluded,
    TlsrptMissing,
    // Tier 3: info.
    PtrMismatch,
}

impl Code {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::StarttlsNotOffered => "starttls_not_offered",
            Self::Tls12Unsupported => "tls12_unsupported",
            Self::Expired => "expired",
            Self::ChainIncomplete => "chain_incomplete",
            Self::Untrusted => "untrusted",
            Self::NameMismatch => "name_mismatch",
            Self::DaneMismatch => "dane_mismatch",
            Self::MtaStsPolicyInvalid => "mta_sts_policy_invalid",
            Self::MtaStsMxNotCovered => "mta_sts_mx_not_covered",
            Self::Ipv4Ipv6Mismatch => "ipv4_ipv6_mismatch",
            Self::ChainMisordered => "chain_misordered",
            Self::NosniNameMismatch => "nosni_name_mismatch",
            Self::ExpiringSoon => "expiring_soon",
            Self::LegacyTlsAccepted => "legacy_tls_accepted",
            Self::RootIncluded => "root_included",
            Self::TlsrptMissing => "tlsrpt_missing",
            Self::PtrMismatch => "ptr_mismatch",
        }
    }

    pub fn severity(&self) -> Severity {
        match self.tier() {
            0 | 1 => Severity::Error,
            2 => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// Whether an enforcing MTA-STS sender would refuse to deliver
    /// because of it (RFC 8461 §4: STARTTLS with a certificate that
    /// verifies and covers the MX name, an MX the policy lists): every
    /// error about the endpoints or the policy, an address that could not
    /// be judged at all (`unreachable`), and a default certificate that
    /// fails senders without SNI. Not `dane_mismatch` (DANE senders use
    /// TLSA, not the policy) and not `ipv4_ipv6_mismatch` (each
    /// certificate is judged on its own; one that fails has its own
    /// finding).
    pub fn blocks_mta_sts(&self) -> bool {
        match self {
            Self::DaneMismatch | Self::Ipv4Ipv6Mismatch => false,
            Self::NosniNameMismatch => true,
            c => c.severity() == Severity::Error,
        }
    }

    /// What breaks delivery first: 0 stops all TLS, 1 fails validating
    /// senders, 2 warnings, 3 information.
    pub fn tier(&self) -> u8 {
        match self {
            Self::Unreachable | Self::StarttlsNotOffered | Self::Tls12Unsupported => 0,
            Self::Expired
            | Self::ChainIncomplete
            | Self::Untrusted
            | Self::NameMismatch
            | Self::DaneMismatch
            | Self::MtaStsPolicyInvalid
            | Self::MtaStsMxNotCovered
            | Self::Ipv4Ipv6Mismatch
            | Self::ChainMisordered => 1,
            Self::NosniNameMismatch
            | Self::ExpiringSoon
            | Self::LegacyTlsAccepted
            | Self::RootIncluded
            | Self::TlsrptMissing => 2,
            Self::PtrMismatch => 3,
        }
    }
}

/// One problem, where it is, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    /// The name connected to (an MX host, or the target).
    pub mx: Option<String>,
    /// `address:port`; `None` for what concerns a name as a whole.
    pub address: Option<String>,
    pub message: String,
    /// One line, in the postmaster's words.
    pub fix: String,
}

impl Finding {
    pub fn new(
        code: Code,
        mx: Option<String>,
        address: Option<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            code,
            severity: code.severity(),
            mx,
            address,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Sorts by what breaks delivery first: tier, then code, then name and
/// address. Stable, so equal findings keep their order.
pub fn rank(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (a.code.tier(), a.code, &a.mx, &a.address).cmp(&(b.code.tier(), b.code, &b.mx, &b.address))
    });
}

/// 2 with any error, 1 with warnings only, else 0 (`info` never counts).
pub fn exit_code(findings: &[Finding]) -> u8 {
    if findings.iter().any(|f| f.severity == Severity::Error) {
        2
    } else if findings.iter().any(|f| f.severity == Severity::Warning) {
        1
    } else {
        0
    }
}

/// What stands between these endpoints (and, with `--domain`, the
/// domain's policy) and an MTA-STS `enforce` policy: see
/// [`Code::blocks_mta_sts`].
pub fn mta_sts_blockers(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.code.blocks_mta_sts())
        .collect()
}

/// A name with no address to connect to.
pub fn unresolvable(mx: &str, why: &str) -> Finding {
    Finding::new(
        Code::Unreachable,
        Some(mx.to_string()),
        None,
        format!("{mx} cannot be connected to: {why}"),
        format!("publish A and/or AAAA records for {mx}"),
    )
}

/// Every finding the endpoint observations support, unranked.
pub fn from_endpoints(reports: &[EndpointReport]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in reports {
        let place = Place {
            mx: r.endpoint.mx_str(),
            addr: r.endpoint.address.to_string(),
        };
        // Each step only when the one before let the probe get that far.
        if session_findings(r, &place, &mut out) {
            handshake_findings(r, &place, &mut out);
            certificate_findings(r, &place, &mut out);
            legacy_findings(r, &place, &mut out);
        }
    }
    parity(reports, &mut out);
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert((f.code, f.mx.clone(), f.address.clone(), f.message.clone())));
    out
}

/// Where a finding is: the name connected to and the address.
struct Place {
    mx: String,
    addr: String,
}

impl Place {
    fn finding(&self, code: Code, message: String, fix: impl Into<String>) -> Finding {
        Finding::new(
            code,
            Some(self.mx.clone()),
            Some(self.addr.clone()),
            message,
            fix,
        )
    }
}

/// `unreachable` or `starttls_not_offered`; false when either stops the
/// probe of this address.
fn session_findings(r: &EndpointReport, p: &Place, out: &mut Vec<Finding>) -> bool {
    let addr = &p.addr;
    match &r.dialogue {
        Err(e) => {
            let message = if e.is_unreachable() {
                format!("no TCP connection to {addr}: {}", describe(e))
            } else {
                format!("connected to {addr}, but no SMTP session: {}", describe(e))
            };
            out.push(p.finding(
                Code::Unreachable,
                message,
                format!(
                    "make the SMTP server listen on {addr} and let port {} through the firewall, or take the address out of DNS",
                    r.endpoint.address.port()
                ),
            ));
            false
        }
        Ok(d) if !d.starttls => {
            out.push(p.finding(
                Code::StarttlsNotOffered,
                format!(
                    "the EHLO reply of {addr} ({}) does not offer STARTTLS",
                    d.ehlo.summary()
                ),
                "enable STARTTLS with a certificate for the MX name (Postfix: smtpd_tls_security_level = may, smtpd_tls_chain_files = key.pem, fullchain.pem)",
            ));
            false
        }
        Ok(_) => true,
    }
}

/// `tls12_unsupported` when no handshake at all completed.
fn handshake_findings(r: &EndpointReport, p: &Place, out: &mut Vec<Finding>) {
    if r.handshakes.is_empty() || r.handshakes.iter().any(|h| h.outcome.is_ok()) {
        return;
    }
    let errors: Vec<String> = r
        .handshakes
        .iter()
        .filter_map(|h| {
            let e = h.outcome.as_ref().err()?;
            Some(format!(
                "{} {}: {}",
                h.requested.as_str(),
                sni_text(h),
                describe(e)
            ))
        })
        .collect();
    out.push(p.finding(
        Code::Tls12Unsupported,
        format!("no TLS 1.2 or 1.3 handshake completed: {}", errors.join("; ")),
        "enable TLS 1.2 and 1.3 with ECDHE and AES-GCM or ChaCha20 suites (Postfix: smtpd_tls_protocols = >=TLSv1.2, OpenSSL 1.1.1 or later)",
    ));
}

/// The certificate senders with SNI get is judged in full; the one
/// without SNI again only when it is another certificate, and for its
/// name (a warning). An address target has only the SNI-less one, judged
/// in full.
fn certificate_findings(r: &EndpointReport, p: &Place, out: &mut Vec<Finding>) {
    let sessions = |sni: bool| -> Vec<&Session> {
        r.handshakes
            .iter()
            .filter(|h| h.sni.is_some() == sni)
            .filter_map(|h| h.outcome.as_ref().ok())
            .collect()
    };
    let (with_sni, without) = (sessions(true), sessions(false));
    let by_name = r.endpoint.dns_name().is_some();
    for s in &with_sni {
        chain_findings(s, "with SNI", true, p, out);
    }
    for s in &without {
        let same = |w: &Session| leaf_sha(w).is_some() && leaf_sha(w) == leaf_sha(s);
        if !with_sni.iter().any(|w| same(w)) {
            let ctx = if by_name { "without SNI" } else { "" };
            chain_findings(s, ctx, !by_name, p, out);
        }
        // Not twice for one certificate: an error with SNI already says it.
        let failed_with_sni = with_sni
            .iter()
            .any(|w| same(w) && w.chain.name_covered == Some(false));
        if by_name && s.chain.name_covered == Some(false) && !failed_with_sni {
            out.push(p.finding(
                Code::NosniNameMismatch,
                format!(
                    "without SNI the server presents {} ({}), which does not cover {}; senders that send no SNI and check the name fail",
                    leaf_subject(s),
                    leaf_names(s),
                    p.mx
                ),
                "make the default certificate cover the primary MX name",
            ));
        }
    }
}

fn legacy_findings(r: &EndpointReport, p: &Place, out: &mut Vec<Finding>) {
    if let Some(Ok(LegacyReply::Accepted(v))) = &r.legacy {
        out.push(p.finding(
            Code::LegacyTlsAccepted,
            format!(
                "{} answers a TLS 1.1 ClientHello with a ServerHello at {}",
                p.addr,
                v.as_str()
            ),
            "set smtpd_tls_protocols = >=TLSv1.2 and smtpd_tls_mandatory_protocols = >=TLSv1.2",
        ));
    }
}

/// A finding about one chain before it is placed: code, message, fix.
type Problem = (Code, String, String);

/// The findings of one judged chain. `ctx` says which handshake it came
/// from ("with SNI", "without SNI", or "" for an address target);
/// `judge_name` adds `name_mismatch`.
fn chain_findings(s: &Session, ctx: &str, judge_name: bool, p: &Place, out: &mut Vec<Finding>) {
    let c = &s.chain;
    let mut problems = Vec::new();
    match c.leaf() {
        None => {
            if let Trust::Untrusted { detail } = &c.trust {
                problems.push((
                    Code::Untrusted,
                    detail.clone(),
                    "serve a valid certificate chain".into(),
                ));
            }
        }
        Some(leaf) => {
            problems.extend(date_problems(c, leaf));
            problems.extend(trust_problems(c, leaf));
            problems.extend(shape_problems(c));
            if judge_name && c.name_covered == Some(false) {
                problems.push((
                    Code::NameMismatch,
                    format!(
                        "the certificate {} ({}) does not cover {}",
                        leaf.subject,
                        leaf_names(s),
                        p.mx
                    ),
                    format!("put {} in the certificate's SAN", p.mx),
                ));
            }
        }
    }
    for (code, message, fix) in problems {
        let message = if ctx.is_empty() {
            format!("{}: {message}", p.addr)
        } else {
            format!("{} {ctx}: {message}", p.addr)
        };
        out.push(p.finding(code, message, fix));
    }
}

/// `expired` (leaf not valid now) and `expiring_soon`.
fn date_problems(c: &ChainReport, leaf: &CertInfo) -> Vec<Problem> {
    match c.validity {
        Validity::Expired => vec![(
            Code::Expired,
            format!(
                "the certificate {} expired on {} ({} days ago)",
                leaf.subject,
                fmt_date(leaf.not_after),
                -c.days_left
            ),
            "renew the certificate and reload the server".into(),
        )],
        Validity::NotYetValid => vec![(
            Code::Expired,
            format!(
                "the certificate {} is not valid before {}",
                leaf.subject,
                fmt_date(leaf.not_before)
            ),
            "serve the current certificate (or fix the server's clock)".into(),
        )],
        Validity::Valid if c.days_left < EXPIRING_SOON_DAYS => vec![(
            Code::ExpiringSoon,
            format!(
                "the certificate {} expires on {}, in {} days",
                leaf.subject,
                fmt_date(leaf.not_after),
                c.days_left
            ),
            "renew the certificate now and reload the server (and check that automatic renewal runs)"
                .into(),
        )],
        Validity::Valid => Vec::new(),
    }
}

/// `chain_incomplete`, `untrusted`, or `expired` for an intermediate.
fn trust_problems(c: &ChainReport, leaf: &CertInfo) -> Vec<Problem> {
    match &c.trust {
        Trust::Verified | Trust::NotJudged { .. } => Vec::new(),
        Trust::Incomplete { missing_issuer } => vec![(
            Code::ChainIncomplete,
            format!(
                "only the leaf {} is sent; its issuer {missing_issuer} is missing, and senders do not fetch it",
                leaf.subject
            ),
            "serve fullchain.pem, not cert.pem".into(),
        )],
        Trust::Untrusted { detail } => vec![(
            Code::Untrusted,
            format!("the chain does not verify to a trusted root: {detail}"),
            "use a certificate from a CA senders trust (for a private CA, probe with --ca FILE)"
                .into(),
        )],
        Trust::IntermediateNotValid { detail } => vec![(
            Code::Expired,
            format!("a CA certificate in the chain is not valid now: {detail}"),
            "serve the CA's current intermediate (a fresh fullchain.pem)".into(),
        )],
    }
}

/// `chain_misordered` and `root_included`.
fn shape_problems(c: &ChainReport) -> Vec<Problem> {
    let subject = |i: usize| c.certs.get(i).map_or("?", |x| x.subject.as_str());
    let mut v = Vec::new();
    if let Order::Misordered { index } = c.order {
        v.push((
            Code::ChainMisordered,
            format!(
                "certificate {} of {} ({}) is not the issuer of the one before it",
                index + 1,
                c.certs.len(),
                subject(index)
            ),
            "put the leaf first, then each issuer in turn (as in fullchain.pem)".into(),
        ));
    }
    for &i in &c.roots_included {
        v.push((
            Code::RootIncluded,
            format!(
                "the root {} is sent in the chain (senders have it or refuse it anyway)",
                subject(i)
            ),
            "remove the root from the chain file".into(),
        ));
    }
    v
}

/// Every address of one name should present the same certificate (with
/// SNI; without, for address targets). Compared by the leaf's SHA-256.
fn parity(reports: &[EndpointReport], out: &mut Vec<Finding>) {
    let mut by_mx: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for r in reports {
        let primary = r
            .handshakes
            .iter()
            .filter(|h| h.sni.is_some() || r.endpoint.dns_name().is_none())
            .find_map(|h| h.outcome.as_ref().ok());
        if let Some(s) = primary
            && let Some(leaf) = s.chain.leaf()
        {
            by_mx.entry(r.endpoint.mx_str()).or_default().push((
                r.endpoint.address.to_string(),
                leaf.sha256.clone(),
                leaf.subject.clone(),
            ));
        }
    }
    for (mx, seen) in by_mx {
        let mut distinct: Vec<&str> = seen.iter().map(|(_, sha, _)| sha.as_str()).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() < 2 {
            continue;
        }
        let list: Vec<String> = seen
            .iter()
            .map(|(a, sha, subject)| {
                format!("{a} {subject} (sha256 {})", &sha[..sha.len().min(16)])
            })
            .collect();
        out.push(Finding::new(
            Code::Ipv4Ipv6Mismatch,
            Some(mx.clone()),
            None,
            format!(
                "the addresses of {mx} present different certificates: {}",
                list.join("; ")
            ),
            format!(
                "serve the same certificate on every address of {mx} (check the IPv6 listener or the other host)"
            ),
        ));
    }
}

fn leaf_sha(s: &Session) -> Option<&str> {
    s.chain.leaf().map(|l| l.sha256.as_str())
}

fn leaf_subject(s: &Session) -> &str {
    s.chain.leaf().map_or("?", |l| l.subject.as_str())
}

fn leaf_names(s: &Session) -> String {
    match s.chain.leaf().map(|l| l.names.join(", ")) {
        Some(n) if !n.is_empty() => format!("names: {n}"),
        _ => "no DNS names".into(),
    }
}

fn sni_text(h: &Handshake) -> String {
    match &h.sni {
        Some(n) => format!("with SNI {n}"),
        None => "without SNI".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(code: Code, mx: &str) -> Finding {
        Finding::new(code, Some(mx.into()), None, "m", "f")
    }

    #[test]
    fn severities_follow_design_7() {
        use Code::*;
        for (code, sev) in [
            (Unreachable, Severity::Error),
            (StarttlsNotOffered, Severity::Error),
            (Tls12Unsupported, Severity::Error),
            (ChainIncomplete, Severity::Error),
            (ChainMisordered, Severity::Error),
            (Untrusted, Severity::Error),
            (NameMismatch, Severity::Error),
            (Expired, Severity::Error),
            (DaneMismatch, Severity::Error),
            (MtaStsMxNotCovered, Severity::Error),
            (MtaStsPolicyInvalid, Severity::Error),
            (Ipv4Ipv6Mismatch, Severity::Error),
            (NosniNameMismatch, Severity::Warning),
            (RootIncluded, Severity::Warning),
            (LegacyTlsAccepted, Severity::Warning),
            (ExpiringSoon, Severity::Warning),
            (TlsrptMissing, Severity::Warning),
            (PtrMismatch, Severity::Info),
        ] {
            assert_eq!(code.severity(), sev, "{}", code.as_str());
        }
    }

    #[test]
    fn ranking_puts_what_stops_all_tls_first_and_info_last() {
        let mut v = vec![
            f(Code::PtrMismatch, "a"),
            f(Code::RootIncluded, "a"),
            f(Code::NameMismatch, "b"),
            f(Code::NameMismatch, "a"),
            f(Code::StarttlsNotOffered, "z"),
            f(Code::ExpiringSoon, "a"),
            f(Code::Expired, "c"),
        ];
        rank(&mut v);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|f| (f.code.as_str(), f.mx.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("starttls_not_offered", "z"),
                ("expired", "c"),
                ("name_mismatch", "a"),
                ("name_mismatch", "b"),
                ("expiring_soon", "a"),
                ("root_included", "a"),
                ("ptr_mismatch", "a"),
            ]
        );
    }

    #[test]
    fn exit_codes_ignore_info() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[f(Code::PtrMismatch, "a")]), 0);
        assert_eq!(
            exit_code(&[f(Code::PtrMismatch, "a"), f(Code::RootIncluded, "a")]),
            1
        );
        assert_eq!(
            exit_code(&[f(Code::RootIncluded, "a"), f(Code::Untrusted, "a")]),
            2
        );
    }

    #[test]
    fn mta_sts_blockers_are_errors_and_the_no_sni_name() {
        let v = [
            f(Code::RootIncluded, "a"),
            f(Code::NosniNameMismatch, "a"),
            f(Code::Untrusted, "a"),
            f(Code::PtrMismatch, "a"),
        ];
        let codes: Vec<Code> = mta_sts_blockers(&v).iter().map(|f| f.code).collect();
        assert_eq!(codes, [Code::NosniNameMismatch, Code::Untrusted]);
    }

    #[test]
    fn dane_and_address_parity_do_not_block_mta_sts() {
        let v = [
            f(Code::DaneMismatch, "a"),
            f(Code::Ipv4Ipv6Mismatch, "a"),
            f(Code::MtaStsMxNotCovered, "b"),
            f(Code::MtaStsPolicyInvalid, "c"),
            f(Code::Unreachable, "d"),
            f(Code::TlsrptMissing, "e"),
        ];
        let codes: Vec<Code> = mta_sts_blockers(&v).iter().map(|f| f.code).collect();
        assert_eq!(
            codes,
            [
                Code::MtaStsMxNotCovered,
                Code::MtaStsPolicyInvalid,
                Code::Unreachable
            ]
        );
    }
}
