//! The client's identity for the backend: a PROXY protocol header (v1 text
//! or v2 binary with TLS facts in TLVs) written before the backend's
//! greeting is read. Encoding is the `ppp` crate's; the TLS TLV layout is
//! HAProxy's (PP2_TYPE_SSL with version and cipher sub-TLVs, the SNI as
//! PP2_TYPE_AUTHORITY).

use std::net::{IpAddr, SocketAddr};

use ppp::v2;

use crate::config::Identity;

/// What the backend should learn about the client.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The sender's address (after an inbound PROXY header, the original).
    pub client: SocketAddr,
    /// The address the sender connected to.
    pub local: SocketAddr,
    /// The TLS facts, when the session is in TLS.
    pub tls: Option<TlsFacts>,
    /// The client's HELO/EHLO name so far (for XCLIENT HELO).
    pub helo: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFacts {
    pub version: &'static str,
    pub cipher: &'static str,
    /// Validated by rustls (DNS characters only).
    pub sni: Option<String>,
}

/// PP2_CLIENT_SSL: the client connected over TLS.
const PP2_CLIENT_SSL: u8 = 0x01;

/// The header to send first, for the PROXY identities.
pub fn proxy_header(kind: Identity, id: &ClientIdentity) -> Option<Vec<u8>> {
    let (client, local) = same_family(id.client, id.local);
    match kind {
        Identity::ProxyV1 => Some(
            ppp::v1::Addresses::from((client, local))
                .to_string()
                .into_bytes(),
        ),
        Identity::ProxyV2 => Some(proxy_v2(client, local, id.tls.as_ref())),
        Identity::Xclient | Identity::None => None,
    }
}

/// The header a health probe sends: the proxy speaks for itself. v2 says
/// LOCAL (the spec's health-check command); v1 names the probe connection's
/// own addresses, since Postfix refuses `PROXY UNKNOWN`.
pub fn probe_header(kind: Identity, local: SocketAddr, server: SocketAddr) -> Option<Vec<u8>> {
    match kind {
        Identity::ProxyV1 => {
            let (local, server) = same_family(local, server);
            Some(
                ppp::v1::Addresses::from((local, server))
                    .to_string()
                    .into_bytes(),
            )
        }
        Identity::ProxyV2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .ok(),
        Identity::Xclient | Identity::None => None,
    }
}

fn proxy_v2(client: SocketAddr, local: SocketAddr, tls: Option<&TlsFacts>) -> Vec<u8> {
    let build = || -> std::io::Result<Vec<u8>> {
        let mut b = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        );
        if let Some(t) = tls {
            if let Some(sni) = &t.sni {
                b = b.write_tlv(v2::Type::Authority, sni.as_bytes())?;
            }
            let mut ssl = vec![PP2_CLIENT_SSL, 0, 0, 0, 0];
            for (kind, value) in [
                (v2::Type::SSLVersion, t.version),
                (v2::Type::SSLCipher, t.cipher),
            ] {
                ssl.push(kind as u8);
                ssl.extend_from_slice(&(value.len() as u16).to_be_bytes());
                ssl.extend_from_slice(value.as_bytes());
            }
            b = b.write_tlv(v2::Type::SSL, &ssl)?;
        }
        b.build()
    };
    // Writing into a Vec cannot fail; the fallback keeps the types honest.
    build().unwrap_or_else(|_| {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .unwrap_or_default()
    })
}

/// Both addresses in one family, as PROXY headers require: an IPv4 client
/// on a dual-stack socket reached an IPv4-mapped local address.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (client.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V6(l)) => {
            let l4 = l
                .to_ipv4_mapped()
                .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), IpAddr::V4);
            (client, SocketAddr::new(l4, local.port()))
        }
        (IpAddr::V6(_), IpAddr::V4(l)) => (
            client,
            SocketAddr::new(IpAddr::V6(l.to_ipv6_mapped()), local.port()),
        ),
        _ => (client, local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(tls: bool) -> ClientIdentity {
        ClientIdentity {
            helo: None,
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "[::ffff:198.51.100.1]:25".parse().unwrap(),
            tls: tls.then(|| TlsFacts {
                version: "TLSv1.3",
                cipher: "TLS13_AES_256_GCM_SHA384",
                sni: Some("mx1.example.test".into()),
            }),
        }
    }

    #[test]
    fn v1_is_text_in_one_family() {
        let h = proxy_header(Identity::ProxyV1, &id(false)).unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    }

    #[test]
    fn v2_carries_addresses_and_tls_tlvs() {
        let h = proxy_header(Identity::ProxyV2, &id(true)).unwrap();
        let parsed = v2::Header::try_from(&h[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            v2::Addresses::IPv4(v2::IPv4::new([192, 0, 2, 7], [198, 51, 100, 1], 40000, 25))
        );
        let tlvs: Vec<_> = parsed.tlvs().map(Result::unwrap).collect();
        assert_eq!(tlvs[0].kind, v2::Type::Authority as u8);
        assert_eq!(&tlvs[0].value[..], b"mx1.example.test");
        assert_eq!(tlvs[1].kind, v2::Type::SSL as u8);
        let ssl = &tlvs[1].value;
        assert_eq!(ssl[0], PP2_CLIENT_SSL);
        // sub-TLV: type, length, "TLSv1.3"
        assert_eq!(ssl[5], v2::Type::SSLVersion as u8);
        assert_eq!(&ssl[8..15], b"TLSv1.3");
        assert_eq!(ssl[15], v2::Type::SSLCipher as u8);
        assert_eq!(&ssl[18..], b"TLS13_AES_256_GCM_SHA384");
    }

    #[test]
    fn none_and_plaintext() {
        assert!(proxy_header(Identity::None, &id(true)).is_none());
        let h = proxy_header(Identity::ProxyV2, &id(false)).unwrap();
        assert_eq!(v2::Header::try_from(&h[..]).unwrap().tlvs().count(), 0);
    }
}
