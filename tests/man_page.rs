//! deploy/man/ holds the man pages generated from the `--help` texts with
//! clap_mangen: starttls-proxy.1 and one page per command
//! (starttls-proxy-check.1, …). The test regenerates them and fails when
//! a committed page differs, so the page the Debian package ships is the
//! help the binary prints. `UPDATE_MAN=1 cargo test --test man_page`
//! rewrites them.

mod support;

use clap::CommandFactory;
use starttls_proxy::cli::Cli;
use support::repo;

/// (file name, roff text) of every page.
fn pages() -> Vec<(String, Vec<u8>)> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf).unwrap();
    out.push(("starttls-proxy.1".to_string(), buf));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("starttls-proxy-{}", sub.get_name());
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let sub = sub.clone().name(static_name);
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf).unwrap();
        out.push((format!("{name}.1"), buf));
    }
    out
}

#[test]
fn committed_man_pages_match_the_help_texts() {
    let dir = repo().join("deploy/man");
    let update = std::env::var_os("UPDATE_MAN").is_some();
    for (file, text) in pages() {
        let path = dir.join(&file);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: run UPDATE_MAN=1 cargo test --test man_page",
            path.display()
        );
    }
}

#[test]
fn the_main_page_has_the_sections_of_a_man_page() {
    let (_, text) = &pages()[0];
    let text = String::from_utf8_lossy(text);
    for needle in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        "\\-\\-allow\\-root",
        "FILES:",
        "SIGNALS",
        "EXIT STATUS:",
        "/etc/starttls\\-proxy/starttls\\-proxy.toml",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}
