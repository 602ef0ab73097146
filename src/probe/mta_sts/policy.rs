//! The MTA-STS policy file (RFC 8461 §3.2), parsed strictly, and MX
//! pattern matching (§4.1).
//!
//! ```text
//! version: STSv1
//! mode: enforce
//! mx: mail.example.com
//! mx: *.example.net
//! max_age: 604800
//! ```
//!
//! Lines end in LF or CRLF; each is `name ":" *WSP value *WSP`. Field
//! names are case-sensitive; unknown names are extensions and ignored.
//! `version`, `mode` and `max_age` appear exactly once, `mx` at least once
//! unless the mode is `none`. The probe is stricter than the ABNF needs
//! on one point only, where senders disagree: a repeated `version`,
//! `mode` or `max_age` is an error, not "the first wins".

use std::fmt;

use crate::probe::tagged;

/// The largest `max_age` (one year, §3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A valid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds senders may cache the policy.
    pub max_age: u32,
    /// Fields the probe does not know, in order.
    pub extensions: Vec<(String, String)>,
}

/// What senders do with the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to MX hosts that match and present a valid certificate.
    Enforce,
    /// Report failures (TLS-RPT), deliver anyway.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// One `mx` value: a host name, or `*.` and a domain (any one label).
/// Kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPattern(String);

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl MxPattern {
    /// A pattern from its policy text: `["*."] Domain` (RFC 5321 §4.1.2:
    /// labels of letters, digits and inner hyphens).
    pub fn parse(text: &str) -> Result<Self, String> {
        let domain = text.strip_prefix("*.").unwrap_or(text);
        if domain.ends_with('.') {
            return Err("has a trailing dot".into());
        }
        if domain.contains('*') {
            return Err("\"*\" is allowed only as a whole leftmost label \"*.\"".into());
        }
        if domain.len() > 253 {
            return Err("is longer than 253 characters".into());
        }
        for label in domain.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(format!("has an invalid label {label:?}"));
            }
        }
        Ok(Self(text.to_ascii_lowercase()))
    }

    /// §4.1: the host itself, case-insensitively; `*.d` matches a host of
    /// exactly one more label than `d` (not `d`, not `a.b.d`).
    pub fn matches(&self, mx_host: &str) -> bool {
        let host = mx_host.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => host == self.0,
        }
    }
}

/// Whether any of `patterns` matches `mx_host` (§4.1).
pub fn covers(patterns: &[MxPattern], mx_host: &str) -> bool {
    patterns.iter().any(|p| p.matches(mx_host))
}

impl Policy {
    /// Whether this policy's `mx` patterns match `mx_host`.
    pub fn covers(&self, mx_host: &str) -> bool {
        covers(&self.mx, mx_host)
    }

    /// Parses a policy body.
    pub fn parse(body: &[u8]) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(body).map_err(|e| PolicyError {
            line: Some(line_of(body, e.valid_up_to())),
            problem: PolicyProblem::NotUtf8,
        })?;
        let lines = lines(text);
        if lines.is_empty() {
            return Err(PolicyError {
                line: None,
                problem: PolicyProblem::Empty,
            });
        }
        let mut fields = Fields::default();
        for (i, line) in lines.into_iter().enumerate() {
            let n = i + 1;
            let at = |problem| PolicyError {
                line: Some(n),
                problem,
            };
            let (name, value) = split_line(line).map_err(at)?;
            fields.add(n, name, value).map_err(at)?;
        }
        fields.finish()
    }
}

/// A policy that senders would not use, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", match line { Some(n) => format!("policy line {n}: "), None => "policy: ".to_string() })]
pub struct PolicyError {
    /// 1-based; `None` for what is missing from the whole file.
    pub line: Option<usize>,
    pub problem: PolicyProblem,
}

/// What is wrong, one variant per kind of mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("the file is empty")]
    Empty,
    #[error("empty line (fields must follow each other)")]
    EmptyLine,
    #[error("carriage return not followed by line feed")]
    BareCr,
    #[error("{0:?} is not a \"name: value\" line")]
    NoColon(String),
    #[error("space before the colon after {0:?}")]
    SpaceBeforeColon(String),
    #[error(
        "{0:?} is not a field name (a letter or digit, then up to 31 letters, digits, \"_\", \"-\", \".\")"
    )]
    BadFieldName(String),
    #[error("{0} has no value")]
    EmptyValue(String),
    #[error("{field} value contains a control character")]
    ControlCharacter { field: String },
    #[error("version {0:?} is not STSv1")]
    Version(String),
    #[error("mode {0:?} is not enforce, testing or none")]
    Mode(String),
    #[error("max_age {0:?} is not 1 to 10 digits")]
    MaxAgeNotNumber(String),
    #[error("max_age {0} exceeds {MAX_AGE_LIMIT}")]
    MaxAgeTooLarge(u64),
    #[error("mx {pattern:?} {why}")]
    MxPattern { pattern: String, why: String },
    #[error("{field} appears again (first on line {first_line})")]
    Duplicate {
        field: &'static str,
        first_line: usize,
    },
    #[error("no {field} field{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Missing {
        field: &'static str,
        hint: Option<String>,
    },
    #[error("mode {0} needs at least one mx field")]
    NoMx(&'static str),
}

/// The lines of the body: split at LF, a CR before it dropped, the empty
/// piece after a final terminator not counted.
fn lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.split('\n').collect();
    if v.last() == Some(&"") {
        v.pop();
    }
    v.into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

fn line_of(body: &[u8], offset: usize) -> usize {
    1 + body[..offset].iter().filter(|&&b| b == b'\n').count()
}

fn split_line(line: &str) -> Result<(&str, &str), PolicyProblem> {
    if line.is_empty() {
        return Err(PolicyProblem::EmptyLine);
    }
    if line.contains('\r') {
        return Err(PolicyProblem::BareCr);
    }
    let Some((name, value)) = line.split_once(':') else {
        return Err(PolicyProblem::NoColon(line.to_string()));
    };
    if name.ends_with([' ', '\t']) && tagged::is_field_name(name.trim_end()) {
        return Err(PolicyProblem::SpaceBeforeColon(name.trim_end().to_string()));
    }
    if !tagged::is_field_name(name) {
        return Err(PolicyProblem::BadFieldName(name.to_string()));
    }
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(PolicyProblem::EmptyValue(name.to_string()));
    }
    if value.chars().any(char::is_control) {
        return Err(PolicyProblem::ControlCharacter {
            field: name.to_string(),
        });
    }
    Ok((name, value))
}

/// The fields seen so far, with the line each came from.
#[derive(Default)]
struct Fields {
    version: Option<usize>,
    mode: Option<(usize, Mode)>,
    max_age: Option<(usize, u32)>,
    mx: Vec<MxPattern>,
    extensions: Vec<(String, String)>,
}

impl Fields {
    fn add(&mut self, line: usize, name: &str, value: &str) -> Result<(), PolicyProblem> {
        match name {
            "version" => {
                once("version", self.version)?;
                if value != "STSv1" {
                    return Err(PolicyProblem::Version(value.to_string()));
                }
                self.version = Some(line);
            }
            "mode" => {
                once("mode", self.mode.map(|m| m.0))?;
                self.mode = Some((line, mode(value)?));
            }
            "max_age" => {
                once("max_age", self.max_age.map(|m| m.0))?;
                self.max_age = Some((line, max_age(value)?));
            }
            "mx" => {
                let p = MxPattern::parse(value).map_err(|why| PolicyProblem::MxPattern {
                    pattern: value.to_string(),
                    why,
                })?;
                self.mx.push(p);
            }
            _ => self.extensions.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    fn finish(self) -> Result<Policy, PolicyError> {
        let whole = |problem| PolicyError {
            line: None,
            problem,
        };
        let missing = |field: &'static str| {
            let hint = self
                .extensions
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(field))
                .map(|(n, _)| format!("field names are case-sensitive: {n:?} is not {field:?}"));
            whole(PolicyProblem::Missing { field, hint })
        };
        if self.version.is_none() {
            return Err(missing("version"));
        }
        let Some((_, mode)) = self.mode else {
            return Err(missing("mode"));
        };
        let Some((_, max_age)) = self.max_age else {
            return Err(missing("max_age"));
        };
        if self.mx.is_empty() && mode != Mode::None {
            return Err(whole(PolicyProblem::NoMx(mode.as_str())));
        }
        Ok(Policy {
            mode,
            mx: self.mx,
            max_age,
            extensions: self.extensions,
        })
    }
}

fn once(field: &'static str, seen: Option<usize>) -> Result<(), PolicyProblem> {
    match seen {
        Some(first_line) => Err(PolicyProblem::Duplicate { field, first_line }),
        None => Ok(()),
    }
}

fn mode(value: &str) -> Result<Mode, PolicyProblem> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(PolicyProblem::Mode(other.to_string())),
    }
}

fn max_age(value: &str) -> Result<u32, PolicyProblem> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyProblem::MaxAgeNotNumber(value.to_string()));
    }
    // Ten digits fit in a u64.
    let n: u64 = value
        .parse()
        .map_err(|_| PolicyProblem::MaxAgeNotNumber(value.to_string()))?;
    match u32::try_from(n) {
        Ok(v) if n <= MAX_AGE_LIMIT => Ok(v),
        _ => Err(PolicyProblem::MaxAgeTooLarge(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8461 §3.2's example.
    const RFC_EXAMPLE: &str = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n";

    fn err(body: &str) -> PolicyError {
        Policy::parse(body.as_bytes()).unwrap_err()
    }

    fn at(line: usize, problem: PolicyProblem) -> PolicyError {
        PolicyError {
            line: Some(line),
            problem,
        }
    }

    #[test]
    fn the_rfc_example() {
        let p = Policy::parse(RFC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        let mx: Vec<String> = p.mx.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
    }

    #[test]
    fn crlf_lf_no_final_newline_trailing_space_and_extensions() {
        let body = "version: STSv1\r\nmode:testing  \r\nmx:\tMX1.Example.Test\nmax_age: 0\r\nfuture_key.v2: some value ü";
        let p = Policy::parse(body.as_bytes()).unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.max_age, 0);
        assert!(p.covers("mx1.example.test"));
        assert_eq!(
            p.extensions,
            [("future_key.v2".to_string(), "some value ü".to_string())]
        );
    }

    #[test]
    fn mode_none_needs_no_mx() {
        let p = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        assert!(p.mx.is_empty());
    }

    #[test]
    fn each_malformation_is_named_with_its_line() {
        let base = "version: STSv1\nmode: enforce\nmx: mx1.example.test\n";
        let cases: Vec<(String, PolicyError)> = vec![
            (
                format!("{base}max_age: 40000000\n"),
                at(4, PolicyProblem::MaxAgeTooLarge(40_000_000)),
            ),
            (
                format!("{base}max_age: 99999999999\n"),
                at(4, PolicyProblem::MaxAgeNotNumber("99999999999".into())),
            ),
            (
                format!("{base}max_age: -1\n"),
                at(4, PolicyProblem::MaxAgeNotNumber("-1".into())),
            ),
            (
                format!("{base}max_age: 86400\nmax_age: 1\n"),
                at(
                    5,
                    PolicyProblem::Duplicate {
                        field: "max_age",
                        first_line: 4,
                    },
                ),
            ),
            (
                "version: STSv2\nmode: enforce\n".into(),
                at(1, PolicyProblem::Version("STSv2".into())),
            ),
            (
                "version: STSv1\nmode: Enforce\n".into(),
                at(2, PolicyProblem::Mode("Enforce".into())),
            ),
            (
                "version: STSv1\nmode enforce\n".into(),
                at(2, PolicyProblem::NoColon("mode enforce".into())),
            ),
            (
                "version: STSv1\nmode : enforce\n".into(),
                at(2, PolicyProblem::SpaceBeforeColon("mode".into())),
            ),
            (
                "version: STSv1\n mode: enforce\n".into(),
                at(2, PolicyProblem::BadFieldName(" mode".into())),
            ),
            (
                "version: STSv1\nmode:\n".into(),
                at(2, PolicyProblem::EmptyValue("mode".into())),
            ),
            (
                "version: STSv1\n\nmode: enforce\n".into(),
                at(2, PolicyProblem::EmptyLine),
            ),
            (
                "version: STSv1\rmode: enforce\n".into(),
                at(1, PolicyProblem::BareCr),
            ),
            (
                "version: STSv1\nx: a\u{1}b\n".into(),
                at(2, PolicyProblem::ControlCharacter { field: "x".into() }),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: mx1.example.test.\n".into(),
                at(
                    3,
                    PolicyProblem::MxPattern {
                        pattern: "mx1.example.test.".into(),
                        why: "has a trailing dot".into(),
                    },
                ),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: mx*.example.test\n".into(),
                at(
                    3,
                    PolicyProblem::MxPattern {
                        pattern: "mx*.example.test".into(),
                        why: "\"*\" is allowed only as a whole leftmost label \"*.\"".into(),
                    },
                ),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: mx_1.example.test\n".into(),
                at(
                    3,
                    PolicyProblem::MxPattern {
                        pattern: "mx_1.example.test".into(),
                        why: "has an invalid label \"mx_1\"".into(),
                    },
                ),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(&body), want, "{body:?}");
        }
    }

    #[test]
    fn missing_fields_are_named_with_a_case_hint() {
        assert_eq!(
            err("mode: enforce\nmx: a.test\nmax_age: 1\n"),
            PolicyError {
                line: None,
                problem: PolicyProblem::Missing {
                    field: "version",
                    hint: None
                }
            }
        );
        assert_eq!(
            err("version: STSv1\nMode: enforce\nmx: a.test\nmax_age: 1\n").to_string(),
            "policy: no mode field (field names are case-sensitive: \"Mode\" is not \"mode\")"
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a.test\n").problem,
            PolicyProblem::Missing {
                field: "max_age",
                hint: None
            }
        );
        assert_eq!(
            err("version: STSv1\nmode: testing\nmax_age: 1\n").problem,
            PolicyProblem::NoMx("testing")
        );
        assert_eq!(err("").problem, PolicyProblem::Empty);
        assert_eq!(
            Policy::parse(b"version: STSv1\nmode: \xff\n").unwrap_err(),
            at(2, PolicyProblem::NotUtf8)
        );
    }

    #[test]
    fn error_messages_read_as_the_operator_needs_them() {
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmax_age: 40000000\n").to_string(),
            "policy line 3: max_age 40000000 exceeds 31557600"
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmode: testing\n").to_string(),
            "policy line 3: mode appears again (first on line 2)"
        );
    }

    #[test]
    fn max_age_bounds() {
        assert_eq!(max_age("31557600"), Ok(31_557_600));
        assert_eq!(max_age("0031557600"), Ok(31_557_600));
        assert_eq!(
            max_age("31557601"),
            Err(PolicyProblem::MaxAgeTooLarge(31_557_601))
        );
        assert_eq!(
            max_age("9999999999"),
            Err(PolicyProblem::MaxAgeTooLarge(9_999_999_999))
        );
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        let p = |s| MxPattern::parse(s).unwrap();
        let w = [p("*.example.net")];
        assert!(covers(&w, "mail.example.net"));
        assert!(covers(&w, "MAIL.Example.NET."));
        assert!(!covers(&w, "example.net"));
        assert!(!covers(&w, "a.b.example.net"));
        assert!(!covers(&w, ".example.net"));
        assert!(!covers(&w, "mail.example.net.evil.test"));
        let exact = [p("Mail.Example.COM")];
        assert!(covers(&exact, "mail.example.com"));
        assert!(covers(&exact, "mail.example.com."));
        assert!(!covers(&exact, "x.mail.example.com"));
        assert!(!covers(&[], "mail.example.com"));
    }
}
