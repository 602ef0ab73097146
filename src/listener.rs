//! Listeners: bind, accept, enforce connection limits, spawn sessions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::proxy_protocol::{Inbound, read_header};
use crate::session::{self, ListenerContext};
use crate::smtp::reply;
use crate::telemetry::metrics::{self, ActiveConnection, Rejection};

/// Connections open now, in total and per client address.
#[derive(Debug)]
pub struct ConnectionTable {
    inner: Mutex<Counts>,
    /// At or above this many connections the proxy is under stress: idle
    /// and handshake timeouts shrink (like Postfix's stress mode)...
    stress_at: u32,
    /// ...until they fall to this many (hysteresis: no flapping while a
    /// crowd hovers at the threshold).
    calm_at: u32,
    stress: watch::Sender<bool>,
    /// Every task a connection runs on: shutdown waits for each.
    tasks: TaskTracker,
}

impl Default for ConnectionTable {
    fn default() -> Self {
        Self::new(u32::MAX)
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
}

/// Holds one slot in the table until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    table: Arc<ConnectionTable>,
    /// The client's address (its IPv6 prefix), once known: a connection
    /// from a balancer still sending its PROXY header has none yet.
    key: Option<IpAddr>,
    _active: ActiveConnection,
}

impl ConnectionTable {
    /// A table whose stress mode starts at 80% of `max_connections` and
    /// ends at 50%.
    pub fn new(max_connections: u32) -> Self {
        let stress_at = u32::try_from(u64::from(max_connections) * 8 / 10)
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            inner: Mutex::default(),
            stress_at,
            calm_at: max_connections / 2,
            stress: watch::Sender::new(false),
            tasks: TaskTracker::new(),
        }
    }

    /// The connections' tasks: sessions, PROXY-header reads, rejections.
    /// Shutdown closes it and waits, so no task is aborted unseen.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Whether the proxy is under connection pressure now; the receiver
    /// changes when it enters or leaves stress mode.
    pub fn stress(&self) -> watch::Receiver<bool> {
        self.stress.subscribe()
    }

    fn update_stress(&self, total: u32) {
        self.stress.send_if_modified(|s| {
            let on = if *s {
                total > self.calm_at
            } else {
                total >= self.stress_at
            };
            if *s == on {
                return false;
            }
            *s = on;
            if on {
                warn!(
                    connections = total,
                    threshold = self.stress_at,
                    "connection pressure: stress mode on, idle and handshake timeouts shortened"
                );
            } else {
                info!(
                    connections = total,
                    "connection pressure over: stress mode off"
                );
            }
            true
        });
    }

    /// Takes a slot for `ip` unless a limit is reached. IPv6 clients are
    /// counted by their `/v6_prefix` (one site holds a whole /64).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &crate::config::Limits,
    ) -> Result<ConnectionSlot, Rejection> {
        let mut slot = self.admit_unknown(limits.max_connections)?;
        slot.assign(ip, limits)?;
        Ok(slot)
    }

    /// Takes a slot that counts towards the total only, for a connection
    /// whose client is not known yet (a balancer's PROXY header to come).
    pub fn admit_unknown(self: &Arc<Self>, max_total: u32) -> Result<ConnectionSlot, Rejection> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= max_total {
            return Err(Rejection::MaxConnections);
        }
        c.total += 1;
        self.update_stress(c.total);
        Ok(ConnectionSlot {
            table: self.clone(),
            key: None,
            _active: ActiveConnection::open(),
        })
    }

    pub fn active(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl ConnectionSlot {
    /// Counts the slot against its client's address (or IPv6 prefix)
    /// unless that one is at its limit.
    pub fn assign(&mut self, ip: IpAddr, limits: &crate::config::Limits) -> Result<(), Rejection> {
        let key = per_ip_key(ip, limits.ipv6_prefix);
        let mut c = self.table.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.per_ip.entry(key).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            if *n == 0 {
                c.per_ip.remove(&key);
            }
            return Err(Rejection::MaxConnectionsPerIp);
        }
        *n += 1;
        self.key = Some(key);
        Ok(())
    }
}

/// What per-IP limits count: the address, or an IPv6 address's prefix.
fn per_ip_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match ipnet::Ipv6Net::new(v6, v6_prefix) {
            Ok(net) => IpAddr::V6(net.network()),
            Err(_) => ip,
        },
        v4 => v4,
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.table.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        self.table.update_stress(c.total);
        if let Some(key) = self.key
            && let Some(n) = c.per_ip.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&key);
            }
        }
        drop(c);
    }
}

/// Accepts connections until shutdown is signalled.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    table: Arc<ConnectionTable>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = %ctx.address, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                info!(listener = %ctx.address, "listener closed for shutdown");
                return;
            }
        };
        let peer = canonical(peer);
        metrics::connection_accepted(&ctx.label);
        let local = tcp.local_addr().unwrap_or(ctx.address);
        let Some(pp) = ctx.proxy_protocol.clone() else {
            match table.admit_unknown(ctx.limits.max_connections) {
                Ok(slot) => start_session(&ctx, slot, tcp, peer, local, &shutdown),
                Err(why) => refuse(&ctx, table.tasks(), tcp, peer, why),
            }
            continue;
        };
        // Behind a balancer: only it may speak, and what it says about the
        // client decides the per-IP limit and what the backend is told.
        if !pp.trusts(&peer) {
            let reason = Rejection::ProxyUntrusted;
            metrics::connection_rejected(reason);
            warn!(%peer, listener = %ctx.address, reason = reason.as_str(), "connection rejected: not a trusted balancer on a PROXY protocol listener");
            continue;
        }
        // A connection still sending its header holds a slot too: a
        // balancer cannot open more than max_connections of them.
        let slot = match table.admit_unknown(ctx.limits.max_connections) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&ctx, table.tasks(), tcp, peer, why);
                continue;
            }
        };
        let (ctx, mut shutdown) = (ctx.clone(), shutdown.clone());
        table.tasks().spawn(async move {
            let mut tcp = tcp;
            let header = tokio::select! {
                h = read_header(&mut tcp, pp.version, ctx.timeouts.handshake) => h,
                // No greeting was sent yet: the balancer retries elsewhere.
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            };
            match header {
                Ok(Inbound::Proxied { client, local }) => {
                    start_session(&ctx, slot, tcp, canonical(client), local, &shutdown);
                }
                Ok(Inbound::Local) => start_session(&ctx, slot, tcp, peer, local, &shutdown),
                Err(e) => {
                    let reason = Rejection::ProxyInvalid;
                    metrics::connection_rejected(reason);
                    warn!(%peer, listener = %ctx.address, reason = reason.as_str(), error = %e, "connection rejected: bad PROXY header");
                }
            }
        });
    }
}

/// Counts the client against its address's limit and runs its session,
/// or turns it away with 421.
fn start_session(
    ctx: &Arc<ListenerContext>,
    mut slot: ConnectionSlot,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) {
    let tasks = slot.table.tasks.clone();
    if let Err(why) = slot.assign(peer.ip(), &ctx.limits) {
        drop(slot);
        return refuse(ctx, &tasks, tcp, peer, why);
    }
    let ctx = ctx.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        session::run(ctx, tcp, peer, local, shutdown).await;
        drop(slot);
    });
}

/// `421` for a client over a connection limit, counted and logged.
fn refuse(
    ctx: &ListenerContext,
    tasks: &TaskTracker,
    tcp: TcpStream,
    peer: SocketAddr,
    why: Rejection,
) {
    let r = match why {
        Rejection::MaxConnectionsPerIp => reply::TOO_MANY_CONNECTIONS_FROM_IP,
        _ => reply::TOO_MANY_CONNECTIONS,
    };
    metrics::connection_rejected(why);
    warn!(%peer, listener = %ctx.address, reason = why.as_str(), "connection rejected");
    tasks.spawn(reject(tcp, r.render(&ctx.hostname)));
}

async fn reject(mut tcp: TcpStream, text: String) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = tcp.write_all(text.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// IPv4 clients on a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_ip: u32) -> crate::config::Limits {
        crate::config::Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            line_length: 4096,
            max_errors: 10,
            ipv6_prefix: 64,
            bare_newline: crate::config::BareNewline::Normal,
        }
    }

    #[test]
    fn limits_hold_and_slots_release() {
        let t = Arc::new(ConnectionTable::default());
        let l = limits(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = t.admit(a, &l).unwrap();
        let _s2 = t.admit(a, &l).unwrap();
        assert_eq!(t.admit(a, &l).unwrap_err(), Rejection::MaxConnectionsPerIp);
        assert_eq!(t.active(), 2, "a refused client holds no slot");
        let _s3 = t.admit(b, &l).unwrap();
        assert_eq!(t.admit(b, &l).unwrap_err(), Rejection::MaxConnections);
        drop(s1);
        assert_eq!(t.active(), 2);
        assert!(t.admit(a, &l).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_prefix() {
        let t = Arc::new(ConnectionTable::default());
        let l = limits(100, 2);
        let _a = t.admit("2001:db8:1:2::1".parse().unwrap(), &l).unwrap();
        let _b = t
            .admit("2001:db8:1:2:ffff::9".parse().unwrap(), &l)
            .unwrap();
        assert_eq!(
            t.admit("2001:db8:1:2::77".parse().unwrap(), &l)
                .unwrap_err(),
            Rejection::MaxConnectionsPerIp
        );
        assert!(t.admit("2001:db8:1:3::1".parse().unwrap(), &l).is_ok());
    }

    #[test]
    fn unknown_clients_count_towards_the_total() {
        let t = Arc::new(ConnectionTable::default());
        let _p1 = t.admit_unknown(2).unwrap();
        let _p2 = t.admit_unknown(2).unwrap();
        assert_eq!(t.admit_unknown(2).unwrap_err(), Rejection::MaxConnections);
        assert_eq!(
            t.admit("192.0.2.1".parse().unwrap(), &limits(2, 5))
                .unwrap_err(),
            Rejection::MaxConnections
        );
    }
}
