//! The `Received:` trace header the proxy can add (RFC 5321 §4.4), for
//! backends that cannot learn the TLS facts otherwise: Postfix ignores PROXY
//! v2 TLVs and XCLIENT has no TLS attribute. Like Postfix's own, it says
//! which TLS version and cipher the sender used; it also gives the SNI.

use std::net::IpAddr;

/// What the trace header records.
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The name the client gave in its last HELO/EHLO, if any.
    pub helo: Option<&'a str>,
    pub client: IpAddr,
    pub hostname: &'a str,
    /// (version, cipher, SNI) when the session is in TLS.
    pub tls: Option<(&'a str, &'a str, Option<&'a str>)>,
    /// Seconds since the epoch.
    pub now: i64,
}

/// A HELO argument fit for a header: DNS-ish characters or an address
/// literal, bounded; anything else is replaced by the client's address.
fn clean_helo(helo: &str) -> Option<&str> {
    let ok = !helo.is_empty()
        && helo.len() <= 255
        && helo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    ok.then_some(helo)
}

fn literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// The header, folded, ending in CRLF.
pub fn header(t: &Trace<'_>) -> String {
    let lit = literal(t.client);
    let from = t
        .helo
        .and_then(clean_helo)
        .map_or_else(|| lit.clone(), str::to_string);
    let with = if t.tls.is_some() { "ESMTPS" } else { "ESMTP" };
    let mut h = format!(
        "Received: from {from} ({lit})\r\n\tby {} (starttls-proxy) with {with}",
        t.hostname
    );
    if let Some((version, cipher, sni)) = t.tls {
        h.push_str(&format!(
            "\r\n\t(using {version} with cipher {cipher}, SNI {})",
            sni.unwrap_or("none")
        ));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.now)));
    h
}

/// `Mon, 23 Nov 2026 09:47:00 +0000`.
pub fn rfc5322_date(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_426_886),
            "Mon, 23 Nov 2026 09:41:26 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn tls_header() {
        let h = header(&Trace {
            helo: Some("client.test"),
            client: "192.0.2.7".parse().unwrap(),
            hostname: "mx1.example.test",
            tls: Some((
                "TLSv1.3",
                "TLS13_AES_256_GCM_SHA384",
                Some("mx1.example.test"),
            )),
            now: 0,
        });
        assert_eq!(
            h,
            "Received: from client.test ([192.0.2.7])\r\n\tby mx1.example.test (starttls-proxy) with ESMTPS\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384, SNI mx1.example.test);\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn hostile_helo_is_not_copied() {
        let h = header(&Trace {
            helo: Some("x\r\nBcc: evil"),
            client: "2001:db8::5".parse().unwrap(),
            hostname: "mx.test",
            tls: None,
            now: 0,
        });
        assert!(h.starts_with("Received: from [IPv6:2001:db8::5] ([IPv6:2001:db8::5])\r\n\tby mx.test (starttls-proxy) with ESMTP;"), "{h}");
        assert!(!h.contains("evil"));
    }
}
