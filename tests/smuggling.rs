//! SMTP smuggling (CVE-2023-51764 class, DESIGN.md §2 "Message
//! boundaries"), tried as an attacker would: each end-of-data sequence of
//! the published research (SEC Consult, Dec 2023) ends a first message,
//! followed by `MAIL FROM:<smuggled@evil.test>`, `RCPT TO`, `DATA` and a
//! second message, then the real `<CR><LF>.<CR><LF>` and QUIT, all in one
//! write. Plaintext (opportunistic listener) and after STARTTLS, with
//! `bare_newline = "normal"` and `"strict"`, into a real Postfix (with and
//! without `smtpd_forbid_bare_newline`) and into the built-in sink. What
//! counts is what the backend's Maildir finally holds: never a message from
//! the smuggled sender.
//!
//! Needs root and the packages from scripts/install-test-deps.sh; a missing
//! peer fails the test.

mod support;

use std::sync::{Arc, Mutex, Weak};

use support::*;

// === The attack ===

/// One end-of-data sequence and what the proxy does with it.
struct Sequence {
    /// As the research writes it.
    name: &'static str,
    /// For addresses and subjects.
    id: &'static str,
    bytes: &'static [u8],
    /// `normal`: logged and counted as a smuggling attempt (a lone dot, or
    /// a dot with NUL/CR only before text, at a line start that is not the
    /// real end). A dot after a bare CR is inside a line: content, uncounted.
    counted: bool,
    /// Dots of the sequence left in the delivered body (a client's leading
    /// dot is dot-stuffing, undone by the backend: `<LF>.<CR>MAIL` is the
    /// line `<CR>MAIL`).
    kept_dots: usize,
    /// What `strict` answers at the end of the content.
    strict: Strict,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Strict {
    /// No bare LF: one message, delivered with the sequence as content.
    Delivered,
    /// `521 5.5.2` with this text, the backend holds nothing.
    Refused(&'static str),
}

const BARE_LF: &str = "Error: bare <LF> received";
const FALSE_END: &str = "Error: end-of-data sequence not bounded by <CR><LF> received";

const SEQUENCES: &[Sequence] = &[
    Sequence {
        name: "<LF>.<LF>",
        id: "lf-dot-lf",
        bytes: b"\n.\n",
        counted: true,
        kept_dots: 1,
        strict: Strict::Refused(BARE_LF),
    },
    Sequence {
        name: "<LF>.<CR>",
        id: "lf-dot-cr",
        bytes: b"\n.\r",
        counted: true,
        kept_dots: 0,
        strict: Strict::Refused(BARE_LF),
    },
    Sequence {
        name: "<CR>.<LF>",
        id: "cr-dot-lf",
        bytes: b"\r.\n",
        counted: false,
        kept_dots: 1,
        strict: Strict::Refused(BARE_LF),
    },
    Sequence {
        name: "<CR>.<CR>",
        id: "cr-dot-cr",
        bytes: b"\r.\r",
        counted: false,
        kept_dots: 1,
        strict: Strict::Delivered,
    },
    Sequence {
        name: "<LF>.<CR><LF>",
        id: "lf-dot-crlf",
        bytes: b"\n.\r\n",
        counted: true,
        kept_dots: 1,
        strict: Strict::Refused(BARE_LF),
    },
    Sequence {
        name: "<CR>.<CR><LF>",
        id: "cr-dot-crlf",
        bytes: b"\r.\r\n",
        counted: false,
        kept_dots: 1,
        strict: Strict::Delivered,
    },
    Sequence {
        name: "<CR><LF><NUL>.<CR><LF>",
        id: "crlf-nul-dot-crlf",
        bytes: b"\r\n\0.\r\n",
        counted: true,
        kept_dots: 1,
        strict: Strict::Refused(FALSE_END),
    },
    Sequence {
        name: "<CR><LF>.<LF>",
        id: "crlf-dot-lf",
        bytes: b"\r\n.\n",
        counted: true,
        kept_dots: 1,
        strict: Strict::Refused(FALSE_END),
    },
    Sequence {
        name: "<LF>..<LF>",
        id: "lf-dot-dot-lf",
        bytes: b"\n..\n",
        counted: false,
        kept_dots: 1,
        strict: Strict::Refused(BARE_LF),
    },
];

const SMUGGLED_FROM: &str = "smuggled@evil.test";

fn victim(tag: &str) -> String {
    format!("victim-{tag}@example.test")
}

/// DATA content as the research sends it: a first message, the sequence,
/// the smuggled transaction, the real end, QUIT.
fn payload(seq: &Sequence, tag: &str) -> Vec<u8> {
    let victim = victim(tag);
    let mut p = format!(
        "From: <first@sender.test>\r\nTo: <{victim}>\r\nSubject: first {tag}\r\n\r\nfirst body"
    )
    .into_bytes();
    p.extend_from_slice(seq.bytes);
    p.extend_from_slice(
        format!(
            "MAIL FROM:<{SMUGGLED_FROM}>\r\nRCPT TO:<{victim}>\r\nDATA\r\n\
             From: <{SMUGGLED_FROM}>\r\nTo: <{victim}>\r\nSubject: smuggled {tag}\r\n\r\n\
             smuggled body\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    );
    p
}

/// How the attacker's session runs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Transport {
    /// No TLS: to the proxy's opportunistic listener (MAIL before
    /// STARTTLS makes it a plaintext relay), or to a backend directly.
    Plain,
    /// Through the proxy after STARTTLS and a verified rustls handshake.
    StartTls,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::StartTls => "tls",
        }
    }
}

/// Runs the attack; the replies after the 354, up to the close.
fn attack(
    proxy: Option<&Proxy>,
    to: std::net::SocketAddr,
    t: Transport,
    seq: &Sequence,
    tag: &str,
) -> Vec<String> {
    let mut c = match t {
        Transport::StartTls => tls_session(proxy.expect("STARTTLS goes through the proxy")),
        Transport::Plain => {
            let mut c = Smtp::connect(to);
            c.expect("220");
            c
        }
    };
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("MAIL FROM:<first@sender.test>", "250");
    c.cmd(&format!("RCPT TO:<{}>", victim(tag)), "250");
    c.cmd("DATA", "354");
    c.send_raw(&payload(seq, tag));
    c.replies_until_close()
}

/// An ordinary message in a session of its own: once it is delivered,
/// anything the backend was going to deliver before has had its chance.
fn control(to: std::net::SocketAddr, tag: &str) {
    let mut c = Smtp::connect(to);
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("MAIL FROM:<first@sender.test>", "250");
    c.cmd(&format!("RCPT TO:<{}>", victim(tag)), "250");
    c.cmd("DATA", "354");
    c.send_raw(format!("Subject: first {tag}\r\n\r\ncontrol\r\n.\r\n").as_bytes());
    c.expect("250");
    c.cmd("QUIT", "221");
}

// === What the backend holds ===

/// One delivered file: the header section (CRs dropped) and the body.
struct Stored {
    head: String,
    body: Vec<u8>,
}

impl Stored {
    fn parse(raw: &[u8]) -> Stored {
        let (head, body) = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|sep| {
                let at = raw.windows(sep.len()).position(|w| w == *sep)?;
                Some((at, &raw[at + sep.len()..]))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(at, body)| (&raw[..at], body))
            .unwrap_or((raw, &[]));
        Stored {
            head: String::from_utf8_lossy(head).replace('\r', ""),
            body: body.to_vec(),
        }
    }

    fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then_some(v.trim())
            })
            .collect()
    }

    fn delivered_to(&self, tag: &str) -> bool {
        self.headers("Delivered-To")
            .iter()
            .any(|v| v.trim_matches(['<', '>']) == victim(tag))
    }

    /// From the smuggled transaction: its envelope sender or its headers.
    fn is_smuggled(&self) -> bool {
        self.headers("Return-Path")
            .iter()
            .chain(self.headers("From").iter())
            .any(|v| v.contains(SMUGGLED_FROM))
            || self
                .headers("Subject")
                .iter()
                .any(|v| v.starts_with("smuggled"))
    }

    fn text(&self) -> String {
        format!("{}\n\n{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// Where one test's messages land.
enum Store<'a> {
    Postfix(&'a PostfixBackend),
    Sink(&'a Proxy),
}

impl Store<'_> {
    fn messages(&self) -> Vec<Stored> {
        let raw = match self {
            Store::Postfix(b) => b.messages(),
            Store::Sink(p) => p.sink_messages(),
        };
        raw.iter().map(|m| Stored::parse(m)).collect()
    }

    /// Polls until every tag has a message, then returns everything held.
    fn wait_for_tags(&self, tags: &[String]) -> Vec<Stored> {
        wait_for(&format!("delivery of {tags:?}"), TIMEOUT, || {
            let all = self.messages();
            tags.iter()
                .all(|t| all.iter().any(|m| m.delivered_to(t)))
                .then_some(all)
        })
    }
}

/// The smuggled messages held for this test's victims (`label` starts
/// their tags; a shared Postfix also holds other tests' messages, among
/// them the ones smuggled on purpose into a Postfix reached directly).
fn smuggled(all: &[Stored], label: &str) -> Vec<String> {
    let mine = format!("victim-{label}-");
    all.iter()
        .filter(|m| m.is_smuggled())
        .filter(|m| {
            m.headers("Delivered-To")
                .iter()
                .any(|v| v.trim_start_matches('<').starts_with(&mine))
        })
        .map(|m| m.text())
        .collect()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// === Shared Postfix backends ===

/// `smtpd_forbid_bare_newline` of a shared Postfix backend.
#[derive(Clone, Copy)]
enum Forbid {
    Yes,
    No,
}

impl Forbid {
    fn as_str(self) -> &'static str {
        match self {
            Forbid::Yes => "yes",
            Forbid::No => "no",
        }
    }

    /// Fixed loopback ports (Postfix cannot bind port 0 and tell us); no
    /// other test binary uses them (see tests/load_postfix.rs for theirs).
    fn port(self) -> u16 {
        match self {
            Forbid::Yes => 14150,
            Forbid::No => 14151,
        }
    }
}

/// One Postfix per setting for the tests of this binary that run at the
/// same time; stopped when the last of them lets go.
fn postfix(forbid: Forbid) -> Arc<PostfixBackend> {
    static SHARED: [Mutex<Weak<PostfixBackend>>; 2] =
        [Mutex::new(Weak::new()), Mutex::new(Weak::new())];
    let mut slot = SHARED[forbid as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = slot.upgrade() {
        return b;
    }
    // The last user may still be stopping the previous instance.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], forbid.port()));
    wait_for(&format!("port {} free", forbid.port()), TIMEOUT, || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
    let b = Arc::new(PostfixBackend::start(
        forbid.port(),
        &[("FORBID_BARE_NEWLINE", forbid.as_str())],
    ));
    *slot = Arc::downgrade(&b);
    b
}

// === Through the proxy ===

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Normal,
    Strict,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Strict => "strict",
        }
    }
}

fn proxy_config(base: ProxyConfig, mode: Mode) -> ProxyConfig {
    base.append(&format!(
        "\n[limits]\nbare_newline = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        mode.as_str()
    ))
}

fn smuggling_metric(proxy: &Proxy) -> f64 {
    proxy
        .metric(&format!(
            "starttls_proxy_smtp_smuggling_attempts_total{{listener=\"{}\"}}",
            proxy.addr()
        ))
        .unwrap_or(0.0)
}

/// Every sequence, plaintext and after STARTTLS, through `proxy` into
/// `store`; asserts on the replies, the counter, and what is delivered.
fn attack_through_proxy(label: &str, proxy: &Proxy, store: Store, mode: Mode) {
    let mut failures = Vec::new();
    let mut expected_counted = 0;
    let mut delivered_tags = Vec::new();
    let mut refused_tags = Vec::new();
    for t in [Transport::Plain, Transport::StartTls] {
        for seq in SEQUENCES {
            let tag = format!("{label}-{}-{}", t.as_str(), seq.id);
            let what = format!("{} {} ({label}, {})", seq.name, t.as_str(), mode.as_str());
            let before = smuggling_metric(proxy);
            let replies = attack(Some(proxy), proxy.addr(), t, seq, &tag);
            let counted = smuggling_metric(proxy) - before;
            let refused = match (mode, seq.strict) {
                (Mode::Strict, Strict::Refused(text)) => Some(text),
                _ => None,
            };
            match refused {
                Some(text) => {
                    refused_tags.push((what.clone(), tag));
                    let ok = replies.len() == 1
                        && replies[0].starts_with("521 5.5.2 ")
                        && replies[0].contains(text);
                    if !ok {
                        failures.push(format!(
                            "{what}: want one 521 5.5.2 {text:?} and a close, got {replies:?}"
                        ));
                    }
                }
                None => {
                    delivered_tags.push((what.clone(), tag, seq));
                    let ok = replies.len() == 2
                        && replies[0].starts_with("250 2.0.0 Ok: queued as")
                        && replies[1].starts_with("221");
                    if !ok {
                        failures.push(format!(
                            "{what}: want one 250 (one message) and 221, got {replies:?}"
                        ));
                    }
                    let want = if seq.counted { 1.0 } else { 0.0 };
                    expected_counted += usize::from(seq.counted);
                    if counted != want {
                        failures.push(format!(
                            "{what}: smuggling attempts counted {counted}, want {want}"
                        ));
                    }
                }
            }
        }
    }
    // Anything the backend was going to deliver has been by the time a
    // message sent afterwards, in a new session, is.
    let control_tag = format!("{label}-control");
    control(proxy.addr(), &control_tag);
    let mut tags: Vec<String> = delivered_tags.iter().map(|(_, t, _)| t.clone()).collect();
    tags.push(control_tag);
    let all = store.wait_for_tags(&tags);

    for (what, tag, seq) in &delivered_tags {
        let mine: Vec<&Stored> = all.iter().filter(|m| m.delivered_to(tag)).collect();
        if mine.len() != 1 {
            failures.push(format!("{what}: {} messages delivered, want 1", mine.len()));
            continue;
        }
        let m = mine[0];
        let text = m.text();
        if m.headers("Return-Path") != ["<first@sender.test>"] {
            failures.push(format!("{what}: not the first message:\n{text}"));
        }
        if m.headers("Subject") != [format!("first {tag}").as_str()] {
            failures.push(format!("{what}: subject:\n{text}"));
        }
        // The rest of the attack is the first message's body: the
        // sequence's dot kept as content, the smuggled commands as text.
        let body = &m.body;
        let (Some(start), Some(mail)) = (
            find(body, b"first body"),
            find(body, format!("MAIL FROM:<{SMUGGLED_FROM}>").as_bytes()),
        ) else {
            failures.push(format!(
                "{what}: the smuggled commands are not in the body:\n{text}"
            ));
            continue;
        };
        let between = &body[start + b"first body".len()..mail];
        if count(between, b".") != seq.kept_dots {
            failures.push(format!(
                "{what}: {between:?} between the first body and the smuggled MAIL, want {} dot(s)",
                seq.kept_dots
            ));
        }
        let rest = &body[mail..];
        for needle in [
            format!("RCPT TO:<{}>", victim(tag)),
            "DATA".into(),
            format!("Subject: smuggled {tag}"),
            "smuggled body".into(),
        ] {
            if find(rest, needle.as_bytes()).is_none() {
                failures.push(format!("{what}: {needle:?} missing from the body:\n{text}"));
            }
        }
    }
    for (what, tag) in &refused_tags {
        let n = all.iter().filter(|m| m.delivered_to(tag)).count();
        if n != 0 {
            failures.push(format!(
                "{what}: refused with 521, yet the backend holds {n} message(s) of it"
            ));
        }
    }
    if let (Store::Postfix(b), false) = (&store, refused_tags.is_empty()) {
        // Postfix saw each refused transaction end without a terminator.
        let log = b.dir.join("log/maillog");
        wait_for(
            &format!(
                "{} lost connections after DATA in {}",
                refused_tags.len(),
                log.display()
            ),
            TIMEOUT,
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                (text.matches("lost connection after DATA").count() >= refused_tags.len())
                    .then_some(())
            },
        );
    }
    for m in smuggled(&all, label) {
        failures.push(format!(
            "SMUGGLED MESSAGE DELIVERED ({label}, {}):\n{m}",
            mode.as_str()
        ));
    }
    // The log says it as often as the counter does.
    let logged = proxy
        .logs_with("SMTP smuggling attempt: lone dot not bounded by CRLF, sent on as content")
        .len();
    if mode == Mode::Normal && logged != expected_counted {
        failures.push(format!(
            "{logged} smuggling attempts logged, want {expected_counted}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn through_proxy_into_postfix(forbid: Forbid, mode: Mode) {
    let backend = postfix(forbid);
    let config = ProxyConfig::servers(&[backend.addr()]).replace(
        &format!("servers = [\"{}\"]", backend.addr()),
        &format!("servers = [\"{}\"]\nidentity = \"none\"", backend.addr()),
    );
    let proxy = Proxy::start(proxy_config(config, mode));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        1,
        "{}",
        proxy.all_logs()
    );
    let label = format!("pf{}-{}", forbid.as_str(), mode.as_str());
    attack_through_proxy(&label, &proxy, Store::Postfix(&backend), mode);
}

#[test]
fn postfix_forbidding_bare_newlines_normal_mode() {
    through_proxy_into_postfix(Forbid::Yes, Mode::Normal);
}

#[test]
fn postfix_forbidding_bare_newlines_strict_mode() {
    through_proxy_into_postfix(Forbid::Yes, Mode::Strict);
}

#[test]
fn postfix_taking_bare_newlines_normal_mode() {
    through_proxy_into_postfix(Forbid::No, Mode::Normal);
}

#[test]
fn postfix_taking_bare_newlines_strict_mode() {
    through_proxy_into_postfix(Forbid::No, Mode::Strict);
}

fn through_proxy_into_sink(mode: Mode) {
    let proxy = Proxy::start(proxy_config(ProxyConfig::sink(), mode));
    let label = format!("sink-{}", mode.as_str());
    attack_through_proxy(&label, &proxy, Store::Sink(&proxy), mode);
}

#[test]
fn sink_normal_mode() {
    through_proxy_into_sink(Mode::Normal);
}

#[test]
fn sink_strict_mode() {
    through_proxy_into_sink(Mode::Strict);
}

// === Postfix reached directly (the baseline of issue 10) ===

/// Every sequence straight into Postfix: which ones the backend split into
/// two messages (a second `queued as` reply, a message from the smuggled
/// sender in the Maildir).
fn attack_directly(forbid: Forbid) -> Vec<&'static str> {
    let backend = postfix(forbid);
    let label = format!("direct-pf{}", forbid.as_str());
    let mut split = Vec::new();
    let mut tags = Vec::new();
    for seq in SEQUENCES {
        let tag = format!("{label}-{}", seq.id);
        let replies = attack(None, backend.addr(), Transport::Plain, seq, &tag);
        let queued = replies.iter().filter(|r| r.contains("queued as")).count();
        assert!(
            queued >= 1,
            "{}: the first message was not taken: {replies:?}",
            seq.name
        );
        tags.push(tag.clone());
        if queued > 1 {
            split.push((seq.name, tag));
        }
    }
    let control_tag = format!("{label}-control");
    control(backend.addr(), &control_tag);
    tags.push(control_tag);
    let all = Store::Postfix(&backend).wait_for_tags(&tags);
    let mut smuggled_seqs = Vec::new();
    for seq in SEQUENCES {
        let tag = format!("{label}-{}", seq.id);
        let smuggled = all.iter().any(|m| m.delivered_to(&tag) && m.is_smuggled());
        let was_split = split.iter().any(|(name, _)| *name == seq.name);
        assert_eq!(
            smuggled, was_split,
            "{}: smuggled message delivered {smuggled}, second 250 {was_split}",
            seq.name
        );
        if smuggled {
            smuggled_seqs.push(seq.name);
        }
    }
    smuggled_seqs
}

/// The defence the proxy must not undo: Postfix with the fix and no
/// exclusions, reached directly, delivers no smuggled message.
#[test]
fn postfix_forbidding_bare_newlines_directly_delivers_no_smuggled_message() {
    let smuggled = attack_directly(Forbid::Yes);
    assert!(
        smuggled.is_empty(),
        "Postfix itself delivered smuggled messages for {smuggled:?}"
    );
}

/// Shows the attack works: Postfix without the fix, reached directly, is
/// smuggled into by the bare-LF ends (the proxy in front stops them, above).
#[test]
fn postfix_taking_bare_newlines_directly_is_smuggled_into() {
    let smuggled = attack_directly(Forbid::No);
    assert_eq!(smuggled, ["<LF>.<LF>", "<LF>.<CR><LF>", "<CR><LF>.<LF>"]);
}
