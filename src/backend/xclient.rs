//! `identity = "xclient"`: after the backend's greeting the proxy says
//! `EHLO`, then `XCLIENT ADDR=… PORT=… PROTO=… HELO=… NAME=… DESTADDR=…
//! DESTPORT=…` (Postfix's and Exim's XCLIENT; Postfix ≥ 3.8 announces
//! DESTADDR and DESTPORT), and the backend greets again with 220. Only the
//! attributes the backend announced are sent.
//!
//! Every value is xtext-encoded (RFC 3461 §4), and NAME only ever comes
//! from a forward-confirmed reverse lookup (PTR, then A/AAAA containing the
//! client's address) whose result is a syntactically valid host name —
//! otherwise `[UNAVAILABLE]` (or `[TEMPUNAVAIL]` when DNS failed). A PTR
//! record is attacker-controlled text: nginx's mail proxy passed it on
//! unchecked (CVE-2026-28753).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::smtp::command::Command;

/// The whole lookup (PTR and the forward confirmations) is bounded by this.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many PTR names are forward-checked.
const MAX_PTR_NAMES: usize = 8;

/// What the backend is told the client's name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientName {
    /// Forward-confirmed and syntax-checked, lowercased, no trailing dot.
    Verified(String),
    /// No PTR, or none that confirms.
    Unavailable,
    /// DNS did not answer in time or failed.
    TempUnavailable,
}

impl ClientName {
    pub fn as_xclient(&self) -> String {
        match self {
            Self::Verified(n) => xtext(n),
            Self::Unavailable => "[UNAVAILABLE]".to_string(),
            Self::TempUnavailable => "[TEMPUNAVAIL]".to_string(),
        }
    }
}

/// The resolver for forward-confirmed reverse lookups.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

impl Dns {
    /// `servers`: the configured `[dns] nameservers`, else the system's
    /// resolv.conf. The hosts file is not consulted: a name from it is not
    /// a DNS fact about the client.
    pub fn new(servers: Option<&[SocketAddr]>) -> Result<Self, ResolveError> {
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let builder = match servers {
            Some(list) => {
                let mut config = ResolverConfig::new();
                for s in list {
                    config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                    config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
                }
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio()?,
        };
        Ok(Self {
            resolver: builder.with_options(opts).build(),
        })
    }

    /// The client's forward-confirmed name.
    pub async fn client_name(&self, ip: IpAddr) -> ClientName {
        tokio::time::timeout(LOOKUP_TIMEOUT, self.fcrdns(ip))
            .await
            .unwrap_or(ClientName::TempUnavailable)
    }

    async fn fcrdns(&self, ip: IpAddr) -> ClientName {
        let ptrs = match self.resolver.reverse_lookup(ip).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return ClientName::Unavailable,
            Err(_) => return ClientName::TempUnavailable,
        };
        let mut temp_failure = false;
        let names: Vec<String> = ptrs.iter().map(|p| p.0.to_ascii()).collect();
        for raw in names.iter().take(MAX_PTR_NAMES) {
            let Some(name) = host_name(raw) else { continue };
            match self.resolver.lookup_ip(format!("{name}.")).await {
                Ok(addrs) if addrs.iter().any(|a| a == ip) => return ClientName::Verified(name),
                Ok(_) => {}
                Err(e) if e.is_no_records_found() => {}
                Err(_) => temp_failure = true,
            }
        }
        if temp_failure {
            ClientName::TempUnavailable
        } else {
            ClientName::Unavailable
        }
    }
}

/// A PTR result fit to be a host name: LDH labels (no `_`), at most 253
/// bytes, not all-numeric at the top. Lowercased, trailing dot removed.
pub fn host_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let tld_ok = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()));
    (!name.is_empty() && name.len() <= 253 && name.contains('.') && labels_ok && tld_ok)
        .then(|| name.to_ascii_lowercase())
}

/// RFC 3461 §4 xtext: `!`..`~` except `+` and `=` as is, the rest `+XX`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// How the client greeted (XCLIENT `PROTO`): Postfix writes it into its
/// `Received:` header (`with SMTP`/`with ESMTP`) and never downgrades
/// ESMTP to SMTP on a later HELO, so it has to be right from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// The client said HELO.
    Smtp,
    /// The client said EHLO, or has not greeted yet (implicit TLS, or
    /// after STARTTLS, which only an EHLO client is offered).
    Esmtp,
}

impl Proto {
    /// From the client's HELO/EHLO command line (without CRLF), if it
    /// greeted in the session state the backend is joining.
    pub fn of_greeting(line: Option<&[u8]>) -> Self {
        match line.map(Command::parse) {
            Some(Command::Helo(_)) => Self::Smtp,
            _ => Self::Esmtp,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Smtp => "SMTP",
            Self::Esmtp => "ESMTP",
        }
    }
}

/// The facts for one XCLIENT command.
#[derive(Debug, Clone)]
pub struct XclientFacts<'a> {
    pub client: SocketAddr,
    /// The listener address the client connected to (DESTADDR/DESTPORT).
    pub local: SocketAddr,
    pub proto: Proto,
    pub helo: Option<&'a str>,
    pub name: &'a ClientName,
}

/// An address as XCLIENT takes it: IPv4 as is (also when it reached a
/// dual-stack socket as `::ffff:a.b.c.d`), IPv6 with the `IPV6:` prefix.
fn xclient_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPV6:{v6}"),
        },
    }
}

/// The XCLIENT command line (CRLF included), with only the attributes the
/// backend announced in its EHLO (`XCLIENT NAME ADDR PORT PROTO HELO …`).
pub fn command(facts: &XclientFacts<'_>, announced: &[String]) -> String {
    let offers = |attr: &str| announced.iter().any(|a| a.eq_ignore_ascii_case(attr));
    let mut parts = vec!["XCLIENT".to_string()];
    if offers("ADDR") {
        parts.push(format!("ADDR={}", xtext(&xclient_addr(facts.client.ip()))));
    }
    if offers("PORT") {
        parts.push(format!("PORT={}", facts.client.port()));
    }
    if offers("PROTO") {
        parts.push(format!("PROTO={}", facts.proto.as_str()));
    }
    if offers("HELO") {
        // Postfix refuses a HELO over 255 bytes (501), which would fail
        // the whole session: such a name is left out.
        if let Some(h) = facts.helo.filter(|h| !h.is_empty() && h.len() <= 255) {
            parts.push(format!("HELO={}", xtext(h)));
        }
    }
    if offers("NAME") {
        parts.push(format!("NAME={}", facts.name.as_xclient()));
    }
    if offers("DESTADDR") {
        let dest = xclient_addr(facts.local.ip());
        parts.push(format!("DESTADDR={}", xtext(&dest)));
    }
    if offers("DESTPORT") {
        parts.push(format!("DESTPORT={}", facts.local.port()));
    }
    format!("{}\r\n", parts.join(" "))
}

/// The attributes after `XCLIENT` in an EHLO reply's lines, if offered.
pub fn announced(ehlo_lines: &[String]) -> Option<Vec<String>> {
    ehlo_lines.iter().skip(1).find_map(|l| {
        let mut words = l.split_ascii_whitespace();
        words
            .next()
            .filter(|k| k.eq_ignore_ascii_case("XCLIENT"))
            .map(|_| words.map(str::to_string).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encodes_everything_outside_the_safe_range() {
        assert_eq!(xtext("mx.example.test"), "mx.example.test");
        assert_eq!(xtext("a b"), "a+20b");
        assert_eq!(xtext("x+y=z"), "x+2By+3Dz");
        assert_eq!(xtext("evil\r\nMAIL"), "evil+0D+0AMAIL");
        assert_eq!(xtext("é"), "+C3+A9");
    }

    #[test]
    fn only_host_names_pass() {
        assert_eq!(
            host_name("Mail.Example.TEST."),
            Some("mail.example.test".into())
        );
        assert_eq!(host_name("localhost"), None);
        assert_eq!(host_name("a b.example.test"), None);
        assert_eq!(host_name("x.example.test NAME=admin"), None);
        assert_eq!(host_name("-x.example.test"), None);
        assert_eq!(host_name("_dmarc.example.test"), None);
        assert_eq!(host_name("1.2.3.4"), None);
        assert_eq!(host_name(&format!("{}.test", "a".repeat(64))), None);
    }

    fn attrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_sends_only_what_the_backend_announced() {
        let name = ClientName::Verified("client.example.test".into());
        let facts = XclientFacts {
            client: "[2001:db8::5]:40000".parse().unwrap(),
            local: "[2001:db8::25]:25".parse().unwrap(),
            proto: Proto::Esmtp,
            helo: Some("odd helo=x"),
            name: &name,
        };
        let all = attrs(&["NAME", "ADDR", "PORT", "PROTO", "HELO"]);
        assert_eq!(
            command(&facts, &all),
            "XCLIENT ADDR=IPV6:2001:db8::5 PORT=40000 PROTO=ESMTP HELO=odd+20helo+3Dx NAME=client.example.test\r\n"
        );
        assert_eq!(
            command(&facts, &["ADDR".to_string()]),
            "XCLIENT ADDR=IPV6:2001:db8::5\r\n"
        );
        let long = "h".repeat(256);
        let facts_long = XclientFacts {
            helo: Some(&long),
            ..facts.clone()
        };
        assert!(!command(&facts_long, &all).contains("HELO="));
        let unavailable = ClientName::Unavailable;
        let facts = XclientFacts {
            client: "192.0.2.7:25".parse().unwrap(),
            local: "198.51.100.1:25".parse().unwrap(),
            proto: Proto::Esmtp,
            helo: None,
            name: &unavailable,
        };
        assert_eq!(
            command(&facts, &all),
            "XCLIENT ADDR=192.0.2.7 PORT=25 PROTO=ESMTP NAME=[UNAVAILABLE]\r\n"
        );
    }

    #[test]
    fn proto_says_smtp_after_helo() {
        assert_eq!(Proto::of_greeting(Some(b"HELO c.test")), Proto::Smtp);
        assert_eq!(Proto::of_greeting(Some(b"helo c.test")), Proto::Smtp);
        assert_eq!(Proto::of_greeting(Some(b"EHLO c.test")), Proto::Esmtp);
        assert_eq!(Proto::of_greeting(None), Proto::Esmtp);
        let name = ClientName::Unavailable;
        let facts = XclientFacts {
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "198.51.100.1:25".parse().unwrap(),
            proto: Proto::of_greeting(Some(b"HELO c.test")),
            helo: Some("c.test"),
            name: &name,
        };
        assert_eq!(
            command(&facts, &attrs(&["PROTO", "HELO"])),
            "XCLIENT PROTO=SMTP HELO=c.test\r\n"
        );
    }

    #[test]
    fn destaddr_and_destport_when_announced() {
        let name = ClientName::Unavailable;
        let facts = XclientFacts {
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "[::ffff:198.51.100.1]:587".parse().unwrap(),
            proto: Proto::Esmtp,
            helo: None,
            name: &name,
        };
        // Postfix 3.8's announcement, in its order.
        let postfix = attrs(&[
            "NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT",
        ]);
        assert_eq!(
            command(&facts, &postfix),
            "XCLIENT ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP NAME=[UNAVAILABLE] DESTADDR=198.51.100.1 DESTPORT=587\r\n"
        );
        assert_eq!(
            command(&facts, &attrs(&["destport"])),
            "XCLIENT DESTPORT=587\r\n"
        );
        let v6 = XclientFacts {
            local: "[2001:db8::25]:25".parse().unwrap(),
            ..facts.clone()
        };
        assert_eq!(
            command(&v6, &attrs(&["DESTADDR"])),
            "XCLIENT DESTADDR=IPV6:2001:db8::25\r\n"
        );
        let without = command(&facts, &attrs(&["NAME", "ADDR", "PORT", "PROTO", "HELO"]));
        assert!(!without.contains("DEST"), "{without}");
    }

    #[test]
    fn announced_attributes_are_read_from_the_ehlo_reply() {
        let lines: Vec<String> = [
            "b.test",
            "PIPELINING",
            "XCLIENT NAME ADDR PROTO HELO",
            "8BITMIME",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            announced(&lines),
            Some(vec![
                "NAME".into(),
                "ADDR".into(),
                "PROTO".into(),
                "HELO".into()
            ])
        );
        assert_eq!(announced(&lines[..2]), None);
    }
}
