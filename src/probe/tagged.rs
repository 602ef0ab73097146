//! The `v=VERSION; name=value; …` syntax shared by the MTA-STS TXT record
//! (RFC 8461 §3.1) and the TLS-RPT TXT record (RFC 8460 §3):
//!
//! ```text
//! record    = version 1*(sep field) [sep]
//! sep       = *WSP ";" *WSP
//! field     = name "=" value
//! name      = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! ext-value = 1*(%x21-3A / %x3C / %x3E-7E)  ; no "=", ";", SP, controls
//! ```
//!
//! Field values are checked by the caller, since `rua` (a URI list) is
//! not an `ext-value`.

/// One `name=value` field, with its 1-based position after the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub position: usize,
    pub name: &'a str,
    pub value: &'a str,
}

/// What is wrong with a tagged record's syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("does not start with {expected:?}")]
    NoVersion { expected: &'static str },
    #[error("{expected:?} is followed by {found:?} instead of \";\"")]
    AfterVersion {
        expected: &'static str,
        found: String,
    },
    #[error("field {position} is empty (\";;\")")]
    EmptyField { position: usize },
    #[error("field {position} {field:?} has no \"=\"")]
    NoEquals { position: usize, field: String },
    #[error(
        "field {position}: {name:?} is not a field name (a letter or digit, then up to 31 letters, digits, \"_\", \"-\", \".\")"
    )]
    BadName { position: usize, name: String },
    #[error("field {position} {name:?} has an empty value")]
    EmptyValue { position: usize, name: String },
}

/// The fields of `text`, which must start with `version` (case-sensitive).
pub fn fields<'a>(text: &'a str, version: &'static str) -> Result<Vec<Field<'a>>, TagError> {
    let rest = text
        .strip_prefix(version)
        .ok_or(TagError::NoVersion { expected: version })?;
    let mut pieces = rest.split(';');
    // Between the version and the first ";": whitespace only.
    let head = pieces.next().unwrap_or_default();
    if !head.trim_matches(is_wsp).is_empty() {
        return Err(TagError::AfterVersion {
            expected: version,
            found: head.to_string(),
        });
    }
    let pieces: Vec<&str> = pieces.collect();
    let mut out = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let position = i + 1;
        let piece = piece.trim_matches(is_wsp);
        if piece.is_empty() {
            // Only the last: the optional trailing separator.
            if position == pieces.len() {
                break;
            }
            return Err(TagError::EmptyField { position });
        }
        let Some((name, value)) = piece.split_once('=') else {
            return Err(TagError::NoEquals {
                position,
                field: piece.to_string(),
            });
        };
        if !is_field_name(name) {
            return Err(TagError::BadName {
                position,
                name: name.to_string(),
            });
        }
        if value.is_empty() {
            return Err(TagError::EmptyValue {
                position,
                name: name.to_string(),
            });
        }
        out.push(Field {
            position,
            name,
            value,
        });
    }
    Ok(out)
}

/// Whether `text` starts with `version` as a whole token: followed by the
/// end, whitespace or ";" (so "v=STSv10" is not "v=STSv1"). RFC 8461 §3.1
/// and RFC 8460 §3 discard the TXT records at the name that do not.
pub fn has_version(text: &str, version: &str) -> bool {
    text.strip_prefix(version)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`, the name of an
/// extension field in both TXT records and in the MTA-STS policy.
pub fn is_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `1*(%x21-3A / %x3C / %x3E-7E)`: printable ASCII except "=", ";", SP.
pub fn is_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| matches!(c, 0x21..=0x3a | 0x3c | 0x3e..=0x7e))
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "v=STSv1";

    fn names(text: &str) -> Vec<(&str, &str)> {
        fields(text, V)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.value))
            .collect()
    }

    #[test]
    fn separators_may_have_whitespace_and_trail() {
        assert_eq!(names("v=STSv1; id=1;"), [("id", "1")]);
        assert_eq!(names("v=STSv1 ;id=1"), [("id", "1")]);
        assert_eq!(
            names("v=STSv1;\tid=1 ;  x.y=z ; "),
            [("id", "1"), ("x.y", "z")]
        );
        assert_eq!(names("v=STSv1"), []);
    }

    #[test]
    fn each_malformation_is_named() {
        let err = |t| fields(t, V).unwrap_err();
        assert_eq!(err("id=1; v=STSv1"), TagError::NoVersion { expected: V });
        assert_eq!(err("V=STSv1; id=1"), TagError::NoVersion { expected: V });
        assert_eq!(
            err("v=STSv10; id=1"),
            TagError::AfterVersion {
                expected: V,
                found: "0".into()
            }
        );
        assert_eq!(err("v=STSv1;; id=1"), TagError::EmptyField { position: 1 });
        assert_eq!(
            err("v=STSv1; id"),
            TagError::NoEquals {
                position: 1,
                field: "id".into()
            }
        );
        assert_eq!(
            err("v=STSv1; id=1; _x=2"),
            TagError::BadName {
                position: 2,
                name: "_x".into()
            }
        );
        assert_eq!(
            err("v=STSv1; id="),
            TagError::EmptyValue {
                position: 1,
                name: "id".into()
            }
        );
    }

    #[test]
    fn version_is_a_whole_token() {
        assert!(has_version("v=STSv1; id=1", V));
        assert!(has_version("v=STSv1", V));
        assert!(has_version("v=STSv1 ; id=1", V));
        assert!(!has_version("v=STSv10; id=1", V));
        assert!(!has_version(" v=STSv1; id=1", V));
        assert!(!has_version("v=stsv1; id=1", V));
    }

    #[test]
    fn ext_values_exclude_equals_semicolon_space() {
        assert!(is_ext_value("abc:/!~"));
        assert!(!is_ext_value("a=b"));
        assert!(!is_ext_value("a b"));
        assert!(!is_ext_value("a\u{7f}"));
        assert!(!is_ext_value(""));
        assert!(is_field_name("a"));
        assert!(is_field_name(&"a".repeat(32)));
        assert!(!is_field_name(&"a".repeat(33)));
    }
}
