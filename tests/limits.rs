//! Connection limits, timeouts and shutdown, against the real binary.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn per_ip_limit_answers_421_and_frees_the_slot_on_close() {
    let proxy =
        Proxy::start(ProxyConfig::sink().append("\n[limits]\nmax_connections_per_ip = 2\n"));
    let mut a = Smtp::connect(proxy.addr());
    a.expect("220");
    let mut b = Smtp::connect(proxy.addr());
    b.expect("220");
    let mut c = Smtp::connect(proxy.addr());
    assert_eq!(
        c.reply(),
        "421 4.7.0 mx1.example.test Error: too many connections from your address\r\n"
    );
    assert!(c.closed());
    a.cmd("QUIT", "221");
    // Once a's slot is released a new connection is admitted.
    wait_for("a free slot", TIMEOUT, || {
        let mut d = Smtp::connect(proxy.addr());
        d.reply().starts_with("220").then_some(())
    });
    b.cmd("NOOP", "250");
}

#[test]
fn idle_client_is_cut_by_the_command_timeout() {
    let proxy = Proxy::start(ProxyConfig::sink().append("\n[timeouts]\ncommand = \"1s\"\n"));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    let start = Instant::now();
    assert_eq!(
        c.reply(),
        "421 4.4.2 mx1.example.test Error: timeout exceeded\r\n"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert!(c.closed());
}

#[test]
fn stalled_handshake_is_cut_by_the_handshake_timeout() {
    let proxy = Proxy::start(ProxyConfig::sink().append("\n[timeouts]\nhandshake = \"1s\"\n"));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("STARTTLS", "220");
    // Start a ClientHello and never finish it.
    c.send_raw(b"\x16\x03\x01\x00\xff\x01");
    assert!(c.closed(), "the proxy must close a stalled handshake");
    let ev = proxy.wait_log("tls handshake failed", 1);
    assert_eq!(ev["reason"], "timeout");
}

#[test]
fn slowloris_inside_a_line_is_cut_by_the_command_timeout() {
    let proxy = Proxy::start(ProxyConfig::sink().append("\n[timeouts]\ncommand = \"1s\"\n"));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    // One byte every 300 ms never completes a line: idle, whatever it sends.
    let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut r = std::io::BufReader::new(tcp.try_clone().unwrap());
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut r, &mut greeting).unwrap();
    while start.elapsed() < Duration::from_secs(10) {
        if tcp.write_all(b"N").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        tcp.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.ends_with(b"\r\n") {
                break;
            }
        }
        tcp.set_nonblocking(false).unwrap();
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("421 4.4.2"), "{got:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    c.send("NOOP");
}

#[test]
fn sigterm_sends_421_to_idle_sessions_and_exits() {
    let mut proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let pid = proxy.pid();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        c.reply(),
        "421 4.3.2 mx1.example.test Service shutting down, try again later\r\n"
    );
    wait_for("proxy exit", TIMEOUT, || (!proxy.alive()).then_some(()));
    assert!(
        std::net::TcpStream::connect(proxy.addr()).is_err(),
        "listener must be closed"
    );
}

#[test]
fn a_client_that_never_reads_cannot_hold_its_slot() {
    let proxy = Proxy::start(
        ProxyConfig::sink()
            .append("\n[limits]\nmax_connections_per_ip = 1\n[timeouts]\ncommand = \"1s\"\n"),
    );
    let addr = proxy.addr();
    let mut stuck = Smtp::connect(addr);
    stuck.expect("220");
    let mut tcp = stuck.into_tcp();
    // Pipelines megabytes of NOOPs and never reads a reply: the proxy's
    // replies fill the socket buffers and its writes block.
    let writer = std::thread::spawn(move || {
        tcp.set_write_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let burst = b"NOOP\r\n".repeat(64 * 1024);
        for _ in 0..16 {
            if tcp.write_all(&burst).is_err() {
                break;
            }
        }
        tcp
    });
    // The slot is taken while it lasts...
    let mut c = Smtp::connect(addr);
    assert!(c.reply().starts_with("421 4.7.0"));
    // ...and freed once a write to it has been blocked for the command timeout.
    wait_for("the slot to be freed", TIMEOUT, || {
        let mut c = Smtp::connect(addr);
        c.reply().starts_with("220").then_some(())
    });
    drop(writer.join());
}

#[test]
fn sigterm_lets_a_tls_transaction_finish_then_says_421() {
    let mut proxy =
        Proxy::start(ProxyConfig::sink().append("\n[timeouts]\nshutdown_grace = \"10s\"\n"));
    let mut idle = Smtp::connect(proxy.addr());
    idle.expect("220");
    idle.cmd("STARTTLS", "220");
    let mut idle = idle
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    idle.cmd("EHLO idle.client.test", "250");

    let mut busy = Smtp::connect(proxy.addr());
    busy.expect("220");
    busy.cmd("STARTTLS", "220");
    let mut busy = busy
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    busy.cmd("EHLO busy.client.test", "250");
    busy.cmd("MAIL FROM:<a@sender.test>", "250");
    busy.cmd("RCPT TO:<b@example.test>", "250");
    busy.cmd("DATA", "354");
    busy.send_raw(b"Subject: in flight at shutdown\r\n\r\n");

    let start = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The idle session is told at once.
    assert_eq!(
        idle.reply(),
        "421 4.3.2 mx1.example.test Service shutting down, try again later\r\n"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The busy one finishes its message (the backend's own 250), then 421.
    busy.send_raw(b"body\r\n.\r\n");
    busy.expect("250 2.0.0 Ok: queued as");
    assert_eq!(
        busy.reply(),
        "421 4.3.2 mx1.example.test Service shutting down, try again later\r\n"
    );
    assert_eq!(proxy.sink_messages().len(), 1);
    wait_for("proxy exit", TIMEOUT, || (!proxy.alive()).then_some(()));
}

/// Stress mode (like Postfix's): at 80% of max_connections the idle
/// timeout shrinks for every session, including ones already waiting — a
/// slowloris crowd cannot hold the slots for the full 300 s — until the
/// connections fall to 50%.
#[test]
fn connection_pressure_shortens_the_idle_timeout_of_waiting_clients() {
    let proxy = Proxy::start(
        ProxyConfig::sink()
            .append("\n[limits]\nmax_connections = 10\nmax_connections_per_ip = 10\n")
            .append("\n[timeouts]\ncommand = \"300s\"\nstress = \"1s\"\n"),
    );
    // Eight idle clients (80%): the last one puts the proxy under stress.
    let crowd: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = Smtp::connect(proxy.addr());
            c.expect("220");
            c.into_tcp()
        })
        .collect();
    proxy.wait_log(
        "connection pressure: stress mode on, idle and handshake timeouts shortened",
        1,
    );
    // Cut after about 1 s, not 300 s, until at most 5 are left (50%): at
    // least 3 (more when their timers fire together).
    let start = Instant::now();
    let cut: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = crowd
            .iter()
            .map(|tcp| {
                s.spawn(move || {
                    tcp.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
                    let mut buf = [0u8; 128];
                    let n = (&*tcp).read(&mut buf).unwrap_or(0);
                    buf[..n].starts_with(b"421 4.4.2 mx1.example.test Error: timeout exceeded")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(cut.iter().filter(|c| **c).count() >= 3, "{cut:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    proxy.wait_log("connection pressure over: stress mode off", 1);
    drop(crowd);

    // Without pressure the configured 300 s apply again.
    let mut calm = Smtp::connect(proxy.addr());
    calm.expect("220");
    std::thread::sleep(Duration::from_millis(1500));
    calm.cmd("NOOP", "250");
}
