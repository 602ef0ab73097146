//! `Command::parse` on arbitrary lines.
//!
//! Invariants (src/smtp/command.rs), checked against a small reference
//! tokenizer written here:
//! - never panics, and parsing is deterministic;
//! - `BadCharacters` if and only if the line holds a control character
//!   other than HT (0x00..=0x1f, 0x7f): NUL, bare CR, LF, VT, FF…;
//! - otherwise the verb is the first SP/HT-separated token, compared ASCII
//!   case-insensitively; a verb over 16 bytes or not in the table is
//!   `Unknown`; the variant matches the verb (so e.g. `MAIL:FROM` or
//!   `MAILX` are never a transaction, `AUTH` is always `Auth`);
//! - the arguments are the rest, SP/HT-trimmed: EHLO/HELO names have no
//!   leading/trailing blanks and no control characters, `STARTTLS`
//!   `has_args` is whether any were given;
//! - `BDAT` sizes are at most 18 digits and round-trip through
//!   `BDAT <size> [LAST]`;
//! - leading/trailing blanks and the case of the verb do not change the
//!   result.

#![no_main]

use libfuzzer_sys::fuzz_target;
use starttls_proxy::smtp::command::{Bdat, Command, Verb};

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// (verb, args) as the reference splits them: blanks trimmed both ends,
/// the verb up to the first blank, the args trimmed too.
fn trim(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let z = s.iter().rposition(|&b| !is_blank(b)).map_or(a, |i| i + 1);
    &s[a..z]
}

fn split(line: &[u8]) -> (&[u8], &[u8]) {
    let line = trim(line);
    match line.iter().position(|&b| is_blank(b)) {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &[]),
    }
}

fuzz_target!(|line: &[u8]| {
    let cmd = Command::parse(line);
    assert_eq!(cmd, Command::parse(line), "parse is not deterministic");

    if line.iter().any(|&b| is_control(b)) {
        assert_eq!(
            cmd,
            Command::BadCharacters,
            "control character accepted: {line:?}"
        );
        return;
    }
    assert_ne!(cmd, Command::BadCharacters, "clean line refused: {line:?}");

    let (verb, args) = split(line);
    let upper = verb.to_ascii_uppercase();
    let expected_kind: &str = if verb.is_empty() || verb.len() > 16 {
        "unknown"
    } else {
        match &upper[..] {
            b"EHLO" => "ehlo",
            b"HELO" => "helo",
            b"STARTTLS" => "starttls",
            b"NOOP" => "noop",
            b"RSET" => "rset",
            b"QUIT" => "quit",
            b"HELP" => "help",
            b"DATA" => "data",
            b"BDAT" => "bdat",
            b"MAIL" => "mail",
            b"RCPT" => "rcpt",
            b"VRFY" => "vrfy",
            b"EXPN" => "expn",
            b"ETRN" => "etrn",
            b"BURL" => "burl",
            b"AUTH" => "auth",
            b"XCLIENT" | b"XFORWARD" => "xclient",
            _ => "unknown",
        }
    };
    let kind = match &cmd {
        Command::Ehlo(_) => "ehlo",
        Command::Helo(_) => "helo",
        Command::StartTls { .. } => "starttls",
        Command::Noop => "noop",
        Command::Rset => "rset",
        Command::Quit => "quit",
        Command::Help => "help",
        Command::Data => "data",
        Command::Bdat(_) => "bdat",
        Command::Transaction(Verb::Mail) => "mail",
        Command::Transaction(Verb::Rcpt) => "rcpt",
        Command::Transaction(Verb::Vrfy) => "vrfy",
        Command::Transaction(Verb::Expn) => "expn",
        Command::Transaction(Verb::Etrn) => "etrn",
        Command::Transaction(Verb::Burl) => "burl",
        Command::Transaction(Verb::Other) => "other",
        Command::Auth => "auth",
        Command::Xclient => "xclient",
        Command::BadCharacters => "bad",
        Command::Unknown => "unknown",
    };
    assert_eq!(
        kind, expected_kind,
        "verb {verb:?} of {line:?} parsed as {cmd:?}"
    );

    match &cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert_eq!(name, &String::from_utf8_lossy(args));
            assert!(!name.starts_with([' ', '\t']) && !name.ends_with([' ', '\t']));
            assert!(!name.chars().any(|c| c.is_ascii_control() && c != '\t'));
        }
        Command::StartTls { has_args } => assert_eq!(*has_args, !args.is_empty()),
        Command::Bdat(Some(Bdat { size, last })) => {
            assert!(*size <= 999_999_999_999_999_999);
            let again = format!("BDAT {size}{}", if *last { " LAST" } else { "" });
            assert_eq!(Command::parse(again.as_bytes()), cmd);
        }
        _ => {}
    }

    // Blanks around the line and the case of the verb change nothing.
    let mut padded = b" \t".to_vec();
    padded.extend_from_slice(line);
    padded.extend_from_slice(b"\t ");
    assert_eq!(Command::parse(&padded), cmd, "padding changed {line:?}");

    let start = line
        .iter()
        .position(|&b| !is_blank(b))
        .unwrap_or(line.len());
    let recases: [fn(&u8) -> u8; 2] = [u8::to_ascii_lowercase, u8::to_ascii_uppercase];
    for recase in recases {
        let mut l = line.to_vec();
        for b in &mut l[start..start + verb.len()] {
            *b = recase(&*b);
        }
        assert_eq!(Command::parse(&l), cmd, "verb case changed {line:?}");
    }
});
