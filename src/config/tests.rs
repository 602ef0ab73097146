//! Config parsing tests (compiled only for `cargo test`).
#![cfg(test)]

use super::*;

const GOOD: &str = r#"
hostname = "mx1.example.test"

[[listener]]
address = "127.0.0.1:2525"
backend = "sink"

[[listener]]
address = "[::1]:2525"
tls = "required"
backend = "postfix"

[tls]
default_certificate = "mx1"

[[certificate]]
name = "mx1"
chain = "certs.example/mx1.example.test/fullchain.pem"
key = "certs.example/mx1.example.test/privkey.pem"

[[certificate]]
name = "tenant2"
chain = "a.pem"
key = "b.pem"

[[backend]]
name = "sink"
sink = "var/mail"

[[backend]]
name = "postfix"
servers = ["127.0.0.1:10025", "127.0.0.1:10026"]

[timeouts]
command = "5m"
handshake = "10s"
"#;

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("test.toml"), src)
}

fn one_error(src: &str) -> String {
    match parse(src) {
        Ok(_) => panic!("config was accepted"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "expected one error, got: {e}");
            e.to_string()
        }
    }
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.hostname, "mx1.example.test");
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].address, "[::1]:2525".parse().unwrap());
    assert_eq!(c.listeners[1].tls, TlsPolicy::Required);
    assert_eq!(c.listeners[1].backend, 1);
    assert_eq!(c.listeners[0].mode, ListenerMode::Starttls);
    assert_eq!(c.default_certificate().name, "mx1");
    assert_eq!(c.tls.session_tickets, 0);
    assert_eq!(c.tls.min_version, MinVersion::Tls12);
    assert_eq!(c.timeouts.command, Duration::from_secs(300));
    assert_eq!(c.timeouts.handshake, Duration::from_secs(10));
    assert_eq!(c.timeouts.session, Duration::from_secs(3600));
    assert_eq!(c.limits.line_length, 4096);
    assert_eq!(
        c.certificates[1].chain_at,
        Location {
            line: 23,
            column: 9
        }
    );
    assert!(matches!(&c.backends[1].target, BackendTarget::Servers(s) if s.len() == 2));
}

#[test]
fn unknown_key_names_line_and_key() {
    let src = GOOD.replace(
        "handshake = \"10s\"",
        "handshake = \"10s\"\nhandshak = \"1s\"",
    );
    let e = one_error(&src);
    assert!(
        e.starts_with("test.toml:37:1: timeouts.handshak: unknown field `handshak`"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_array_of_tables_names_index() {
    let src = GOOD.replace("tls = \"required\"", "tls = \"required\"\nbogus = 1");
    let e = one_error(&src);
    assert!(
        e.starts_with("test.toml:11:1: listener[1].bogus: unknown field `bogus`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_line_and_key() {
    let e = one_error(&GOOD.replace("\"10s\"", "\"10 parsecs\""));
    assert!(
        e.starts_with("test.toml:36:13: timeouts.handshake: invalid duration \"10 parsecs\""),
        "{e}"
    );
}

#[test]
fn durations_must_be_positive_and_at_most_a_week() {
    for bad in ["0s", "8days", "300000000000y"] {
        let e = one_error(&GOOD.replace("\"10s\"", &format!("\"{bad}\"")));
        assert!(e.starts_with("test.toml:36:13: timeouts.handshake:"), "{e}");
    }
    let e = one_error(&GOOD.replace("[tls]", "[tls]\nsession_tickets = 1000"));
    assert!(
        e.contains("tls.session_tickets: at most 16 tickets per handshake"),
        "{e}"
    );
}

#[test]
fn bad_enum_lists_choices() {
    let e = one_error(&GOOD.replace("tls = \"required\"", "tls = \"mandatory\""));
    assert!(
        e.starts_with("test.toml:10:7: listener[1].tls: unknown variant `mandatory`"),
        "{e}"
    );
    assert!(e.contains("opportunistic"), "{e}");
}

#[test]
fn tls_below_1_2_is_refused() {
    let src = GOOD.replace("[tls]", "[tls]\nmin_version = \"1.1\"");
    let e = one_error(&src);
    assert!(e.contains("tls.min_version: unknown variant `1.1`"), "{e}");
}

#[test]
fn unknown_backend_is_named_with_choices() {
    let e = one_error(&GOOD.replace("backend = \"postfix\"", "backend = \"postfx\""));
    assert_eq!(
        e,
        "test.toml:11:11: listener[1].backend: no [[backend]] named \"postfx\" (known: \"postfix\", \"sink\")"
    );
}

#[test]
fn default_certificate_required_with_two() {
    let e = one_error(&GOOD.replace("default_certificate = \"mx1\"", ""));
    assert!(
        e.contains("tls.default_certificate: required when more than one certificate"),
        "{e}"
    );
}

#[test]
fn default_certificate_must_exist() {
    let e = one_error(&GOOD.replace(
        "default_certificate = \"mx1\"",
        "default_certificate = \"mx9\"",
    ));
    assert!(
        e.starts_with("test.toml:14:23: tls.default_certificate: no [[certificate]] named \"mx9\""),
        "{e}"
    );
}

#[test]
fn several_errors_are_all_reported() {
    let src = GOOD
        .replace("backend = \"postfix\"", "backend = \"nope\"")
        .replace("name = \"tenant2\"", "name = \"mx1\"");
    let e = parse(&src).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
}

#[test]
fn syntax_error_has_location() {
    let e = one_error("hostname = \"a.test\"\n[[listener]\n");
    assert!(e.starts_with("test.toml:2:"), "{e}");
}

#[test]
fn backend_needs_exactly_one_target() {
    let e = one_error(&GOOD.replace("sink = \"var/mail\"", ""));
    assert!(e.contains("backend[0]: needs `servers`"), "{e}");
}

#[test]
fn bad_address_is_reported() {
    let e = one_error(&GOOD.replace("127.0.0.1:2525", "127.0.0.1"));
    assert!(e.starts_with("test.toml:5:11: listener[0].address:"), "{e}");
}

#[test]
fn dns_names() {
    assert!(is_dns_name("mx1.example.test"));
    assert!(!is_dns_name("localhost"));
    assert!(!is_dns_name("mx1..test"));
    assert!(!is_dns_name("-a.test"));
    assert!(!is_dns_name("a b.test"));
}

#[test]
fn shipped_example_configs_parse() {
    for (name, text) in [
        (
            "config/quickstart.toml",
            include_str!("../../config/quickstart.toml"),
        ),
        (
            "config/production.example.toml",
            include_str!("../../config/production.example.toml"),
        ),
    ] {
        if let Err(e) = Config::parse(Path::new(name), text) {
            panic!("{name} does not parse:\n{e}");
        }
    }
}

#[test]
fn xclient_dns_and_health_interval_are_checked() {
    let src = GOOD.replace(
        "servers = [\"127.0.0.1:10025\", \"127.0.0.1:10026\"]",
        "servers = [\"127.0.0.1:10025\"]\nidentity = \"xclient\"\nhealth_interval = \"2s\"",
    ) + "\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
    let c = parse(&src).unwrap();
    assert_eq!(c.backends[1].identity, Identity::Xclient);
    assert_eq!(c.backends[1].health_interval, Duration::from_secs(2));
    assert_eq!(c.backends[0].health_interval, DEFAULT_HEALTH_INTERVAL);
    assert_eq!(c.dns_servers, Some(vec!["127.0.0.1:53".parse().unwrap()]));

    let e = one_error(&format!("{GOOD}\n[dns]\nnameservers = []\n"));
    assert!(e.contains("dns.nameservers: give at least one"), "{e}");
    let e = one_error(&GOOD.replace(
        "sink = \"var/mail\"",
        "sink = \"var/mail\"\nhealth_interval = \"500ms\"",
    ));
    assert!(
        e.contains("backend[0].health_interval: must be between 1s and 1h"),
        "{e}"
    );
}

#[test]
fn hardening_keys_parse_and_check() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.limits.bare_newline, BareNewline::Normal);
    assert_eq!(c.limits.ipv6_prefix, 64);
    assert_eq!(c.timeouts.data, Duration::from_secs(600));
    assert!(c.backends[0].sink_fsync);
    let src = GOOD.replace(
        "[timeouts]",
        "[limits]\nbare_newline = \"strict\"\nipv6_prefix = 48\n\n[timeouts]\ndata = \"2m\"",
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.limits.bare_newline, BareNewline::Strict);
    assert_eq!(c.limits.ipv6_prefix, 48);
    assert_eq!(c.timeouts.data, Duration::from_secs(120));

    let e = one_error(&GOOD.replace("[timeouts]", "[limits]\nipv6_prefix = 129\n\n[timeouts]"));
    assert!(e.contains(": limits.ipv6_prefix: must be 1 to 128"), "{e}");
    let e = one_error(&GOOD.replace(
        "[timeouts]",
        "[limits]\nbare_newline = \"lax\"\n\n[timeouts]",
    ));
    assert!(
        e.contains("limits.bare_newline: unknown variant `lax`"),
        "{e}"
    );
}

#[test]
fn sink_fsync_belongs_to_a_sink() {
    let c = parse(&GOOD.replace(
        "sink = \"var/mail\"",
        "sink = \"var/mail\"\nsink_fsync = false",
    ))
    .unwrap();
    assert!(!c.backends[0].sink_fsync);
    let e = one_error(&GOOD.replace(
        "servers = [\"127.0.0.1:10025\", \"127.0.0.1:10026\"]",
        "servers = [\"127.0.0.1:10025\"]\nsink_fsync = false",
    ));
    assert!(
        e.contains(": backend[1].sink_fsync: only a `sink` backend has it"),
        "{e}"
    );
}

const POLICY: &str = r#"
[[tls_policy]]
name = "partners"
clients = ["192.0.2.0/24", "2001:db8::/48", "198.51.100.7"]
helo = [".Bank.Example"]
senders = ["bank.example"]
require = "tls"
mode = "report"

[[tls_policy]]
name = "legal"
recipients = ["legal.example.test"]
require = "tls1.3"
mode = "enforce"
reply = "temporary"
"#;

#[test]
fn tls_policy_rules_parse() {
    let c = parse(&format!("{GOOD}{POLICY}")).unwrap();
    assert_eq!(c.tls_policy.len(), 2);
    let p = &c.tls_policy[0];
    assert_eq!(p.name, "partners");
    assert_eq!(
        p.clients,
        vec![
            "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
            "2001:db8::/48".parse().unwrap(),
            "198.51.100.7/32".parse().unwrap()
        ]
    );
    assert_eq!(
        p.helo,
        vec![DomainPattern::Subdomains("bank.example".into())]
    );
    assert_eq!(p.senders, vec![DomainPattern::Exact("bank.example".into())]);
    assert!(p.recipients.is_empty());
    assert_eq!(
        (p.require, p.mode, p.reply),
        (Require::Tls, PolicyMode::Report, RefusalReply::Permanent)
    );
    let l = &c.tls_policy[1];
    assert_eq!(
        (l.require, l.mode, l.reply),
        (Require::Tls13, PolicyMode::Enforce, RefusalReply::Temporary)
    );
    assert!(parse(GOOD).unwrap().tls_policy.is_empty());
}

#[test]
fn tls_policy_errors_name_line_and_key() {
    let src = format!("{GOOD}{POLICY}");
    let line = |needle: &str| src.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let e = one_error(&src.replace("\"2001:db8::/48\"", "\"2001:db8::/480\""));
    assert_eq!(
        e,
        format!(
            "test.toml:{}:28: tls_policy[0].clients[1]: \"2001:db8::/480\" is not an address or network (e.g. \"192.0.2.0/24\", \"2001:db8::/32\", \"192.0.2.7\")",
            line("2001:db8::/48")
        )
    );
    let e = one_error(&src.replace("mode = \"report\"", "mode = \"report\"\nmodee = 1"));
    assert!(
        e.starts_with(&format!(
            "test.toml:{}:1: tls_policy[0].modee: unknown field `modee`",
            line("mode = \"report\"") + 1
        )),
        "{e}"
    );
    let e = one_error(&src.replace("\"tls1.3\"", "\"tls1.4\""));
    assert!(
        e.starts_with(&format!(
            "test.toml:{}:11: tls_policy[1].require: unknown variant `tls1.4`",
            line("tls1.3")
        )),
        "{e}"
    );
    let e = one_error(&src.replace("mode = \"enforce\"\n", ""));
    assert!(e.contains("tls_policy[1]: missing field `mode`"), "{e}");
    let e = one_error(&src.replace("\"legal.example.test\"", "\"x@legal.example.test\""));
    assert!(
        e.contains(
            "tls_policy[1].recipients[0]: \"x@legal.example.test\": give a domain, not an address"
        ),
        "{e}"
    );
    let e = one_error(&src.replace("name = \"legal\"", "name = \"partners\""));
    assert!(
        e.contains("tls_policy[1].name: a rule named \"partners\" is already defined"),
        "{e}"
    );
    let e = one_error(&src.replace("name = \"legal\"", "name = \"le gal\""));
    assert!(
        e.contains("tls_policy[1].name: \"le gal\": use 1 to 64 of"),
        "{e}"
    );
    let e = one_error(&src.replace("recipients = [\"legal.example.test\"]\n", ""));
    assert!(
        e.contains("tls_policy[1]: give at least one of clients, helo, senders, recipients"),
        "{e}"
    );
    let e = one_error(&src.replace("senders = [\"bank.example\"]", "senders = []"));
    assert!(
        e.contains("tls_policy[0].senders: must not be empty"),
        "{e}"
    );
    let e = one_error(&src.replace("\"198.51.100.7\"", "\"::ffff:198.51.100.0/120\""));
    assert!(e.contains("tls_policy[0].clients[2]: \"::ffff:198.51.100.0/120\": IPv4 clients are matched as IPv4"), "{e}");
}
