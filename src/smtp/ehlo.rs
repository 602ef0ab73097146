//! EHLO replies: the one the proxy gives before TLS, and the filter applied
//! to the backend's after it.

use super::reply::BackendReply;

/// Extensions offered before TLS besides `STARTTLS` until the backend's
/// health probe has seen its real ones (and for the sink): what every MTA
/// we front has. `AUTH` never is: no credentials in plaintext.
pub const PRE_TLS_EXTENSIONS: &[&str] = &["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];

/// The pre-TLS EHLO reply: `250-<hostname>`, the backend's safe extensions
/// as last probed (or the built-in set), `STARTTLS` last.
pub fn pre_tls_reply(
    hostname: &str,
    extensions: Option<&[String]>,
    offer_starttls: bool,
) -> String {
    let mut lines: Vec<String> = vec![hostname.to_string()];
    match extensions {
        Some(e) => lines.extend(e.iter().cloned()),
        None => lines.extend(PRE_TLS_EXTENSIONS.iter().map(|s| s.to_string())),
    }
    if offer_starttls {
        lines.push("STARTTLS".to_string());
    }
    multiline(250, &lines)
}

/// Joins texts into one reply with `-` continuations and a final space.
pub fn multiline(code: u16, texts: &[String]) -> String {
    let mut out = String::new();
    for (i, t) in texts.iter().enumerate() {
        let sep = if i + 1 == texts.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{t}\r\n"));
    }
    out
}

/// Extensions removed from the backend's EHLO reply: `STARTTLS` always (the
/// client is already in TLS, or the proxy cannot start TLS in a plaintext
/// relay); `AUTH` too when the client is not in TLS (no credentials in
/// plaintext, DESIGN.md §2); `XCLIENT` and `XFORWARD`, which the backend
/// offers to the proxy, never to clients (the proxy refuses them).
const REMOVED_IN_TLS: &[&[u8]] = &[b"STARTTLS", b"XCLIENT", b"XFORWARD"];
const REMOVED_IN_PLAINTEXT: &[&[u8]] = &[b"STARTTLS", b"AUTH", b"XCLIENT", b"XFORWARD"];

/// REQUIRETLS (RFC 8689) promises TLS on every hop: passed on only when
/// both the client's connection and the hop to the backend are TLS.
const REQUIRETLS: &[u8] = b"REQUIRETLS";

/// The backend's EHLO reply without the removed extensions, continuation
/// markers renumbered. Non-2xx replies pass unchanged. `hop_tls`: the
/// proxy's connection to the backend is TLS (`[[backend]] tls`).
pub fn filter_backend_reply(reply: &BackendReply, client_in_tls: bool, hop_tls: bool) -> Vec<u8> {
    let removed = if client_in_tls {
        REMOVED_IN_TLS
    } else {
        REMOVED_IN_PLAINTEXT
    };
    let requiretls_kept = client_in_tls && hop_tls;
    if reply.code != 250 {
        return reply.to_bytes();
    }
    let kept: Vec<&Vec<u8>> = reply
        .lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            *i == 0
                || !(is_removed(l, removed) || (!requiretls_kept && is_removed(l, &[REQUIRETLS])))
        })
        .map(|(_, l)| l)
        .collect();
    let mut out = Vec::with_capacity(reply.lines.iter().map(Vec::len).sum());
    for (i, line) in kept.iter().enumerate() {
        let mut line = (*line).clone();
        if line.len() >= 4 {
            line[3] = if i + 1 == kept.len() { b' ' } else { b'-' };
        } else {
            // A bare "250\r\n" line: keep the code, add the separator.
            line.truncate(3);
            line.extend_from_slice(if i + 1 == kept.len() {
                b" \r\n"
            } else {
                b"-\r\n"
            });
        }
        out.extend_from_slice(&line);
    }
    out
}

/// Whether a positive EHLO reply lists `keyword` (e.g. `CHUNKING`): the
/// greeting line does not count.
pub fn offers(reply: &BackendReply, keyword: &[u8]) -> bool {
    reply.code == 250
        && reply
            .lines
            .iter()
            .skip(1)
            .any(|l| is_removed(l, &[keyword]))
}

fn is_removed(line: &[u8], removed: &[&[u8]]) -> bool {
    let keyword = line
        .get(4..)
        .unwrap_or_default()
        .split(|b| *b == b' ' || *b == b'=' || *b == b'\r')
        .next()
        .unwrap_or_default();
    removed.iter().any(|r| keyword.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> BackendReply {
        let lines: Vec<Vec<u8>> = text
            .split_inclusive("\r\n")
            .map(|l| l.as_bytes().to_vec())
            .collect();
        BackendReply { code: 250, lines }
    }

    #[test]
    fn offers_looks_past_the_greeting_line() {
        let r = reply("250-CHUNKING.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
        assert!(!offers(&r, b"CHUNKING"));
        assert!(offers(&r, b"size"));
        let r = reply("250-b.test\r\n250 chunking\r\n");
        assert!(offers(&r, b"CHUNKING"));
    }

    #[test]
    fn starttls_removed_markers_fixed() {
        let r = reply("250-backend.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n");
        assert_eq!(
            String::from_utf8(filter_backend_reply(&r, true, false)).unwrap(),
            "250-backend.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        );
        let r = reply("250-backend.test\r\n250-starttls\r\n250 8BITMIME\r\n");
        assert_eq!(
            String::from_utf8(filter_backend_reply(&r, true, false)).unwrap(),
            "250-backend.test\r\n250 8BITMIME\r\n"
        );
    }

    #[test]
    fn auth_removed_in_plaintext_only() {
        let r = reply("250-b.test\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250 STARTTLS\r\n");
        assert_eq!(
            String::from_utf8(filter_backend_reply(&r, false, false)).unwrap(),
            "250 b.test\r\n"
        );
        assert_eq!(
            String::from_utf8(filter_backend_reply(&r, true, false)).unwrap(),
            "250-b.test\r\n250-AUTH PLAIN LOGIN\r\n250 AUTH=PLAIN\r\n"
        );
    }

    #[test]
    fn requiretls_only_when_client_and_hop_are_tls() {
        let r = reply("250-b.test\r\n250-REQUIRETLS\r\n250 8BITMIME\r\n");
        assert_eq!(filter_backend_reply(&r, true, true), r.to_bytes());
        for (client, hop) in [(true, false), (false, true), (false, false)] {
            assert_eq!(
                String::from_utf8(filter_backend_reply(&r, client, hop)).unwrap(),
                "250-b.test\r\n250 8BITMIME\r\n",
                "client {client} hop {hop}"
            );
        }
    }

    #[test]
    fn similar_names_are_kept() {
        let r = reply("250-b.test\r\n250-STARTTLSX\r\n250 AUTH PLAIN\r\n");
        assert_eq!(filter_backend_reply(&r, true, false), r.to_bytes());
    }

    #[test]
    fn pre_tls_never_offers_auth() {
        let r = pre_tls_reply("mx.test", None, true);
        assert!(r.starts_with("250-mx.test\r\n"));
        assert!(r.ends_with("250 STARTTLS\r\n"));
        assert!(!r.contains("AUTH"));
    }

    #[test]
    fn pre_tls_offers_the_probed_extensions() {
        let probed = vec!["SIZE 1000".to_string(), "CHUNKING".to_string()];
        let r = pre_tls_reply("mx.test", Some(&probed), true);
        assert_eq!(
            r,
            "250-mx.test\r\n250-SIZE 1000\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
        );
    }
}
