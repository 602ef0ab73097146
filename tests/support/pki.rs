//! Edge-case certificates for tests, issued with rcgen by the demo
//! intermediate CA of certs.example/ (its key is in ca-keys/ on purpose).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SerialNumber,
};

use super::certs;

/// A leaf and what was issued with it, as PEM.
pub struct Leaf {
    pub leaf_pem: String,
    pub key_pem: String,
    /// The intermediate(s) above the leaf, nearest first.
    pub intermediates_pem: String,
    /// Serial in x509-parser's `aa:bb:…` form, to compare with what is served.
    pub serial: String,
}

impl Leaf {
    pub fn fullchain(&self) -> String {
        format!("{}{}", self.leaf_pem, self.intermediates_pem)
    }

    /// Writes `fullchain.pem` and `privkey.pem` (mode 0600, as a real
    /// deployment keeps it) into `dir`, each atomically.
    pub fn write_to(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        write_atomic(&dir.join("fullchain.pem"), self.fullchain().as_bytes());
        write_key_atomic(&dir.join("privkey.pem"), self.key_pem.as_bytes());
    }
}

/// Replaces `path` by writing a temporary file and renaming it over.
pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `write_atomic` for a private key: the file is 0600 from its creation.
pub fn write_key_atomic(path: &Path, data: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp-new");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap()
        .write_all(data)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn intermediate() -> Issuer<'static, KeyPair> {
    let pem = std::fs::read_to_string(certs().join("intermediate.pem")).unwrap();
    let key = KeyPair::from_pem(
        &std::fs::read_to_string(certs().join("ca-keys/intermediate-ca.key")).unwrap(),
    )
    .unwrap();
    Issuer::from_ca_cert_pem(&pem, key).unwrap()
}

fn random_serial() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) >> 1
}

fn serial_text(n: u64) -> String {
    // x509-parser prints the DER INTEGER bytes, minimal, with a leading 00
    // when the high bit is set.
    let bytes = n.to_be_bytes();
    let mut b: Vec<u8> = bytes.iter().copied().skip_while(|&x| x == 0).collect();
    if b.first().is_some_and(|&x| x & 0x80 != 0) {
        b.insert(0, 0);
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn leaf_params(
    names: &[&str],
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (CertificateParams, u64) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let serial = random_serial();
    p.serial_number = Some(SerialNumber::from(serial));
    (p, serial)
}

/// An ECDSA leaf for `names`, valid between the dates, issued by the demo
/// intermediate.
pub fn leaf_valid(names: &[&str], not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Leaf {
    leaf_with(names, not_before, not_after, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A current leaf with a key of the given algorithm (P-384, Ed25519…).
pub fn leaf_alg(names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
    leaf_with(names, (2020, 1, 1), (2099, 1, 1), alg)
}

fn leaf_with(
    names: &[&str],
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
    alg: &'static rcgen::SignatureAlgorithm,
) -> Leaf {
    let (params, serial) = leaf_params(names, not_before, not_after);
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = params.signed_by(&key, &intermediate()).unwrap();
    Leaf {
        leaf_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        intermediates_pem: std::fs::read_to_string(certs().join("intermediate.pem")).unwrap(),
        serial: serial_text(serial),
    }
}

/// A current leaf (valid from 2020 to 2099).
pub fn leaf(names: &[&str]) -> Leaf {
    leaf_valid(names, (2020, 1, 1), (2099, 1, 1))
}

/// A leaf under a second intermediate: root → demo intermediate → sub-CA →
/// leaf; `intermediates_pem` is sub-CA then demo intermediate.
pub fn leaf_under_sub_ca(names: &[&str]) -> Leaf {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "starttls-proxy test Sub CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2099, 1, 1);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.use_authority_key_identifier_extension = true;
    let ca_key = KeyPair::generate().unwrap();
    // The demo intermediate has pathlen:0, so it cannot issue a sub-CA that
    // verifies; that is fine for an order test, which fails before paths.
    let ca_cert = ca.signed_by(&ca_key, &intermediate()).unwrap();
    let sub = Issuer::new(ca, ca_key);
    let (params, serial) = leaf_params(names, (2020, 1, 1), (2099, 1, 1));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &sub).unwrap();
    Leaf {
        leaf_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        intermediates_pem: format!(
            "{}{}",
            ca_cert.pem(),
            std::fs::read_to_string(certs().join("intermediate.pem")).unwrap()
        ),
        serial: serial_text(serial),
    }
}

/// The serial of a DER certificate, as x509-parser prints it.
pub fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    c.raw_serial_as_string()
}

/// A new intermediate CA signed by the demo root, valid between the dates.
pub fn intermediate_valid(
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (Issuer<'static, KeyPair>, String) {
    let root_pem = std::fs::read_to_string(certs().join("ca.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(certs().join("ca-keys/root-ca.key")).unwrap())
            .unwrap();
    let root = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "starttls-proxy test Intermediate 2");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    ca.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = ca.signed_by(&key, &root).unwrap();
    (Issuer::new(ca, key), cert.pem())
}

/// A leaf issued by `issuer` (whose certificate is `issuer_pem`), with
/// `eku` as its extended key usages (empty: none) and `names` as DNS SANs
/// (empty: none, CN only).
pub fn leaf_by(
    issuer: &Issuer<'static, KeyPair>,
    issuer_pem: &str,
    names: &[&str],
    eku: Vec<ExtendedKeyUsagePurpose>,
) -> Leaf {
    let (mut params, serial) = leaf_params(&["placeholder.test"], (2020, 1, 1), (2090, 1, 1));
    params.subject_alt_names = names
        .iter()
        .map(|n| rcgen::SanType::DnsName((*n).try_into().unwrap()))
        .collect();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("mx1.example.test"),
    );
    params.extended_key_usages = eku;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        leaf_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        intermediates_pem: issuer_pem.to_string(),
        serial: serial_text(serial),
    }
}

/// The demo intermediate as an issuer, with its PEM.
pub fn demo_intermediate() -> (Issuer<'static, KeyPair>, String) {
    (
        intermediate(),
        std::fs::read_to_string(certs().join("intermediate.pem")).unwrap(),
    )
}

/// A current leaf whose notBefore is `seconds` from now.
pub fn leaf_not_before_in(names: &[&str], seconds: i64) -> Leaf {
    let (mut params, serial) = leaf_params(names, (2020, 1, 1), (2099, 1, 1));
    params.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &intermediate()).unwrap();
    Leaf {
        leaf_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        intermediates_pem: std::fs::read_to_string(certs().join("intermediate.pem")).unwrap(),
        serial: serial_text(serial),
    }
}
