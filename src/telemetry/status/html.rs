//! `/status`: the snapshot as one server-rendered page. No script, no
//! external asset, a small inline stylesheet; readable on a phone
//! (viewport, tables that scroll sideways). `?refresh=N` adds a meta
//! refresh.
//!
//! Every value goes through [`Html::text`], which escapes it; markup goes
//! in through [`Html::raw`], which takes `&'static str` only, so nothing
//! built at run time can reach the page unescaped.

use std::fmt::Display;

use super::human::{ago, duration, time};
use super::snapshot::{Backend, Certificate, Server, Snapshot, Window};
use super::{NEGOTIATED, OFFERED, SESSIONS, SNI};

/// Bounds of `?refresh=N`, in seconds; values outside are clamped.
pub const REFRESH_MIN: u64 = 5;
pub const REFRESH_MAX: u64 = 3600;

const STYLE: &str = "\
:root{color-scheme:light dark;--bad:#c62828;--warn:#b26a00;--good:#2e7d32;--line:#8884}\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:72rem;padding:.5rem 1rem 2rem}\
h1{font-size:1.35rem;margin:.6rem 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid var(--line)}\
h3{font-size:.95rem;margin:1rem 0 .3rem}p{margin:.3rem 0}.meta{opacity:.8}\
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:20rem}\
th,td{padding:.25rem .6rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}\
th{font-weight:600;white-space:nowrap}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn);font-weight:600}.good{color:var(--good)}\
.muted{opacity:.65}ul.warnings{padding-left:1.2rem}ul.warnings li{color:var(--bad);font-weight:600}\
.bar{display:inline-block;width:5rem;height:.6rem;background:var(--line);vertical-align:middle;margin-left:.4rem}\
.bar span{display:block;height:100%;background:currentColor;opacity:.55}\
td.s,td.t{white-space:nowrap}nav a{margin-right:.6rem}code{font-size:.9em}\
@media (max-width:40rem){body{font-size:14px;padding:.3rem .5rem 1.5rem}th,td{padding:.2rem .35rem}.bar{display:none}}";

/// Page text under construction.
struct Html(String);

impl Html {
    /// Markup: only text fixed in this file.
    fn raw(&mut self, s: &'static str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    /// Any value: escaped for text and attribute contexts alike.
    fn text(&mut self, s: &str) -> &mut Self {
        escape_into(&mut self.0, s);
        self
    }

    fn num(&mut self, n: impl Display) -> &mut Self {
        self.text(&n.to_string())
    }
}

/// `&`, `<`, `>`, `"` and `'` as character references.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `refresh=N` from a query string, clamped to
/// [`REFRESH_MIN`]..=[`REFRESH_MAX`]; `None` when absent or not a number.
pub fn refresh_from_query(query: Option<&str>) -> Option<u64> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("refresh="))?;
    let n: u64 = value.parse().ok()?;
    Some(n.clamp(REFRESH_MIN, REFRESH_MAX))
}

/// The whole page.
pub fn render(s: &Snapshot, refresh: Option<u64>) -> String {
    let mut h = Html(String::with_capacity(16 * 1024));
    head(&mut h, s, refresh);
    summary(&mut h, s, refresh);
    listeners(&mut h, s);
    certificates(&mut h, s);
    tls(&mut h, s);
    failures(&mut h, s);
    sessions(&mut h, s);
    backends(&mut h, s);
    policy(&mut h, s);
    smuggling(&mut h, s);
    h.raw("<footer><p class=\"meta\">The same data: <a href=\"/status.json\">/status.json</a> · Prometheus: <a href=\"/metrics\">/metrics</a> · docs/status.md</p></footer>\n</body>\n</html>\n");
    h.0
}

// === sections ===

fn head(h: &mut Html, s: &Snapshot, refresh: Option<u64>) {
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(n) = refresh {
        h.raw("<meta http-equiv=\"refresh\" content=\"")
            .num(n)
            .raw("\">\n");
    }
    h.raw("<title>starttls-proxy status: ")
        .text(&s.hostname)
        .raw("</title>\n<style>")
        .raw(STYLE)
        .raw("</style>\n</head>\n<body>\n");
}

fn summary(h: &mut Html, s: &Snapshot, refresh: Option<u64>) {
    h.raw("<header><h1>starttls-proxy on ")
        .text(&s.hostname)
        .raw("</h1>\n<p class=\"meta\" id=\"uptime\">Version ")
        .text(&s.version)
        .raw(" · up ")
        .text(&duration(s.uptime_seconds))
        .raw(" (since ")
        .text(&time(s.started_at))
        .raw(") · page at ")
        .text(&time(s.now))
        .raw("</p>\n");
    if let Some(r) = &s.config_reload {
        h.raw("<p class=\"meta\" id=\"config-reload\">Last config reload (SIGHUP): ");
        result_span(h, &r.result);
        h.raw(" ").text(&ago(s.now, r.at)).raw("</p>\n");
    }
    h.raw("<nav><p class=\"meta\">Refresh: ");
    for (n, label) in [
        (None, "off"),
        (Some(10), "10 s"),
        (Some(60), "1 min"),
        (Some(300), "5 min"),
    ] {
        if n == refresh {
            h.raw("<b>").raw(label).raw("</b> ");
        } else {
            h.raw("<a href=\"/status");
            if let Some(n) = n {
                h.raw("?refresh=").num(n);
            }
            h.raw("\">").raw(label).raw("</a> ");
        }
    }
    h.raw("</p></nav></header>\n<section id=\"warnings\">");
    if s.warnings.is_empty() {
        h.raw("<p class=\"good\">No warnings: no certificate within ")
            .num(s.expiry_warning_days)
            .raw(" days of expiry, no backend server down.</p>");
    } else {
        h.raw("<h2>Warnings</h2><ul class=\"warnings\">");
        for w in &s.warnings {
            h.raw("<li>").text(w).raw("</li>");
        }
        h.raw("</ul>");
    }
    h.raw("</section>\n");
}

fn listeners(h: &mut Html, s: &Snapshot) {
    section(h, "listeners", "Listeners");
    if s.listeners.is_empty() {
        h.raw("<p class=\"muted\">None bound yet.</p>");
    } else {
        table_head(
            h,
            &[
                ("Address", false),
                ("Mode", false),
                ("TLS", false),
                ("Backend", false),
                ("Connections", true),
                ("Smuggling attempts", true),
                ("STARTTLS injections", true),
            ],
        );
        for l in &s.listeners {
            row(h, "listener-", &l.address);
            td(h, &l.address);
            td(h, &l.mode);
            td(h, &l.tls);
            td(h, &l.backend);
            td_num(h, l.connections, None);
            td_num(h, l.smuggling_attempts, warn_if(l.smuggling_attempts > 0));
            td_num(h, l.starttls_injections, warn_if(l.starttls_injections > 0));
            h.raw("</tr>");
        }
        table_end(h);
    }
    h.raw("</section>\n");
}

fn certificates(h: &mut Html, s: &Snapshot) {
    section(h, "certificates", "Certificates");
    h.raw("<p class=\"meta\">Warning window: ")
        .num(s.expiry_warning_days)
        .raw(" days (<code>[tls] expiry_warning</code>).</p>");
    table_head(
        h,
        &[
            ("Name", false),
            ("Names", false),
            ("Key", false),
            ("Not after", false),
            ("Days left", true),
            ("Handshakes", true),
            ("Last reload", false),
        ],
    );
    for c in &s.certificates {
        certificate_row(h, c, s.now);
    }
    table_end(h);
    h.raw("</section>\n");
}

fn certificate_row(h: &mut Html, c: &Certificate, now: i64) {
    row(h, "certificate-", &c.name);
    h.raw("<td>").text(&c.name);
    if c.default {
        h.raw(" <span class=\"muted\">(default)</span>");
    }
    h.raw("</td>");
    td(h, &c.names.join(", "));
    td(h, &c.algorithm);
    td_time(h, &time(c.not_after));
    let class = if c.expired {
        Some("bad")
    } else {
        warn_if(c.expiring)
    };
    td_num(h, c.days_left, class);
    td_num(h, c.handshakes, None);
    h.raw("<td>");
    match &c.last_reload {
        None => {
            h.raw("<span class=\"muted\">none since start</span>");
        }
        Some(r) => {
            result_span(h, &r.result);
            h.raw(" ").text(&ago(now, r.at));
        }
    }
    h.raw(" <span class=\"muted\">(")
        .num(c.reloads_success)
        .raw(" taken, ")
        .num(c.reloads_failure)
        .raw(" failed)</span></td></tr>");
}

fn tls(h: &mut Html, s: &Snapshot) {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    section(h, "tls", "TLS handshakes");
    h.raw("<p>")
        .num(all.handshakes)
        .raw(" completed, ")
        .num(all.failures)
        .raw(" failed since start; ")
        .num(hour.handshakes)
        .raw(" completed, ")
        .num(hour.failures)
        .raw(" failed in the last hour.</p>");
    h.raw("<h3>Version negotiated</h3>");
    share_table(h, "version-", &NEGOTIATED, |w| &w.versions, all, hour);
    h.raw("<h3>SNI</h3>");
    share_table(h, "sni-", &SNI, |w| &w.sni, all, hour);
    h.raw("<h3>Highest version offered by clients (failed handshakes included)</h3>");
    share_table(
        h,
        "offered-",
        &OFFERED,
        |w| &w.client_max_versions,
        all,
        hour,
    );
    h.raw("</section>\n");
}

/// One row per key of a fixed set: count and share since start and in the
/// last hour. Rows that are zero in both are left out, `other` and
/// `unknown` included only then.
fn share_table(
    h: &mut Html,
    id: &'static str,
    keys: &[&'static str],
    pick: impl Fn(&Window) -> &std::collections::BTreeMap<String, u64>,
    all: &Window,
    hour: &Window,
) {
    let total = |w: &Window| pick(w).values().sum::<u64>();
    let (t_all, t_hour) = (total(all), total(hour));
    table_head(
        h,
        &[
            ("", false),
            ("Since start", true),
            ("Share", false),
            ("Last hour", true),
            ("Share", false),
        ],
    );
    let mut shown = 0;
    for k in keys {
        let (a, b) = (Window::get(pick(all), k), Window::get(pick(hour), k));
        if a == 0 && b == 0 {
            continue;
        }
        shown += 1;
        h.raw("<tr id=\"").raw(id).text(k).raw("\">");
        td(h, k);
        td_num(h, a, None);
        share(h, a, t_all);
        td_num(h, b, None);
        share(h, b, t_hour);
        h.raw("</tr>");
    }
    if shown == 0 {
        h.raw("<tr><td colspan=\"5\" class=\"muted\">none yet</td></tr>");
    }
    table_end(h);
}

fn share(h: &mut Html, n: u64, total: u64) {
    if total == 0 {
        h.raw("<td></td>");
        return;
    }
    let pct = (u128::from(n) * 100 + u128::from(total) / 2) / u128::from(total);
    h.raw("<td class=\"s\">")
        .num(pct)
        .raw("&nbsp;%<span class=\"bar\"><span style=\"width:")
        .num(pct)
        .raw("%\"></span></span></td>");
}

fn failures(h: &mut Html, s: &Snapshot) {
    section(h, "failures", "Handshake failures");
    if s.handshake_failures.is_empty() {
        h.raw("<p class=\"good\">None since start.</p></section>\n");
        return;
    }
    table_head(
        h,
        &[
            ("Reason", false),
            ("Since start", true),
            ("Last hour", true),
            ("Client's highest offered version", false),
        ],
    );
    for f in &s.handshake_failures {
        row(h, "failure-", &f.reason);
        td(h, &f.reason);
        td_num(h, f.since_start, None);
        td_num(h, f.last_hour, None);
        h.raw("<td>");
        for (i, v) in OFFERED
            .iter()
            .filter(|v| f.client_max_versions.contains_key(**v))
            .enumerate()
        {
            if i > 0 {
                h.raw(", ");
            }
            h.text(v)
                .raw("&nbsp;×&nbsp;")
                .num(Window::get(&f.client_max_versions, v));
        }
        h.raw("</td></tr>");
    }
    table_end(h);
    h.raw("<p class=\"meta\">Reasons are explained in docs/telemetry.md.</p></section>\n");
}

fn sessions(h: &mut Html, s: &Snapshot) {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    section(h, "sessions", "Sessions");
    table_head(
        h,
        &[("", false), ("Since start", true), ("Last hour", true)],
    );
    for k in SESSIONS {
        let label = match k {
            "starttls" => "STARTTLS",
            "implicit" => "implicit TLS",
            _ => "plaintext",
        };
        h.raw("<tr id=\"session-")
            .raw(k)
            .raw("\"><td>")
            .raw(label)
            .raw("</td>");
        td_num(h, Window::get(&all.sessions, k), None);
        td_num(h, Window::get(&hour.sessions, k), None);
        h.raw("</tr>");
    }
    h.raw("<tr id=\"messages\"><td>messages relayed</td>");
    td_num(h, all.messages_relayed, None);
    td_num(h, hour.messages_relayed, None);
    h.raw("</tr>");
    table_end(h);
    if !s.connections_rejected.is_empty() {
        h.raw("<h3>Connections refused before SMTP (since start)</h3>");
        table_head(h, &[("Reason", false), ("Count", true)]);
        for (reason, n) in &s.connections_rejected {
            row(h, "rejected-", reason);
            td(h, reason);
            td_num(h, *n, None);
            h.raw("</tr>");
        }
        table_end(h);
    }
    h.raw("</section>\n");
}

fn backends(h: &mut Html, s: &Snapshot) {
    section(h, "backends", "Backends");
    table_head(
        h,
        &[
            ("Backend", false),
            ("Server", false),
            ("State", false),
            ("Since", false),
            ("Last probe", false),
            ("Error of the last probe", false),
            ("Connect failures", true),
        ],
    );
    for b in &s.backends {
        if b.kind == "sink" {
            row(h, "backend-", &b.name);
            td(h, &b.name);
            h.raw("<td class=\"muted\">built-in sink</td><td class=\"good\">up</td><td></td><td></td><td></td><td></td></tr>");
            continue;
        }
        for srv in &b.servers {
            server_row(h, b, srv, s.now);
        }
    }
    table_end(h);
    h.raw("</section>\n");
}

fn server_row(h: &mut Html, b: &Backend, srv: &Server, now: i64) {
    h.raw("<tr id=\"server-")
        .text(&b.name)
        .raw("-")
        .text(&srv.address)
        .raw("\">");
    h.raw("<td>")
        .text(&b.name)
        .raw(" <span class=\"muted\">(")
        .text(&b.identity)
        .raw(")</span></td>");
    td(h, &srv.address);
    let class = match srv.state.as_str() {
        "up" => "good",
        "down" => "bad",
        _ => "muted",
    };
    h.raw("<td class=\"")
        .raw(class)
        .raw("\">")
        .text(&srv.state)
        .raw("</td>");
    td_time(h, &srv.state_since.map(|t| ago(now, t)).unwrap_or_default());
    td_time(
        h,
        &srv.last_probe_at.map(|t| ago(now, t)).unwrap_or_default(),
    );
    match &srv.error {
        Some(e) => {
            h.raw("<td class=\"bad\">").text(e).raw("</td>");
        }
        None => {
            h.raw("<td></td>");
        }
    }
    td_num(h, srv.connect_failures, warn_if(srv.connect_failures > 0));
    h.raw("</tr>");
}

fn policy(h: &mut Html, s: &Snapshot) {
    section(h, "tls-policy", "TLS policy");
    if s.tls_policy.is_empty() {
        h.raw("<p class=\"muted\">No rules (<code>[[tls_policy]]</code>).</p></section>\n");
        return;
    }
    table_head(
        h,
        &[
            ("Rule", false),
            ("Satisfied", true),
            ("Would refuse", true),
            ("Refused", true),
        ],
    );
    for p in &s.tls_policy {
        row(h, "policy-", &p.rule);
        td(h, &p.rule);
        td_num(h, p.satisfied, None);
        td_num(h, p.would_refuse, warn_if(p.would_refuse > 0));
        td_num(h, p.refused, warn_if(p.refused > 0));
        h.raw("</tr>");
    }
    table_end(h);
    h.raw("</section>\n");
}

fn smuggling(h: &mut Html, s: &Snapshot) {
    let (all, hour) = (&s.tls.since_start, &s.tls.last_hour);
    section(h, "smuggling", "SMTP smuggling and STARTTLS injection");
    table_head(
        h,
        &[("", false), ("Since start", true), ("Last hour", true)],
    );
    h.raw("<tr id=\"smuggling-attempts\"><td>messages with a lone dot not bounded by CRLF</td>");
    td_num(
        h,
        all.smuggling_attempts,
        warn_if(all.smuggling_attempts > 0),
    );
    td_num(
        h,
        hour.smuggling_attempts,
        warn_if(hour.smuggling_attempts > 0),
    );
    h.raw(
        "</tr><tr id=\"starttls-injections\"><td>bytes pipelined after STARTTLS (discarded)</td>",
    );
    td_num(
        h,
        all.starttls_injections,
        warn_if(all.starttls_injections > 0),
    );
    td_num(
        h,
        hour.starttls_injections,
        warn_if(hour.starttls_injections > 0),
    );
    h.raw("</tr>");
    table_end(h);
    h.raw("</section>\n");
}

// === pieces ===

fn section(h: &mut Html, id: &'static str, title: &'static str) {
    h.raw("<section id=\"")
        .raw(id)
        .raw("\"><h2>")
        .raw(title)
        .raw("</h2>");
}

fn table_head(h: &mut Html, columns: &[(&'static str, bool)]) {
    h.raw("<div class=\"scroll\"><table><thead><tr>");
    for (name, numeric) in columns {
        h.raw(if *numeric { "<th class=\"n\">" } else { "<th>" })
            .raw(name)
            .raw("</th>");
    }
    h.raw("</tr></thead><tbody>");
}

fn table_end(h: &mut Html) {
    h.raw("</tbody></table></div>");
}

/// Opens a row whose id is `prefix` + a config name or label.
fn row(h: &mut Html, prefix: &'static str, key: &str) {
    h.raw("<tr id=\"").raw(prefix).text(key).raw("\">");
}

fn td(h: &mut Html, s: &str) {
    h.raw("<td>").text(s).raw("</td>");
}

/// A date or a time ago, kept on one line.
fn td_time(h: &mut Html, s: &str) {
    h.raw("<td class=\"t\">").text(s).raw("</td>");
}

fn td_num(h: &mut Html, n: impl Display, class: Option<&'static str>) {
    match class {
        Some(c) => h.raw("<td class=\"n ").raw(c).raw("\">"),
        None => h.raw("<td class=\"n\">"),
    };
    h.num(n).raw("</td>");
}

fn warn_if(cond: bool) -> Option<&'static str> {
    cond.then_some("warn")
}

fn result_span(h: &mut Html, result: &str) {
    let class = if result == "success" { "good" } else { "bad" };
    h.raw("<span class=\"")
        .raw(class)
        .raw("\">")
        .text(result)
        .raw("</span>");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{BackendFacts, CertificateFacts, ListenerFacts, Status};
    use super::*;

    #[test]
    fn escapes_the_five_characters() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&amp;</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape("mx1.example.test"), "mx1.example.test");
    }

    #[test]
    fn refresh_is_bounded() {
        assert_eq!(refresh_from_query(None), None);
        assert_eq!(refresh_from_query(Some("")), None);
        assert_eq!(refresh_from_query(Some("refresh=30")), Some(30));
        assert_eq!(refresh_from_query(Some("x=1&refresh=1")), Some(REFRESH_MIN));
        assert_eq!(
            refresh_from_query(Some("refresh=999999")),
            Some(REFRESH_MAX)
        );
        assert_eq!(refresh_from_query(Some("refresh=-5")), None);
        assert_eq!(refresh_from_query(Some("refresh=5;url=http://x")), None);
    }

    /// Every interpolated value is escaped: config names made of markup
    /// come out as text.
    #[test]
    fn config_values_cannot_inject_markup() {
        let evil = "<script>alert(1)</script>";
        let s = Status::new(evil, Duration::ZERO);
        s.set_listeners(vec![ListenerFacts {
            address: evil.into(),
            mode: "starttls",
            tls: "required",
            backend: evil.into(),
        }]);
        s.set_certificates(
            vec![CertificateFacts {
                name: evil.into(),
                names: vec![evil.into()],
                algorithm: "RSA",
                default: true,
                not_after: 0,
            }],
            Duration::ZERO,
        );
        s.set_backends(vec![BackendFacts {
            name: evil.into(),
            identity: "none",
            servers: Some(vec![evil.into()]),
        }]);
        s.backend_probe(evil, evil, Some(evil));
        s.policy_rules([evil]);
        let page = render(&s.snapshot(), Some(10));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(!render(&s.snapshot(), None).contains("http-equiv"));
    }
}
