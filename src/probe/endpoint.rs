//! One endpoint (name, address): first a plain session (greeting, EHLO:
//! reachable? STARTTLS offered?), then, concurrently, one connection per
//! handshake (with and without SNI × TLS 1.3 and 1.2) and one for the
//! legacy ClientHello. Each session is connect → 220 → EHLO → STARTTLS →
//! handshake → QUIT, every step under its own timeout, so an unreachable
//! or silent address costs one timeout, not a chain of them.
//!
//! What is recorded here is raw (replies, versions, the chain as sent);
//! the chain is judged by `chain.rs` once its handshake is over.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::chain::{self, ChainReport};
use super::legacy::{self, LegacyReply, Refusal};
use super::smtp::{QUIT_TIMEOUT, Reply, SmtpClient, SmtpError, ehlo_name};
use super::tls::{self, Requested, TlsError, TlsFacts};
use super::{Endpoint, Settings};

/// Why a session to an endpoint ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no TCP connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("TCP connection failed")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot send the legacy ClientHello")]
    LegacyWrite(#[source] std::io::Error),
    #[error("the probe's task for this endpoint failed")]
    Internal,
}

impl SessionError {
    /// No TCP connection at all (the `unreachable` finding).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout(_))
    }
}

/// The plain session's findings: who answered and what it offers.
#[derive(Debug, Clone)]
pub struct Dialogue {
    pub greeting: Reply,
    pub ehlo: Reply,
    pub starttls: bool,
}

/// A chain judged after its handshake, with what the handshake showed.
#[derive(Debug, Clone)]
pub struct Session {
    pub facts: TlsFacts,
    pub chain: ChainReport,
}

/// One handshake variant and how it went.
#[derive(Debug)]
pub struct Handshake {
    /// The SNI sent, if any.
    pub sni: Option<String>,
    pub requested: Requested,
    pub outcome: Result<Session, SessionError>,
}

/// Everything observed at one endpoint.
#[derive(Debug)]
pub struct EndpointReport {
    pub endpoint: Endpoint,
    /// The plain session; when it failed or no STARTTLS was offered,
    /// nothing else was tried.
    pub dialogue: Result<Dialogue, SessionError>,
    /// In a fixed order: with SNI at 1.3, 1.2, then without SNI at 1.3, 1.2
    /// (an address target has only the SNI-less pair).
    pub handshakes: Vec<Handshake>,
    pub legacy: Option<Result<LegacyReply, SessionError>>,
}

impl EndpointReport {
    pub fn failed(endpoint: Endpoint, e: SessionError) -> Self {
        EndpointReport {
            endpoint,
            dialogue: Err(e),
            handshakes: Vec::new(),
            legacy: None,
        }
    }

    /// The variants this endpoint is (or would be) probed with.
    pub fn variants(endpoint: &Endpoint) -> Vec<(Option<String>, Requested)> {
        let snis: Vec<Option<String>> = match endpoint.dns_name() {
            Some(n) => vec![Some(n.to_string()), None],
            None => vec![None],
        };
        snis.into_iter()
            .flat_map(|sni| Requested::ALL.map(|v| (sni.clone(), v)))
            .collect()
    }
}

/// Probes one endpoint: the plain session, then every handshake and the
/// legacy hello at once.
pub async fn probe_endpoint(ep: Endpoint, s: Arc<Settings>) -> EndpointReport {
    let dialogue = discover(&ep, &s).await;
    let mut report = EndpointReport {
        endpoint: ep.clone(),
        dialogue,
        handshakes: Vec::new(),
        legacy: None,
    };
    if !matches!(&report.dialogue, Ok(d) if d.starttls) {
        return report;
    }
    let variants = EndpointReport::variants(&ep);
    let mut set = JoinSet::new();
    for (i, (sni, version)) in variants.iter().cloned().enumerate() {
        let (ep, s) = (ep.clone(), s.clone());
        set.spawn(async move {
            Done::Handshake(i, handshake_session(&ep, sni.is_some(), version, &s).await)
        });
    }
    {
        let (ep, s) = (ep.clone(), s.clone());
        set.spawn(async move { Done::Legacy(legacy_session(&ep, &s).await) });
    }
    let mut outcomes: Vec<Option<Result<TlsFacts, SessionError>>> =
        variants.iter().map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Done::Handshake(i, r)) => {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Ok(Done::Legacy(r)) => report.legacy = Some(r),
            // A panicked task leaves its slot empty (SessionError::Internal below).
            Err(_) => {}
        }
    }
    // Judged now, after every handshake is over.
    report.handshakes = variants
        .into_iter()
        .zip(outcomes)
        .map(|((sni, requested), outcome)| Handshake {
            sni,
            requested,
            outcome: outcome
                .unwrap_or(Err(SessionError::Internal))
                .map(|facts| Session {
                    chain: chain::analyze(&facts.chain, &ep.mx, &s.anchors, s.now),
                    facts,
                }),
        })
        .collect();
    report
}

/// What one of an endpoint's concurrent sessions returns.
enum Done {
    Handshake(usize, Result<TlsFacts, SessionError>),
    Legacy(Result<LegacyReply, SessionError>),
}

async fn connect(ep: &Endpoint, t: Duration) -> Result<TcpStream, SessionError> {
    match timeout(t, TcpStream::connect(ep.address)).await {
        Err(_) => Err(SessionError::ConnectTimeout(t)),
        Ok(Err(e)) => Err(SessionError::Connect(e)),
        Ok(Ok(tcp)) => Ok(tcp),
    }
}

/// Connect, greeting, EHLO.
async fn open(
    ep: &Endpoint,
    s: &Settings,
) -> Result<(SmtpClient<TcpStream>, Reply, Reply), SessionError> {
    let tcp = connect(ep, s.timeouts.connect).await?;
    let local = tcp.local_addr().map_err(SessionError::Connect)?;
    let mut client = SmtpClient::new(tcp, s.timeouts.reply);
    let (greeting, ehlo) = client.greet(&ehlo_name(local)).await?;
    Ok((client, greeting, ehlo))
}

/// The plain session: is anyone there, and is STARTTLS offered?
async fn discover(ep: &Endpoint, s: &Settings) -> Result<Dialogue, SessionError> {
    let (client, greeting, ehlo) = open(ep, s).await?;
    client.quit().await;
    Ok(Dialogue {
        starttls: ehlo.has_extension("STARTTLS"),
        greeting,
        ehlo,
    })
}

/// One handshake on its own connection, then QUIT inside TLS.
async fn handshake_session(
    ep: &Endpoint,
    sni: bool,
    version: Requested,
    s: &Settings,
) -> Result<TlsFacts, SessionError> {
    let (client, _, _) = open(ep, s).await?;
    let io = client.start_tls().await?;
    let (stream, facts) =
        tls::handshake(io, ep.mx.clone(), sni, version, s.timeouts.handshake).await?;
    SmtpClient::new(stream, QUIT_TIMEOUT).quit().await;
    Ok(facts)
}

/// STARTTLS, then the hand-built TLS 1.1 ClientHello, and the first bytes
/// of the answer (at most [`legacy::REPLY_BYTES_NEEDED`], within the
/// handshake timeout). The connection is dropped after.
async fn legacy_session(ep: &Endpoint, s: &Settings) -> Result<LegacyReply, SessionError> {
    let (client, _, _) = open(ep, s).await?;
    let mut io = client.start_tls().await?;
    let mut random = [0u8; 32];
    // The randomness of a hello that is never completed protects nothing:
    // zeros are an acceptable fallback.
    let _ = crate::tls::provider::client_provider()
        .secure_random
        .fill(&mut random);
    let hello = legacy::client_hello(ep.dns_name(), random);
    let deadline = Instant::now() + s.timeouts.handshake;
    match timeout_at(deadline, io.write_all(&hello)).await {
        Err(_) => return Ok(LegacyReply::Refused(Refusal::Timeout)),
        Ok(Err(e)) => return Err(SessionError::LegacyWrite(e)),
        Ok(Ok(())) => {}
    }
    let mut buf = [0u8; legacy::REPLY_BYTES_NEEDED];
    let mut got = 0;
    loop {
        if let Some(reply) = legacy::parse_reply(&buf[..got]) {
            return Ok(reply);
        }
        match timeout_at(deadline, io.read(&mut buf[got..])).await {
            Err(_) => return Ok(LegacyReply::Refused(Refusal::Timeout)),
            // A reset counts as a close: the server would not go on.
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(LegacyReply::Refused(Refusal::Closed)),
            Ok(Ok(n)) => got += n,
        }
    }
}
