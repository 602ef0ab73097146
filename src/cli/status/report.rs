//! The status as a terminal report: the verdict first, then a table per
//! section, in the page's order. Colour only when asked (a terminal, no
//! `NO_COLOR`); every string from the answer is stripped of control
//! characters, since the URL may point anywhere.

use std::io::{self, Write};

use crate::telemetry::status::human::{ago, duration, time};
use crate::telemetry::status::snapshot::{Certificate, Snapshot, Window};
use crate::telemetry::status::{NEGOTIATED, OFFERED, SESSIONS, SNI};

pub fn write(out: &mut impl Write, s: &Snapshot, colour: bool) -> io::Result<()> {
    let paint = Paint(colour);
    summary(out, s, paint)?;
    listeners(out, s, paint)?;
    certificates(out, s, paint)?;
    tls(out, s, paint)?;
    failures(out, s, paint)?;
    sessions(out, s, paint)?;
    backends(out, s, paint)?;
    policy(out, s, paint)?;
    smuggling(out, s, paint)
}

// === sections ===

fn summary(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    writeln!(
        out,
        "starttls-proxy on {}: version {}, up {} (since {})",
        clean(&s.hostname),
        clean(&s.version),
        duration(s.uptime_seconds),
        time(s.started_at)
    )?;
    if let Some(r) = &s.config_reload {
        let tone = if r.result == "success" {
            Tone::Good
        } else {
            Tone::Bad
        };
        writeln!(
            out,
            "last config reload (SIGHUP): {} {}",
            paint.tone(tone, &clean(&r.result)),
            ago(s.now, r.at)
        )?;
    }
    writeln!(out)?;
    let warnings = s.compute_warnings();
    if warnings.is_empty() {
        writeln!(
            out,
            "{}  no certificate within {} days of expiry, no backend server down",
            paint.tone(Tone::Good, "OK"),
            s.expiry_warning_days
        )?;
    }
    for w in &warnings {
        writeln!(out, "{}  {}", paint.tone(Tone::Bad, "WARNING"), clean(w))?;
    }
    Ok(())
}

fn listeners(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let rows = s
        .listeners
        .iter()
        .map(|l| {
            vec![
                plain(&l.address),
                plain(&l.mode),
                plain(&l.tls),
                plain(&l.backend),
                num(l.connections),
                count_warn(l.smuggling_attempts),
                count_warn(l.starttls_injections),
            ]
        })
        .collect();
    Table {
        title: "Listeners",
        header: &[
            "ADDRESS",
            "MODE",
            "TLS",
            "BACKEND",
            ">CONNECTIONS",
            ">SMUGGLING",
            ">INJECTIONS",
        ],
        rows,
        empty: "none bound yet",
    }
    .write(out, paint)
}

fn certificates(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let rows = s
        .certificates
        .iter()
        .map(|c| certificate_row(c, s.now))
        .collect();
    let title = format!(
        "Certificates (warning window {} days)",
        s.expiry_warning_days
    );
    Table {
        title: &title,
        header: &[
            "NAME",
            "DEFAULT",
            "NAMES",
            "KEY",
            "NOT AFTER",
            ">DAYS LEFT",
            ">HANDSHAKES",
            "LAST RELOAD",
        ],
        rows,
        empty: "none",
    }
    .write(out, paint)
}

fn certificate_row(c: &Certificate, now: i64) -> Vec<Cell> {
    let tone = if c.expired {
        Tone::Bad
    } else if c.expiring {
        Tone::Warn
    } else {
        Tone::Plain
    };
    let reload = match &c.last_reload {
        None => Cell::new("none since start".into(), Tone::Dim),
        Some(r) => Cell::new(
            format!("{} {}", clean(&r.result), ago(now, r.at)),
            if r.result == "success" {
                Tone::Good
            } else {
                Tone::Bad
            },
        ),
    };
    vec![
        plain(&c.name),
        plain(if c.default { "yes" } else { "" }),
        plain(&c.names.join(",")),
        plain(&c.algorithm),
        plain(&time(c.not_after)),
        Cell::new(c.days_left.to_string(), tone).right(),
        num(c.handshakes),
        reload,
    ]
}

fn tls(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    writeln!(
        out,
        "\nTLS handshakes: {} completed, {} failed since start; {} completed, {} failed in the last hour",
        all.handshakes, all.failures, hour.handshakes, hour.failures
    )?;
    share_table(
        out,
        paint,
        "Version negotiated",
        &NEGOTIATED,
        |w| &w.versions,
        s,
    )?;
    share_table(out, paint, "SNI", &SNI, |w| &w.sni, s)?;
    share_table(
        out,
        paint,
        "Highest version offered by clients (failed handshakes included)",
        &OFFERED,
        |w| &w.client_max_versions,
        s,
    )
}

fn share_table(
    out: &mut impl Write,
    paint: Paint,
    title: &str,
    keys: &[&str],
    pick: impl Fn(&Window) -> &std::collections::BTreeMap<String, u64>,
    s: &Snapshot,
) -> io::Result<()> {
    let (all, hour) = (pick(&s.tls.since_start), pick(&s.tls.last_hour));
    let (t_all, t_hour) = (all.values().sum::<u64>(), hour.values().sum::<u64>());
    let rows = keys
        .iter()
        .map(|k| (k, Window::get(all, k), Window::get(hour, k)))
        .filter(|(_, a, b)| *a > 0 || *b > 0)
        .map(|(k, a, b)| {
            vec![
                plain(k),
                num(a),
                plain(&share(a, t_all)).right(),
                num(b),
                plain(&share(b, t_hour)).right(),
            ]
        })
        .collect();
    Table {
        title,
        header: &["", ">SINCE START", ">SHARE", ">LAST HOUR", ">SHARE"],
        rows,
        empty: "none yet",
    }
    .write(out, paint)
}

fn share(n: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    let pct = (u128::from(n) * 100 + u128::from(total) / 2) / u128::from(total);
    format!("{pct} %")
}

fn failures(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let rows = s
        .handshake_failures
        .iter()
        .map(|f| {
            let offered: Vec<String> = f
                .client_max_versions
                .iter()
                .map(|(v, n)| format!("{} x {n}", clean(v)))
                .collect();
            vec![
                plain(&f.reason),
                num(f.since_start),
                num(f.last_hour),
                plain(&offered.join(", ")),
            ]
        })
        .collect();
    Table {
        title: "Handshake failures",
        header: &[
            "REASON",
            ">SINCE START",
            ">LAST HOUR",
            "CLIENT'S HIGHEST OFFERED",
        ],
        rows,
        empty: "none since start",
    }
    .write(out, paint)
}

fn sessions(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    let mut rows: Vec<Vec<Cell>> = SESSIONS
        .iter()
        .map(|k| {
            let label = match *k {
                "starttls" => "STARTTLS",
                "implicit" => "implicit TLS",
                _ => "plaintext",
            };
            vec![
                plain(label),
                num(Window::get(&all.sessions, k)),
                num(Window::get(&hour.sessions, k)),
            ]
        })
        .collect();
    rows.push(vec![
        plain("messages relayed"),
        num(all.messages_relayed),
        num(hour.messages_relayed),
    ]);
    for (reason, n) in &s.connections_rejected {
        rows.push(vec![
            plain(&format!("refused before SMTP: {reason}")),
            num(*n),
            plain(""),
        ]);
    }
    Table {
        title: "Sessions",
        header: &["", ">SINCE START", ">LAST HOUR"],
        rows,
        empty: "",
    }
    .write(out, paint)
}

fn backends(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let mut rows = Vec::new();
    for b in &s.backends {
        if b.kind == "sink" {
            rows.push(vec![
                plain(&b.name),
                Cell::new("built-in sink".into(), Tone::Dim),
                Cell::new("up".into(), Tone::Good),
                plain(""),
                plain(""),
                plain(""),
                plain(""),
            ]);
            continue;
        }
        for srv in &b.servers {
            let tone = match srv.state.as_str() {
                "up" => Tone::Good,
                "down" => Tone::Bad,
                _ => Tone::Dim,
            };
            let when = |t: Option<i64>| t.map(|t| ago(s.now, t)).unwrap_or_default();
            rows.push(vec![
                plain(&b.name),
                plain(&srv.address),
                Cell::new(clean(&srv.state), tone),
                plain(&when(srv.state_since)),
                plain(&when(srv.last_probe_at)),
                Cell::new(clean(srv.error.as_deref().unwrap_or("")), Tone::Bad),
                count_warn(srv.connect_failures),
            ]);
        }
    }
    Table {
        title: "Backends",
        header: &[
            "BACKEND",
            "SERVER",
            "STATE",
            "SINCE",
            "LAST PROBE",
            "ERROR OF THE LAST PROBE",
            ">CONNECT FAILURES",
        ],
        rows,
        empty: "none",
    }
    .write(out, paint)
}

fn policy(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let rows = s
        .tls_policy
        .iter()
        .map(|p| {
            vec![
                plain(&p.rule),
                num(p.satisfied),
                count_warn(p.would_refuse),
                count_warn(p.refused),
            ]
        })
        .collect();
    Table {
        title: "TLS policy",
        header: &["RULE", ">SATISFIED", ">WOULD REFUSE", ">REFUSED"],
        rows,
        empty: "no rules",
    }
    .write(out, paint)
}

fn smuggling(out: &mut impl Write, s: &Snapshot, paint: Paint) -> io::Result<()> {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    Table {
        title: "SMTP smuggling and STARTTLS injection",
        header: &["", ">SINCE START", ">LAST HOUR"],
        rows: vec![
            vec![
                plain("lone dot not bounded by CRLF"),
                count_warn(all.smuggling_attempts),
                count_warn(hour.smuggling_attempts),
            ],
            vec![
                plain("bytes pipelined after STARTTLS"),
                count_warn(all.starttls_injections),
                count_warn(hour.starttls_injections),
            ],
        ],
        empty: "",
    }
    .write(out, paint)
}

// === tables ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
    Dim,
}

#[derive(Debug)]
struct Cell {
    text: String,
    tone: Tone,
    right: bool,
}

impl Cell {
    fn new(text: String, tone: Tone) -> Self {
        Self {
            text,
            tone,
            right: false,
        }
    }

    fn right(mut self) -> Self {
        self.right = true;
        self
    }
}

fn plain(s: &str) -> Cell {
    Cell::new(clean(s), Tone::Plain)
}

fn num(n: u64) -> Cell {
    Cell::new(n.to_string(), Tone::Plain).right()
}

/// A count that deserves a look when not zero.
fn count_warn(n: u64) -> Cell {
    Cell::new(n.to_string(), if n > 0 { Tone::Warn } else { Tone::Plain }).right()
}

/// Control characters (a terminal's escape sequences) become `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A titled table; a header starting with `>` is right-aligned.
struct Table<'a> {
    title: &'a str,
    header: &'a [&'a str],
    rows: Vec<Vec<Cell>>,
    /// Printed instead of an empty table.
    empty: &'a str,
}

impl Table<'_> {
    fn write(&self, out: &mut impl Write, paint: Paint) -> io::Result<()> {
        writeln!(out, "\n{}", paint.bold(self.title))?;
        if self.rows.is_empty() {
            return writeln!(out, "  {}", self.empty);
        }
        let names: Vec<&str> = self
            .header
            .iter()
            .map(|h| h.trim_start_matches('>'))
            .collect();
        let mut widths: Vec<usize> = names.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.text.chars().count());
            }
        }
        let head: Vec<String> = names
            .iter()
            .zip(self.header)
            .zip(&widths)
            .map(|((n, h), w)| pad(n, *w, h.starts_with('>')))
            .collect();
        writeln!(out, "  {}", head.join("  ").trim_end())?;
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| paint.tone(c.tone, &pad(&c.text, *w, c.right)))
                .collect();
            writeln!(out, "  {}", cells.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn pad(s: &str, width: usize, right: bool) -> String {
    if right {
        format!("{s:>width$}")
    } else {
        format!("{s:<width$}")
    }
}

/// ANSI colour, or nothing.
#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn tone(&self, tone: Tone, s: &str) -> String {
        match tone {
            Tone::Plain => s.to_string(),
            Tone::Good => self.wrap("32", s),
            Tone::Warn => self.wrap("33", s),
            Tone::Bad => self.wrap("31", s),
            Tone::Dim => self.wrap("2", s),
        }
    }

    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::status::{BackendFacts, CertificateFacts, Status};
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        let s = Status::new("mx1.example.test", Duration::from_secs(21 * 86_400));
        s.set_certificates(
            vec![CertificateFacts {
                name: "mx1\x1b[2J".into(),
                names: vec!["mx1.example.test".into()],
                algorithm: "ECDSA",
                default: true,
                not_after: i64::from(u32::MAX),
            }],
            Duration::from_secs(21 * 86_400),
        );
        s.set_backends(vec![BackendFacts {
            name: "postfix".into(),
            identity: "proxy-v2",
            servers: Some(vec!["127.0.0.1:10025".into()]),
        }]);
        s.backend_probe(
            "postfix",
            "127.0.0.1:10025",
            Some("connect: connection refused"),
        );
        s.handshake("TLSv1.3", "matched", "mx1\x1b[2J");
        s.snapshot()
    }

    #[test]
    fn plain_report_has_every_section_and_no_escape_codes() {
        let mut out = Vec::new();
        write(&mut out, &snapshot(), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("mx1?[2J"), "{text}");
        for title in [
            "Listeners",
            "Certificates (warning window 21 days)",
            "Version negotiated",
            "SNI",
            "Handshake failures",
            "Sessions",
            "Backends",
            "TLS policy",
            "SMTP smuggling",
        ] {
            assert!(text.contains(title), "{title}: {text}");
        }
        assert!(
            text.contains(
                "WARNING  backend postfix server 127.0.0.1:10025 down: connect: connection refused"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("TLSv1.3"))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["TLSv1.3", "1", "100", "%", "1", "100", "%"]
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let mut out = Vec::new();
        write(&mut out, &snapshot(), true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\x1b[31mdown"), "{text}");
    }
}
