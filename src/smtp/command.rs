//! SMTP commands as the pre-TLS dialogue and the relay see them.

/// A parsed command line. Only what the proxy acts on is distinguished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `STARTTLS`; `true` when arguments followed (answered 501).
    StartTls {
        has_args: bool,
    },
    Noop,
    Rset,
    Quit,
    Help,
    /// `DATA` (no arguments).
    Data,
    /// `BDAT size [LAST]`; `None` when the arguments do not parse.
    Bdat(Option<Bdat>),
    /// A transaction-level command: MAIL, RCPT, VRFY, EXPN, ETRN, BURL —
    /// relayed, or refused before TLS on a required listener.
    Transaction(Verb),
    /// `AUTH`: never before TLS, whatever the listener (no credentials in
    /// plaintext).
    Auth,
    /// `XCLIENT` / `XFORWARD`: only the proxy may tell the backend who the
    /// client is; a client's own is refused, never forwarded.
    Xclient,
    /// A control character (other than HT) in the line: NUL, VT, FF, a bare
    /// CR… The backend might split such a line differently from us.
    BadCharacters,
    /// Missing verb or an unknown one.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdat {
    pub size: u64,
    pub last: bool,
}

/// Verbs of transaction commands (kept for logs; never a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Mail,
    Rcpt,
    Vrfy,
    Expn,
    Etrn,
    Burl,
    Other,
}

/// A verb is at most this long; anything longer is not a command.
const MAX_VERB: usize = 16;

impl Command {
    pub fn parse(line: &[u8]) -> Command {
        if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Command::BadCharacters;
        }
        let line = trim(line);
        let (verb, args) = match line.iter().position(|&b| is_space(b)) {
            Some(i) => (&line[..i], trim(&line[i + 1..])),
            None => (line, &[][..]),
        };
        if verb.is_empty() || verb.len() > MAX_VERB {
            return Command::Unknown;
        }
        let mut upper = [0u8; MAX_VERB];
        for (d, s) in upper.iter_mut().zip(verb) {
            *d = s.to_ascii_uppercase();
        }
        let text = || String::from_utf8_lossy(args).into_owned();
        match &upper[..verb.len()] {
            b"EHLO" => Command::Ehlo(text()),
            b"HELO" => Command::Helo(text()),
            b"STARTTLS" => Command::StartTls {
                has_args: !args.is_empty(),
            },
            b"NOOP" => Command::Noop,
            b"RSET" => Command::Rset,
            b"QUIT" => Command::Quit,
            b"HELP" => Command::Help,
            b"DATA" => Command::Data,
            b"BDAT" => Command::Bdat(parse_bdat(args)),
            b"MAIL" => Command::Transaction(Verb::Mail),
            b"RCPT" => Command::Transaction(Verb::Rcpt),
            b"AUTH" => Command::Auth,
            b"VRFY" => Command::Transaction(Verb::Vrfy),
            b"EXPN" => Command::Transaction(Verb::Expn),
            b"ETRN" => Command::Transaction(Verb::Etrn),
            b"BURL" => Command::Transaction(Verb::Burl),
            b"XCLIENT" | b"XFORWARD" => Command::Xclient,
            _ => Command::Unknown,
        }
    }
}

/// Separators between verb and arguments, as Postfix and Exim split them
/// (other control characters never get this far: see `BadCharacters`).
fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// The domain of the path in `MAIL FROM:<path>` or `RCPT TO:<path>`, as
/// TLS policy rules match it: what follows the path's last `@` outside a
/// quoted local part, lowercased, a trailing dot dropped. `None` for the
/// null path `<>`, a path without a domain (`<postmaster>`), or a line
/// without a path. Not bounded here (the line is): logs bound it.
pub fn path_domain(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&b| b == b':')?;
    let rest = trim(&line[colon + 1..]);
    let path = match rest.strip_prefix(b"<") {
        Some(inner) => &inner[..outside_quotes(inner).find(|&(_, b)| b == b'>')?.0],
        None => &rest[..rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len())],
    };
    let at = outside_quotes(path).filter(|&(_, b)| b == b'@').last()?.0;
    let domain = &path[at + 1..];
    let domain = domain.strip_suffix(b".").unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(domain).to_ascii_lowercase())
}

/// The bytes of `s` (with their index) that are not inside a quoted
/// string (`"a>b"`, with `\` escapes).
fn outside_quotes(s: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut quoted, mut escaped) = (false, false);
    s.iter().copied().enumerate().filter(move |&(_, b)| {
        if escaped {
            escaped = false;
            return false;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => return !quoted,
        }
        false
    })
}

fn parse_bdat(args: &[u8]) -> Option<Bdat> {
    let args = std::str::from_utf8(args).ok()?;
    let mut parts = args.split([' ', '\t']).filter(|p| !p.is_empty());
    let size_text = parts.next()?;
    if !size_text.bytes().all(|b| b.is_ascii_digit()) || size_text.len() > 18 {
        return None;
    }
    let size = size_text.parse().ok()?;
    let last = match parts.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            Command::parse(b"ehlo Client.Test"),
            Command::Ehlo("Client.Test".into())
        );
        assert_eq!(
            Command::parse(b"  StartTLS "),
            Command::StartTls { has_args: false }
        );
        assert_eq!(
            Command::parse(b"STARTTLS now"),
            Command::StartTls { has_args: true }
        );
        assert_eq!(
            Command::parse(b"mail FROM:<a@b>"),
            Command::Transaction(Verb::Mail)
        );
        assert_eq!(Command::parse(b"DATA"), Command::Data);
    }

    #[test]
    fn unknown_and_garbage() {
        assert_eq!(Command::parse(b""), Command::Unknown);
        assert_eq!(Command::parse(b"FROB"), Command::Unknown);
        assert_eq!(
            Command::parse(b"\x16\x03\x01\x02\x00"),
            Command::BadCharacters
        );
        assert_eq!(Command::parse(&[b'A'; 40]), Command::Unknown);
        assert_eq!(Command::parse("EHLÖ x".as_bytes()), Command::Unknown);
    }

    #[test]
    fn tabs_separate_like_postfix_and_other_controls_are_refused() {
        assert_eq!(Command::parse(b"DATA\t"), Command::Data);
        assert_eq!(
            Command::parse(b"BDAT\t6\tLAST"),
            Command::Bdat(Some(Bdat {
                size: 6,
                last: true
            }))
        );
        assert_eq!(
            Command::parse(b"\tMAIL FROM:<a@b>"),
            Command::Transaction(Verb::Mail)
        );
        for bad in [
            &b"DATA\x0b"[..],
            b"DATA\x0c",
            b"DA\x00TA",
            b"DATA\rQUIT",
            b"NOOP\x7f",
            b"BDAT 5\x0bLAST",
        ] {
            assert_eq!(Command::parse(bad), Command::BadCharacters, "{bad:?}");
        }
    }

    #[test]
    fn auth_and_xclient_are_their_own() {
        assert_eq!(Command::parse(b"AUTH PLAIN AGEAYg=="), Command::Auth);
        assert_eq!(Command::parse(b"xclient ADDR=192.0.2.1"), Command::Xclient);
        assert_eq!(Command::parse(b"XFORWARD NAME=x"), Command::Xclient);
    }

    #[test]
    fn path_domains() {
        let d = |l: &str| path_domain(l.as_bytes());
        assert_eq!(
            d("MAIL FROM:<a@Bank.Example>").as_deref(),
            Some("bank.example")
        );
        assert_eq!(
            d("MAIL FROM: <a@bank.example.> SIZE=10").as_deref(),
            Some("bank.example")
        );
        assert_eq!(
            d("mail from:a@bank.example BODY=8BITMIME").as_deref(),
            Some("bank.example")
        );
        assert_eq!(
            d("RCPT TO:<@relay.test,@r2.test:u@legal.test>").as_deref(),
            Some("legal.test")
        );
        assert_eq!(
            d("RCPT TO:<\"a>b@c\"@x.test> NOTIFY=NEVER").as_deref(),
            Some("x.test")
        );
        assert_eq!(d("RCPT TO:<\"a\\\"@b\"@y.test>").as_deref(), Some("y.test"));
        assert_eq!(d("MAIL FROM:<>"), None);
        assert_eq!(d("RCPT TO:<postmaster>"), None);
        assert_eq!(d("RCPT TO:<a@>"), None);
        assert_eq!(d("MAIL FROM"), None);
        assert_eq!(d("MAIL FROM:<a@b.test"), None);
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(
            Command::parse(b"BDAT 100"),
            Command::Bdat(Some(Bdat {
                size: 100,
                last: false
            }))
        );
        assert_eq!(
            Command::parse(b"bdat 0 last"),
            Command::Bdat(Some(Bdat {
                size: 0,
                last: true
            }))
        );
        assert_eq!(Command::parse(b"BDAT -1"), Command::Bdat(None));
        assert_eq!(Command::parse(b"BDAT 1 LAST x"), Command::Bdat(None));
        assert_eq!(Command::parse(b"BDAT"), Command::Bdat(None));
    }
}
