//! deploy/monitoring/grafana-dashboard.json queries only what the proxy
//! exports: every metric name in its PromQL (panels and template
//! variables) is one src/telemetry/metrics.rs registers (a histogram's as
//! `_bucket`, `_sum`, `_count`), every label it groups by or matches on is
//! one that metric carries (or Prometheus's target labels), and the
//! tenants row groups sessions and messages `by (backend)`. The names and
//! labels are read from metrics.rs as text: every metric is written there
//! (its module doc says so), through `counter!`, `gauge!` or `histogram!`
//! with its labels as `"key" => value`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const PREFIX: &str = "starttls_proxy_";
/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn read(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every series name the proxy can export, with its label names.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let src = read("src/telemetry/metrics.rs");
    // const NAME: &str = "starttls_proxy_…";
    let consts: BTreeMap<&str, &str> = src
        .lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("const ")?.split_once(": &str = \"")?;
            Some((name, value.strip_suffix("\";")?))
        })
        .filter(|(_, v)| v.starts_with(PREFIX))
        .collect();
    assert!(consts.len() >= 15, "{consts:?}");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for kind in ["counter!(", "gauge!(", "histogram!("] {
        for (i, _) in src.match_indices(kind) {
            if src[..i].ends_with("describe_") {
                continue;
            }
            let call = &src[i + kind.len()..];
            let call = &call[..call.find(';').expect("a macro call ends with ;")];
            let name = call.split([',', ')']).next().unwrap().trim().to_string();
            let metric = *consts
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{kind} of {name:?}, not a metric name constant"));
            // "key" => value: the literals followed by =>.
            let parts: Vec<&str> = call.split('"').collect();
            let labels: BTreeSet<String> = (1..parts.len())
                .step_by(2)
                .filter(|&j| parts.get(j + 1).is_some_and(|p| p.trim().starts_with("=>")))
                .map(|j| parts[j].to_string())
                .collect();
            if kind == "histogram!(" {
                let mut bucket = labels.clone();
                bucket.insert("le".to_string());
                out.entry(format!("{metric}_bucket"))
                    .or_default()
                    .extend(bucket);
                for suffix in ["_sum", "_count"] {
                    out.entry(format!("{metric}{suffix}"))
                        .or_default()
                        .extend(labels.clone());
                }
            } else {
                out.entry(metric.to_string()).or_default().extend(labels);
            }
        }
    }
    // What the extraction must have found, so that a change to metrics.rs
    // that defeats it fails here rather than passing everything.
    assert_eq!(
        out["starttls_proxy_sessions_total"],
        ["backend", "tls"].map(String::from).into()
    );
    assert!(out.contains_key("starttls_proxy_tls_handshake_duration_seconds_bucket"));
    assert!(out["starttls_proxy_tls_policy_evaluations_total"].contains("result"));
    out
}

/// (where, PromQL) of every query in the dashboard: panel targets (rows'
/// nested panels too) and template variable queries.
fn queries() -> Vec<(String, String)> {
    let text = read("deploy/monitoring/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        for q in [&v["definition"], &v["query"], &v["query"]["query"]] {
            if let Some(q) = q.as_str().filter(|q| q.contains(PREFIX)) {
                out.push((format!("variable {name:?}"), q.to_string()));
            }
        }
    }
    assert!(out.len() >= 20, "{out:?}");
    out
}

/// Metric names in a query, each with the label names of its `{…}`.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices(PREFIX) {
        if expr[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &expr[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        let mut labels = Vec::new();
        if let Some(m) = rest[end..].strip_prefix('{') {
            let m = &m[..m.find('}').expect("a selector ends with }")];
            for matcher in m.split(',').filter(|s| !s.trim().is_empty()) {
                let key = matcher.split(['=', '!', '~']).next().unwrap().trim();
                labels.push(key.to_string());
            }
        }
        out.push((name, labels));
    }
    out
}

/// The labels of every `by (…)` and `without (…)` in a query.
fn grouping(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by (", "by(", "without (", "without("] {
        for (i, _) in expr.match_indices(kw) {
            let rest = &expr[i + kw.len()..];
            let list = &rest[..rest.find(')').expect("a grouping ends with )")];
            out.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// What is wrong with one query, if anything.
fn problems(expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    let sel = selectors(expr);
    if sel.is_empty() {
        out.push("no starttls_proxy_ metric".to_string());
    }
    let mut available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for (name, _) in &sel {
        match exported.get(name) {
            Some(labels) => available.extend(labels.iter().map(String::as_str)),
            None => out.push(format!("{name} is not exported")),
        }
    }
    for (name, labels) in &sel {
        let Some(has) = exported.get(name) else {
            continue;
        };
        for l in labels {
            if !has.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                out.push(format!("{name} has no label {l:?}"));
            }
        }
    }
    for l in grouping(expr) {
        if !available.contains(l.as_str()) {
            out.push(format!("grouped by {l:?}, which none of its metrics has"));
        }
    }
    out
}

#[test]
fn every_dashboard_query_uses_only_exported_metrics_and_labels() {
    let exported = exported();
    let mut bad = Vec::new();
    for (place, expr) in queries() {
        for p in problems(&expr, &exported) {
            bad.push(format!("{place}: {p}: {expr}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_dashboard_has_per_tenant_sessions_and_messages_by_backend() {
    let queries = queries();
    for metric in [
        "starttls_proxy_sessions_total",
        "starttls_proxy_messages_relayed_total",
    ] {
        assert!(
            queries.iter().any(|(place, e)| place.starts_with("panel")
                && selectors(e).iter().any(|(n, _)| n == metric)
                && grouping(e).iter().any(|l| l == "backend")),
            "no panel groups {metric} by (backend)"
        );
    }
}

/// The checks themselves catch a wrong name, a wrong label and a wrong
/// grouping.
#[test]
fn a_wrong_name_or_label_is_reported() {
    let exported = exported();
    let ok =
        r#"sum by (backend, tls) (rate(starttls_proxy_sessions_total{instance=~"$instance"}[5m]))"#;
    assert!(problems(ok, &exported).is_empty());
    for wrong in [
        r#"sum(rate(starttls_proxy_session_total{instance=~"$instance"}[5m]))"#,
        r#"sum(rate(starttls_proxy_sessions_total{tennant="a"}[5m]))"#,
        r#"sum by (server) (rate(starttls_proxy_sessions_total[5m]))"#,
        r#"histogram_quantile(0.5, sum by (le) (rate(starttls_proxy_tls_handshake_duration_seconds[5m])))"#,
        "vector(1)",
    ] {
        assert!(!problems(wrong, &exported).is_empty(), "{wrong}");
    }
}
