//! docs/operations.md section 9 (troubleshooting) names every value an
//! operator can meet in the logs and metrics: each handshake failure
//! `reason`, each `session` line `outcome` and each connection rejection
//! `reason` the code can produce. The lists come from the code itself:
//! `alert_label` through the library, the rest as the string literals of
//! the functions and log calls that produce them (read as text; each list
//! is checked for values it must hold, so a change that breaks the
//! extraction fails here instead of checking nothing).

use std::collections::BTreeSet;
use std::path::PathBuf;

fn read(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The part of `text` from `from` to the next `to` after it.
fn between<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not found"));
    let rest = &text[start..];
    let end = rest[from.len()..]
        .find(to)
        .unwrap_or_else(|| panic!("{to:?} not found after {from:?}"));
    &rest[..from.len() + end]
}

/// The string literals that follow `marker` in `text` (`=> "x"`,
/// `outcome = "x"`): the text up to the next `"` after the marker.
fn literals_after(text: &str, marker: &str) -> Vec<String> {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

/// Every string literal in `text` (no escapes in the ones read here).
fn all_literals(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn must_hold(what: &str, set: &BTreeSet<String>, values: &[&str]) {
    for v in values {
        assert!(set.contains(*v), "{what}: {v:?} not extracted: {set:?}");
    }
}

/// Handshake failure reasons: `HandshakeFailure::reason` and
/// `tls_reason` (src/tls/acceptor.rs), the ClientHello on a STARTTLS
/// port (src/session.rs) and every alert label.
fn handshake_reasons() -> BTreeSet<String> {
    let acceptor = read("src/tls/acceptor.rs");
    let code = between(
        &acceptor,
        "impl HandshakeFailure {",
        "pub enum HandshakeError",
    );
    let mut set: BTreeSet<String> = literals_after(code, "=> \"").into_iter().collect();
    let session = read("src/session.rs");
    set.extend(literals_after(&session, "let reason = \""));
    set.extend((0..=255u8).map(|c| starttls_proxy::tls::hello::alert_label(c).to_string()));
    must_hold(
        "handshake reasons",
        &set,
        &[
            "timeout",
            "eof",
            "reset",
            "not_tls",
            "protocol_version",
            "no_shared_cipher",
            "other:io",
            "other:tls",
            "implicit_tls_on_starttls_port",
            "alert_received:unknown_ca",
            "alert_received:other",
        ],
    );
    set
}

/// Session outcomes: `RelayEnd::as_str` (src/relay.rs), and in
/// src/session.rs every `outcome = "…"` and every literal passed to
/// `log_plain_end`.
fn session_outcomes() -> BTreeSet<String> {
    let relay = read("src/relay.rs");
    let code = between(&relay, "impl RelayEnd {", "\n}\n");
    let mut set: BTreeSet<String> = literals_after(code, "=> \"").into_iter().collect();
    let session = read("src/session.rs");
    set.extend(literals_after(&session, "outcome = \""));
    for (i, _) in session.match_indices("log_plain_end(") {
        let call = &session[i..];
        if call.starts_with("log_plain_end(peer: SocketAddr") {
            continue; // the definition
        }
        let call = &call[..call.find(';').expect("a call ends with ;")];
        // Outcomes are snake_case words; not the reply code ("221") one
        // call tests to choose between two.
        set.extend(
            all_literals(call)
                .into_iter()
                .filter(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
        );
    }
    must_hold(
        "session outcomes",
        &set,
        &[
            "quit",
            "client_closed",
            "backend_lost",
            "client_error",
            "timeout",
            "shutdown",
            "refused",
            "backend_down",
            "backend_unavailable",
            "backend_refused_client",
            "too_many_errors",
            "bare_newline",
        ],
    );
    set
}

/// Connection rejection reasons: `Rejection::as_str`.
fn rejection_reasons() -> BTreeSet<String> {
    let metrics = read("src/telemetry/metrics.rs");
    let code = between(&metrics, "impl Rejection {", "\n}\n");
    let set: BTreeSet<String> = literals_after(code, "=> \"").into_iter().collect();
    must_hold(
        "rejection reasons",
        &set,
        &["max_connections", "proxy_untrusted", "backend_down"],
    );
    set
}

/// Section 9 of docs/operations.md, split at its second table's
/// introduction: (handshake failures, connections and sessions).
fn troubleshooting() -> (String, String) {
    let doc = read("docs/operations.md");
    let section = doc
        .split("\n## 9. ")
        .nth(1)
        .expect("docs/operations.md has a section 9");
    let section = section.split("\n## ").next().unwrap();
    let (tls, rest) = section
        .split_once("\nConnections and sessions")
        .expect("section 9 has its connections and sessions table");
    (tls.to_string(), rest.to_string())
}

/// The values of `set` not written in `text` as `"value"` or `` `value` ``.
fn undocumented(set: &BTreeSet<String>, text: &str) -> Vec<String> {
    set.iter()
        .filter(|v| !text.contains(&format!("\"{v}\"")) && !text.contains(&format!("`{v}`")))
        .cloned()
        .collect()
}

#[test]
fn every_handshake_failure_reason_is_in_the_troubleshooting_table() {
    let (tls, _) = troubleshooting();
    let missing = undocumented(&handshake_reasons(), &tls);
    assert!(
        missing.is_empty(),
        "docs/operations.md section 9 (handshake failures) lacks: {missing:?}"
    );
}

#[test]
fn every_session_outcome_and_rejection_reason_is_in_the_troubleshooting_table() {
    let (_, sessions) = troubleshooting();
    let missing = undocumented(&session_outcomes(), &sessions);
    assert!(
        missing.is_empty(),
        "docs/operations.md section 9 (sessions) lacks outcomes: {missing:?}"
    );
    let missing = undocumented(&rejection_reasons(), &sessions);
    assert!(
        missing.is_empty(),
        "docs/operations.md section 9 (connections) lacks reasons: {missing:?}"
    );
}

/// The check itself: a value the table does not have is reported.
#[test]
fn a_value_missing_from_the_table_is_reported() {
    let (tls, sessions) = troubleshooting();
    let made_up: BTreeSet<String> = ["no_such_outcome".to_string()].into();
    assert_eq!(undocumented(&made_up, &sessions), ["no_such_outcome"]);
    // Written in the other table only: not documented for this one.
    let only_tls: BTreeSet<String> = ["no_shared_cipher".to_string()].into();
    assert!(undocumented(&only_tls, &tls).is_empty());
    assert_eq!(undocumented(&only_tls, &sessions), ["no_shared_cipher"]);
}
