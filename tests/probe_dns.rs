//! The probe's DNS half against real peers: a dnsmasq on loopback serving
//! MX, A/AAAA, PTR, TXT and TLSA records (queried through `Dns` with the
//! nameserver set), DANE matching of real certificates against TLSA data
//! computed by openssl, and MTA-STS policies fetched from a real HTTPS
//! server (tokio-rustls + hyper) on 127.0.0.1 trusted through the demo CA.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use starttls_proxy::probe::dane::{self, RecordResult, TlsaRecord, Unusable, Verdict};
use starttls_proxy::probe::dns::{Answer, Dns, DnsError, Forward, MxAnswer, MxHost};
use starttls_proxy::probe::mta_sts::{
    self, FetchError, Mode, PolicyFetcher, PolicyProblem, RecordError,
};
use starttls_proxy::probe::tlsrpt::{self, ReportUri, TlsRptError};
use starttls_proxy::tls::validate::TrustAnchors;
use support::https::{Body, HttpsServer, Reply};
use support::{DnsServer, certs, pki};

const ZONES: &[&str] = &["example.test", "127.in-addr.arpa"];

fn dns(server: &DnsServer) -> Dns {
    Dns::new(Some(server.addr), Duration::from_secs(3)).unwrap()
}

/// A TXT record of `strings` as a dnsmasq `--dns-rr` option: its
/// `--txt-record` cuts strings at commas and takes quotes literally.
fn txt_rr(name: &str, strings: &[&str]) -> String {
    let rdata: Vec<u8> = strings
        .iter()
        .flat_map(|s| std::iter::once(s.len() as u8).chain(s.bytes()))
        .collect();
    format!("--dns-rr={name},16,{}", hex(&rdata))
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

// === DNS lookups ===

#[tokio::test]
async fn mx_targets_come_sorted_by_preference() {
    let server = DnsServer::with_zones(
        ZONES,
        &[
            "--mx-host=example.test,mx2.example.test,20",
            "--mx-host=example.test,mx3.example.test,30",
            "--mx-host=example.test,mx1.example.test,10",
        ],
    );
    let answer = dns(&server).mx("example.test").await.unwrap();
    let host = |preference, host: &str| MxHost {
        preference,
        host: host.into(),
    };
    assert_eq!(
        answer,
        MxAnswer::Hosts {
            hosts: vec![
                host(10, "mx1.example.test"),
                host(20, "mx2.example.test"),
                host(30, "mx3.example.test"),
            ],
            // dnsmasq does not validate; only a validating resolver sets AD.
            authenticated: false,
            null_mx_too: false,
        }
    );
}

#[tokio::test]
async fn null_mx_no_mx_and_nxdomain_are_told_apart() {
    let server = DnsServer::with_zones(
        ZONES,
        &[
            // MX 0 "." as RDATA: preference 0, the root name.
            "--dns-rr=nomail.example.test,15,000000",
            "--host-record=implicit.example.test,127.0.0.5",
        ],
    );
    let d = dns(&server);
    assert_eq!(
        d.mx("nomail.example.test").await.unwrap(),
        MxAnswer::NullMx {
            authenticated: false
        }
    );
    assert_eq!(d.mx("implicit.example.test").await.unwrap(), MxAnswer::NoMx);
    assert_eq!(
        d.mx("absent.example.test").await.unwrap(),
        MxAnswer::NxDomain
    );
}

#[tokio::test]
async fn a_and_aaaa_together_and_a_missing_family_is_no_data() {
    let server = DnsServer::with_zones(
        ZONES,
        &[
            "--host-record=mx1.example.test,127.0.0.2,::2",
            "--host-record=v4only.example.test,127.0.0.3",
        ],
    );
    let d = dns(&server);
    let both = d.addresses("mx1.example.test").await.unwrap();
    assert_eq!(
        both.all(),
        [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 2))
        ]
    );
    let v4 = d.addresses("v4only.example.test").await.unwrap();
    assert_eq!(v4.v6, Ok(Answer::NoData));
    assert_eq!(v4.all(), [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))]);
    let none = d.addresses("absent.example.test").await.unwrap();
    assert_eq!(none.v4, Ok(Answer::NxDomain));
    assert_eq!(none.v6, Ok(Answer::NxDomain));
}

#[tokio::test]
async fn txt_strings_are_joined_per_record() {
    let server = DnsServer::with_zones(
        ZONES,
        &[
            // One record of two strings: joined with nothing between.
            &txt_rr(
                "split.example.test",
                &[
                    "v=TLSRPTv1; rua=mailto:a@example.test,",
                    "https://r.example.test/v1",
                ],
            ),
            "--txt-record=two.example.test,first",
            "--txt-record=two.example.test,second",
        ],
    );
    let d = dns(&server);
    assert_eq!(
        d.txt("split.example.test").await.unwrap().records(),
        ["v=TLSRPTv1; rua=mailto:a@example.test,https://r.example.test/v1"]
    );
    let mut two = d.txt("two.example.test").await.unwrap().records().to_vec();
    two.sort();
    assert_eq!(two, ["first", "second"]);
}

#[tokio::test]
async fn an_answer_too_big_for_udp_comes_over_tcp() {
    // Twelve 200-byte TXT records: well over the 1232-byte EDNS payload.
    let records: Vec<String> = (0..12)
        .map(|i| format!("--txt-record=big.example.test,{i:02}{}", "x".repeat(198)))
        .collect();
    let args: Vec<&str> = records.iter().map(String::as_str).collect();
    let server = DnsServer::with_zones(ZONES, &args);
    let answer = dns(&server).txt("big.example.test").await.unwrap();
    let mut got = answer.records().to_vec();
    got.sort();
    assert_eq!(
        got.len(),
        12,
        "a truncated UDP answer was taken as complete"
    );
    assert!(got[11].starts_with("11x"));
}

#[tokio::test]
async fn ptr_names_are_forward_confirmed_against_the_server_not_rfc6761() {
    // hickory's Resolver would answer "localhost." for any 127.x address
    // without asking (RFC 6761); Dns asks the server.
    let server = DnsServer::with_zones(
        ZONES,
        &[
            "--host-record=mx1.example.test,127.0.0.2",
            "--host-record=liar.example.test,127.0.0.10",
            "--ptr-record=9.0.0.127.in-addr.arpa,liar.example.test",
        ],
    );
    let d = dns(&server);
    let ok = d.ptr("127.0.0.2".parse().unwrap()).await.unwrap();
    assert_eq!(ok.records().len(), 1);
    assert_eq!(ok.records()[0].name, "mx1.example.test");
    assert_eq!(ok.records()[0].forward, Forward::Confirmed);
    let liar = d.ptr("127.0.0.9".parse().unwrap()).await.unwrap();
    assert_eq!(liar.records()[0].name, "liar.example.test");
    assert_eq!(liar.records()[0].forward, Forward::NotConfirmed);
    assert_eq!(
        d.ptr("127.0.0.77".parse().unwrap()).await.unwrap(),
        Answer::NxDomain
    );
}

#[tokio::test]
async fn tlsa_records_are_parsed_from_the_wire() {
    let data = "ab".repeat(32);
    let server = DnsServer::with_zones(
        ZONES,
        &[&format!(
            "--dns-rr=_25._tcp.mx1.example.test,52,030101{data}"
        )],
    );
    let answer = dns(&server).tlsa("mx1.example.test", 25).await.unwrap();
    assert_eq!(
        answer,
        Answer::Records {
            records: vec![TlsaRecord {
                usage: 3,
                selector: 1,
                matching_type: 1,
                data: vec![0xab; 32]
            }],
            authenticated: false
        }
    );
    let none = dns(&server).tlsa("mx1.example.test", 587).await.unwrap();
    assert_eq!(none, Answer::NxDomain);
}

#[tokio::test]
async fn a_refusing_server_is_an_error_not_an_empty_answer() {
    // Outside its zones and with no upstream, dnsmasq refuses.
    let server = DnsServer::with_zones(ZONES, &[]);
    let err = dns(&server).mx("example.org").await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Rcode { query, .. } if query == "MX example.org."),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_budget() {
    // A UDP socket nobody reads: every query goes unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = Dns::new(
        Some(silent.local_addr().unwrap()),
        Duration::from_millis(500),
    )
    .unwrap();
    let start = Instant::now();
    let err = d.txt("example.test").await.unwrap_err();
    assert!(
        matches!(err, DnsError::Timeout { .. } | DnsError::Failed { .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_lost_query_is_sent_again_within_the_budget() {
    // The first datagram is dropped, as a loaded or just-started server
    // (or the network) may do; one UDP attempt would wait out the budget.
    // The first query goes unanswered; each later one gets a TXT record.
    let server = UdpResponder::start(|n, query| {
        use hickory_resolver::proto::rr::{RData, rdata::TXT};
        let txt = TXT::new(vec!["second time lucky".to_string()]);
        (n > 0).then(|| reply_with(query, RData::TXT(txt)))
    })
    .await;
    let d = Dns::new(Some(server.addr), Duration::from_secs(3)).unwrap();
    let start = Instant::now();
    let answer = d.txt("lossy.example.test").await;
    assert_eq!(
        answer,
        Ok(Answer::Records {
            records: vec!["second time lucky".to_string()],
            authenticated: false
        })
    );
    assert_eq!(server.queries(), 2, "the lost query is sent once more");
    // Resent after waiting about a second, not sprayed at once.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn the_authenticated_bit_is_asked_for_and_reported() {
    // A TLSA answer `3 1 1 11…` with AD set, as a validating resolver
    // gives for a signed zone (dnsmasq sets AD only for what it validated).
    let server = UdpResponder::start(|_, query| {
        use hickory_resolver::proto::rr::{RData, rdata::TLSA};
        let tlsa = TLSA::new(3.into(), 1.into(), 1.into(), vec![0x11; 32]);
        let mut reply = reply_with(query, RData::TLSA(tlsa));
        reply.set_authentic_data(true);
        Some(reply)
    })
    .await;
    let d = Dns::new(Some(server.addr), Duration::from_secs(3)).unwrap();
    let answer = d.tlsa("mx1.example.test", 25).await.unwrap();
    assert!(answer.authenticated());
    assert_eq!(answer.records()[0].data, vec![0x11; 32]);
    assert_eq!(
        server.queries_with_ad(),
        1,
        "the query must set AD (RFC 6840 §5.7)"
    );
}

/// A UDP DNS responder for what dnsmasq will not do: `answer` sees each
/// query with its number (0 for the first) and gives the reply to send,
/// or `None` to drop it. Counts the queries received, and those with AD.
struct UdpResponder {
    addr: SocketAddr,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ad_queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

type Answerer = fn(
    usize,
    &hickory_resolver::proto::op::Message,
) -> Option<hickory_resolver::proto::op::Message>;

impl UdpResponder {
    async fn start(answer: Answerer) -> UdpResponder {
        use hickory_resolver::proto::op::Message;
        use std::sync::atomic::Ordering;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ad_queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counter, ad_counter) = (queries.clone(), ad_queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..n]).unwrap();
                if query.authentic_data() {
                    ad_counter.fetch_add(1, Ordering::SeqCst);
                }
                let Some(reply) = answer(counter.fetch_add(1, Ordering::SeqCst), &query) else {
                    continue;
                };
                socket
                    .send_to(&reply.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        UdpResponder {
            addr,
            queries,
            ad_queries,
            task,
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn queries_with_ad(&self) -> usize {
        self.ad_queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply to `query` (same id and question, recursion available)
/// carrying `data` for its name.
fn reply_with(
    query: &hickory_resolver::proto::op::Message,
    data: hickory_resolver::proto::rr::RData,
) -> hickory_resolver::proto::op::Message {
    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::Record;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_queries(query.queries().to_vec());
    reply.add_answer(Record::from_rdata(
        query.queries()[0].name().clone(),
        300,
        data,
    ));
    reply
}

// === DANE ===

/// The TLSA association data openssl computes for the first certificate
/// of `pem`: an independent implementation to check ours against.
fn openssl_tlsa(pem: &[u8], selector: u8, matching_type: u8) -> String {
    let der = match selector {
        0 => run(&["openssl", "x509", "-outform", "DER"], pem),
        _ => {
            let pubkey = run(&["openssl", "x509", "-noout", "-pubkey"], pem);
            run(&["openssl", "pkey", "-pubin", "-outform", "DER"], &pubkey)
        }
    };
    let alg = match matching_type {
        1 => "-sha256",
        2 => "-sha512",
        _ => return hex(&der),
    };
    hex(&run(&["openssl", "dgst", alg, "-binary"], &der))
}

fn run(argv: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/install-test-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{argv:?} failed");
    out.stdout
}

fn chain_of(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Publishes `records` ("3 1 1 <hex>") for mx1.example.test:25 in a
/// dnsmasq and reads them back through `Dns`.
async fn published(records: &[String]) -> Vec<TlsaRecord> {
    let args: Vec<String> = records
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split(' ').collect();
            let (u, s, m): (u8, u8, u8) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            format!(
                "--dns-rr=_25._tcp.mx1.example.test,52,{u:02x}{s:02x}{m:02x}{}",
                f[3]
            )
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = DnsServer::with_zones(ZONES, &args);
    dns(&server)
        .tlsa("mx1.example.test", 25)
        .await
        .unwrap()
        .records()
        .to_vec()
}

#[tokio::test]
async fn dane_ee_and_ta_records_match_the_served_chain() {
    let fullchain = read(&certs().join("mx1.example.test/fullchain.pem"));
    let intermediate = read(&certs().join("intermediate.pem"));
    let chain = chain_of(&fullchain);
    let cases = [
        (format!("3 1 1 {}", openssl_tlsa(&fullchain, 1, 1)), 0),
        (format!("3 0 1 {}", openssl_tlsa(&fullchain, 0, 1)), 0),
        (format!("3 1 2 {}", openssl_tlsa(&fullchain, 1, 2)), 0),
        (format!("2 0 1 {}", openssl_tlsa(&intermediate, 0, 1)), 1),
        (format!("2 1 1 {}", openssl_tlsa(&intermediate, 1, 1)), 1),
    ];
    for (record, index) in cases {
        let records = published(std::slice::from_ref(&record)).await;
        let report = dane::check(&records, &chain);
        assert_eq!(report.verdict, Verdict::Match, "{record}");
        assert_eq!(
            report.records[0].result,
            RecordResult::Matched { certificate: index },
            "{record}"
        );
        // What we print is what was published.
        assert_eq!(records[0].to_string(), record);
    }
}

#[tokio::test]
async fn a_key_rotation_without_a_new_tlsa_record_is_a_mismatch() {
    let old = read(&certs().join("mx1.example.test/fullchain.pem"));
    let records = published(&[format!("3 1 1 {}", openssl_tlsa(&old, 1, 1))]).await;
    // Same name, new key, same CA: the served chain after the rotation.
    let new = pki::leaf(&["mx1.example.test"]);
    let chain = chain_of(new.fullchain().as_bytes());
    let report = dane::check(&records, &chain);
    assert_eq!(report.verdict, Verdict::NoMatch);
    assert_eq!(report.records[0].result, RecordResult::NotMatched);
    // The record to publish before rotating, from the new key file alone,
    // is what openssl computes from the new certificate.
    let dir = tempfile::tempdir().unwrap();
    new.write_to(dir.path());
    let next = dane::tlsa_311_for_key_file(&dir.path().join("privkey.pem")).unwrap();
    assert_eq!(
        next.to_string(),
        format!("3 1 1 {}", openssl_tlsa(new.leaf_pem.as_bytes(), 1, 1))
    );
    assert_eq!(
        next.zone_line("mx1.example.test", 25),
        format!("_25._tcp.mx1.example.test. IN TLSA {next}")
    );
    assert_eq!(dane::check(&[next], &chain).verdict, Verdict::Match);
}

#[test]
fn tlsa_data_from_rsa_and_ecdsa_key_files_equals_that_of_their_certificates() {
    for dir in [
        "mx1.example.test",
        "mx1.example.test/ecdsa",
        "mx.tenant2.test",
    ] {
        let dir = certs().join(dir);
        let pem = read(&dir.join("fullchain.pem"));
        let from_key = dane::tlsa_311_for_key_file(&dir.join("privkey.pem")).unwrap();
        let from_cert = dane::tlsa_311_for_cert(&chain_of(&pem)[0]).unwrap();
        assert_eq!(from_key, from_cert, "{}", dir.display());
        assert_eq!(hex(&from_key.data), openssl_tlsa(&pem, 1, 1));
    }
    let missing = dane::tlsa_311_for_key_file(Path::new("/nonexistent/key.pem")).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/key.pem"),
        "{missing}"
    );
}

#[test]
fn a_dane_ta_record_for_a_ca_the_leaf_does_not_chain_to_is_no_match() {
    // The demo intermediate is served, but the leaf was issued by another
    // intermediate: its TLSA data is present and vouches for nothing.
    let (other, other_pem) = pki::intermediate_valid((2020, 1, 1), (2099, 1, 1));
    let leaf = pki::leaf_by(&other, &other_pem, &["mx1.example.test"], vec![]);
    let intermediate = read(&certs().join("intermediate.pem"));
    let served = format!(
        "{}{}",
        leaf.leaf_pem,
        String::from_utf8(intermediate.clone()).unwrap()
    );
    let chain = chain_of(served.as_bytes());
    let data = openssl_tlsa(&intermediate, 0, 1);
    let record = TlsaRecord {
        usage: 2,
        selector: 0,
        matching_type: 1,
        data: (0..data.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&data[i..i + 2], 16).unwrap())
            .collect(),
    };
    let report = dane::check(&[record], &chain);
    assert_eq!(report.verdict, Verdict::NoMatch);
    assert!(
        matches!(
            &report.records[0].result,
            RecordResult::TrustAnchorOffPath { certificate: 1, detail } if detail.contains("does not verify")
        ),
        "{:?}",
        report.records[0].result
    );
}

#[tokio::test]
async fn pkix_records_alone_are_unusable_for_smtp() {
    let fullchain = read(&certs().join("mx1.example.test/fullchain.pem"));
    let chain = chain_of(&fullchain);
    let records = published(&[
        format!("1 1 1 {}", openssl_tlsa(&fullchain, 1, 1)),
        format!(
            "0 0 1 {}",
            openssl_tlsa(&read(&certs().join("ca.pem")), 0, 1)
        ),
    ])
    .await;
    let report = dane::check(&records, &chain);
    assert_eq!(report.verdict, Verdict::OnlyUnusable);
    for r in &report.records {
        assert_eq!(
            r.result,
            RecordResult::Unusable(Unusable::PkixUsage(r.record.usage))
        );
    }
    assert_eq!(dane::check(&[], &chain).verdict, Verdict::NoRecords);
}

// === MTA-STS and TLS-RPT ===

const GOOD_POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.backup.example.test\r\nmax_age: 604800\r\n";

/// dnsmasq with the domain's MX, the _mta-sts record and mta-sts.example.test
/// at 127.0.0.1; the trust anchors of the demo CA.
fn sts_dns() -> DnsServer {
    DnsServer::with_zones(
        ZONES,
        &[
            "--mx-host=example.test,mx1.example.test,10",
            "--mx-host=example.test,mx2.example.test,20",
            "--mx-host=example.test,mx.backup.example.test,30",
            "--txt-record=_mta-sts.example.test,v=STSv1; id=20240101T000000;",
            "--host-record=mta-sts.example.test,127.0.0.1",
            &txt_rr(
                "_smtp._tls.example.test",
                &["v=TLSRPTv1; rua=mailto:tlsrpt@example.test,https://reports.example.test/v1"],
            ),
        ],
    )
}

fn demo_anchors() -> TrustAnchors {
    TrustAnchors::load(Some(&certs().join("ca.pem"))).unwrap()
}

async fn policy_server(reply: Reply) -> HttpsServer {
    let leaf = pki::leaf(&["mta-sts.example.test"]);
    HttpsServer::start(&leaf.fullchain(), &leaf.key_pem, reply).await
}

fn fetcher(port: u16) -> PolicyFetcher {
    PolicyFetcher::new(&demo_anchors(), port, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn a_good_policy_is_found_fetched_and_covers_every_mx_but_one() {
    let server_dns = sts_dns();
    let d = dns(&server_dns);
    let web = policy_server(Reply::policy(GOOD_POLICY)).await;

    let record = mta_sts::lookup_record(&d, "example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, "20240101T000000");
    let fetched = fetcher(web.addr.port())
        .fetch(&d, "example.test")
        .await
        .unwrap();
    assert_eq!(fetched.address, web.addr);
    assert_eq!(fetched.body, GOOD_POLICY);
    let policy = fetched.policy;
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.max_age, 604800);

    let MxAnswer::Hosts { hosts, .. } = d.mx("example.test").await.unwrap() else {
        panic!("MX hosts expected")
    };
    let covered: Vec<(&str, bool)> = hosts
        .iter()
        .map(|h| (h.host.as_str(), policy.covers(&h.host)))
        .collect();
    assert_eq!(
        covered,
        [
            ("mx1.example.test", true),
            ("mx2.example.test", false),
            ("mx.backup.example.test", true)
        ]
    );
    // The same through discover(), as the probe runs it.
    let found = mta_sts::discover(&d, &fetcher(web.addr.port()), "example.test").await;
    assert_eq!(
        found.record.as_ref().unwrap().as_ref().unwrap().id,
        "20240101T000000"
    );
    let mx: Vec<String> = hosts.iter().map(|h| h.host.clone()).collect();
    assert_eq!(found.uncovered(&mx), ["mx2.example.test"]);
    let none = mta_sts::discover(&d, &fetcher(web.addr.port()), "absent.example.test").await;
    assert!(matches!(none.record, Ok(None)) && none.policy.is_none());

    // A sender's request: SNI and Host name the policy host, one GET each.
    let seen = web.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].sni.as_deref(), Some("mta-sts.example.test"));
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("mta-sts.example.test:{}", web.addr.port()).as_str())
    );
    assert_eq!(seen[0].path, "/.well-known/mta-sts.txt");
}

async fn fetch_error(reply: Reply) -> (FetchError, HttpsServer) {
    let web = policy_server(reply).await;
    let err = fetcher(web.addr.port())
        .fetch_from("example.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .await
        .unwrap_err();
    (err, web)
}

#[tokio::test]
async fn not_found_is_a_status_error() {
    let (err, _web) = fetch_error(Reply::status(404)).await;
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_reported_and_not_followed() {
    let web = policy_server(Reply::policy(GOOD_POLICY)).await;
    let location = format!(
        "https://mta-sts.example.test:{}/elsewhere.txt",
        web.addr.port()
    );
    let (err, redirecting) = fetch_error(Reply::status(301).header("location", &location)).await;
    match &err {
        FetchError::Redirect {
            status: 301,
            location: Some(l),
            ..
        } => assert_eq!(l, &location),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("RFC 8461 §3.3"), "{err}");
    assert_eq!(redirecting.seen().len(), 1);
    assert!(web.seen().is_empty());
}

#[tokio::test]
async fn a_policy_served_as_html_is_refused() {
    let (err, _web) =
        fetch_error(Reply::policy(GOOD_POLICY).header("content-type", "text/html")).await;
    match err {
        FetchError::ContentType { content_type, .. } => {
            assert_eq!(content_type.as_deref(), Some("text/html"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_oversize_body_is_refused_with_or_without_a_length() {
    let big = Reply::policy(GOOD_POLICY).body(Body::Full(vec![b'x'; 70 * 1024]));
    let (err, _web) = fetch_error(big).await;
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
    let chunked = Reply::policy(GOOD_POLICY).body(Body::Chunked {
        chunk: vec![b'x'; 4096],
        count: 1000,
    });
    let (err, _web) = fetch_error(chunked).await;
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn malformed_policy_lines_are_named() {
    let (err, _web) = fetch_error(Reply::policy(
        "version: STSv1\nmode: Enforce\nmx: mx1.example.test\nmax_age: 86400\n",
    ))
    .await;
    match &err {
        FetchError::Policy { error, .. } => {
            assert_eq!(error.line, Some(2));
            assert_eq!(error.problem, PolicyProblem::Mode("Enforce".into()));
        }
        other => panic!("{other:?}"),
    }
    let (err, _web) = fetch_error(Reply::policy(
        "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 40000000\n",
    ))
    .await;
    assert!(
        err.to_string()
            .ends_with("policy line 4: max_age 40000000 exceeds 31557600"),
        "{err}"
    );
}

fn rustls_error(err: &FetchError) -> &rustls::Error {
    match err {
        FetchError::Tls { source, .. } => source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("no rustls error in {source:?}")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_fails_verification() {
    let self_signed =
        rcgen::generate_simple_self_signed(vec!["mta-sts.example.test".into()]).unwrap();
    let web = HttpsServer::start(
        &self_signed.cert.pem(),
        &self_signed.signing_key.serialize_pem(),
        Reply::policy(GOOD_POLICY),
    )
    .await;
    let err = fetcher(web.addr.port())
        .fetch_from("example.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{err}"
    );
    assert!(
        web.seen().is_empty(),
        "no request over an unverified connection"
    );

    let other = pki::leaf(&["www.example.test"]);
    let web = HttpsServer::start(
        &other.fullchain(),
        &other.key_pem,
        Reply::policy(GOOD_POLICY),
    )
    .await;
    let err = fetcher(web.addr.port())
        .fetch_from("example.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = PolicyFetcher::new(&demo_anchors(), port, Duration::from_millis(500)).unwrap();
    let start = Instant::now();
    let err = f
        .fetch_from("example.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test]
async fn a_policy_host_without_address_or_listener_says_so() {
    let server_dns = DnsServer::with_zones(ZONES, &[]);
    let err = fetcher(443)
        .fetch(&dns(&server_dns), "example.test")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::NoAddress(h) if h == "mta-sts.example.test"),
        "{err:?}"
    );
    // Bound, then closed: nothing listens there any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = fetcher(port)
        .fetch_from("example.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Connect { ref attempts, .. } if attempts.len() == 1),
        "{err:?}"
    );
}

#[tokio::test]
async fn sts_and_tlsrpt_records_through_dns() {
    let server = sts_dns();
    let d = dns(&server);
    let rpt = tlsrpt::lookup(&d, "example.test").await.unwrap().unwrap();
    assert_eq!(
        rpt.rua,
        [
            ReportUri::Mailto("mailto:tlsrpt@example.test".into()),
            ReportUri::Https("https://reports.example.test/v1".into())
        ]
    );
    assert_eq!(
        tlsrpt::lookup(&d, "absent.example.test").await.unwrap(),
        None
    );
    assert_eq!(
        mta_sts::lookup_record(&d, "absent.example.test")
            .await
            .unwrap(),
        None
    );

    let twice = DnsServer::with_zones(
        ZONES,
        &[
            "--txt-record=_mta-sts.example.test,v=STSv1; id=1;",
            "--txt-record=_mta-sts.example.test,v=STSv1; id=2;",
            "--txt-record=_smtp._tls.example.test,v=TLSRPTv1; rua=ftp://r.example.test/",
        ],
    );
    let d = dns(&twice);
    assert_eq!(
        mta_sts::lookup_record(&d, "example.test").await,
        Err(RecordError::Multiple { count: 2 })
    );
    assert!(matches!(
        tlsrpt::lookup(&d, "example.test").await,
        Err(TlsRptError::BadUri { .. })
    ));
}

#[tokio::test]
async fn a_broken_record_does_not_hide_the_policy_behind_it() {
    let server = DnsServer::with_zones(
        ZONES,
        &[
            "--txt-record=_mta-sts.example.test,v=STSv1; id=2024-01-01;",
            "--host-record=mta-sts.example.test,127.0.0.1",
        ],
    );
    let web = policy_server(Reply::policy(GOOD_POLICY)).await;
    let found = mta_sts::discover(&dns(&server), &fetcher(web.addr.port()), "example.test").await;
    assert!(
        matches!(&found.record, Err(RecordError::BadId { id, .. }) if id == "2024-01-01"),
        "{:?}",
        found.record
    );
    assert_eq!(found.policy.unwrap().unwrap().policy.mode, Mode::Enforce);
}
