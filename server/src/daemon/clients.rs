//! Limits per client address, so that one address cannot take what every client shares:
//! open connections (`SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT`, as nginx's `limit_conn`),
//! worker slots (`SWITCHYARD_WORKERS_PER_CLIENT`, as xinetd's `per_source`), and the rate
//! of TLS handshakes (`SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT`: each costs a signature).
//!
//! A client is its IPv4 address, or its IPv6 /64: one host is routinely given a whole /64,
//! so counting single IPv6 addresses would let one machine count as millions of clients.
//! The address is the PROXY protocol's when that is on (a load balancer's own address is
//! never counted).
//!
//! A client's share shrinks while the daemon is crowded ([`Share::most`], which plugins'
//! own per-client limits use too): the last free
//! connections and workers go only to clients that hold few. With each address allowed a
//! quarter of everything, four addresses used to fill the daemon and lock every other
//! client out; now three fill three quarters, and the last quarter takes sixteen more. Counts live in a few locked maps by address (sharded, so that event
//! loops and workers rarely wait on each other); an address leaves its map when its counts
//! are back to zero, so memory follows the clients connected now.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub use protocol_api::clients::Share;
use protocol_api::rate::PerClient;
use protocol_api::throttle::Throttle;

/// What one client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Open connections, HTTP and upgraded.
    Connections,
    /// Worker slots: connections negotiated or served by blocking code.
    Workers,
    /// Connections past the connection limit that wait, lingering, for their `503` to be
    /// read ([`REFUSALS_ANSWERED`] at once). Past that, a client's connections are closed
    /// unanswered: a refused connection still holds one of the daemon's connection slots
    /// while it lingers, so answering each would let one address that opens connections
    /// fast enough take every slot with refusals.
    Refusals,
    /// Connections from a load balancer in `SWITCHYARD_PROXY_FROM` whose PROXY protocol
    /// header has not come yet, counted against the balancer's address (its share of
    /// connections at most), apart from its connections: its health checks (headers that
    /// name no client) and the clients behind it are not refused for these.
    AwaitingHeader,
}

/// The daemon is busy with TLS handshakes past this many clients' rate at once
/// (`SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT` times this, in bursts of twice as many): only
/// then is a client held to its own rate. Users behind one address (an office's NAT, a
/// proxy that rewrites addresses) are so held back only while the daemon is under load.
pub const BUSY_FROM: u32 = 4;

/// TLS handshakes begun, per client and in all.
struct Handshakes {
    per_client: PerClient,
    all: PerClient,
}

/// Refused connections of one client that may wait for their answer at once.
pub const REFUSALS_ANSWERED: usize = 16;

/// The key a client is counted under ([`protocol_api::clients::key`]: an IPv4 address, or
/// an IPv6 /64; plugins with limits of their own count clients by it too). Eight bytes,
/// as every open connection carries one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u64);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        ClientKey(protocol_api::clients::key(ip))
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    connections: usize,
    workers: usize,
    refusals: usize,
    awaiting_header: usize,
}

impl Counts {
    fn of(&mut self, limit: Limit) -> &mut usize {
        match limit {
            Limit::Connections => &mut self.connections,
            Limit::Workers => &mut self.workers,
            Limit::Refusals => &mut self.refusals,
            Limit::AwaitingHeader => &mut self.awaiting_header,
        }
    }

    fn is_empty(&self) -> bool {
        self.connections == 0
            && self.workers == 0
            && self.refusals == 0
            && self.awaiting_header == 0
    }
}

const SHARDS: usize = 16;

pub struct Clients {
    connections: Share,
    workers: Share,
    shards: [Mutex<HashMap<ClientKey, Counts>>; SHARDS],
    /// Refusals, by [`Limit`], for `/metrics`.
    refused: [AtomicU64; 4],
    refusals_logged: Throttle,
    /// TLS handshakes each client may begin while the daemon is busy with them, and how
    /// many the whole daemon begins before it is (`None`: no limit).
    handshakes: Option<Handshakes>,
}

/// One unit of a client's limit, given back when dropped.
pub struct Hold {
    clients: &'static Clients,
    key: ClientKey,
    limit: Limit,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.clients.give_back(self.key, self.limit);
    }
}

impl Clients {
    /// `handshakes_per_sec`: TLS handshakes a client may begin a second, in bursts of
    /// twice as many; 0: no limit.
    pub fn new(connections: Share, workers: Share, handshakes_per_sec: u32) -> Clients {
        Clients {
            connections,
            workers,
            shards: std::array::from_fn(|_| Mutex::default()),
            refused: Default::default(),
            refusals_logged: Throttle::new(),
            handshakes: (handshakes_per_sec > 0).then(|| Handshakes {
                per_client: PerClient::new(handshakes_per_sec),
                all: PerClient::new(handshakes_per_sec.saturating_mul(BUSY_FROM)),
            }),
        }
    }

    /// Whether the client at `ip` may begin a TLS handshake now (counted if so): always
    /// while the daemon begins fewer than [`BUSY_FROM`] clients' worth a second; past
    /// that, only within its own rate.
    pub fn may_handshake(&self, ip: IpAddr) -> bool {
        let Some(handshakes) = &self.handshakes else {
            return true;
        };
        // Within its own rate: always (and counted in all, as far as all has room). Past
        // it: as long as the daemon's own rate has room, which it then takes (a refusal
        // takes none of it, so refused attempts cannot keep the daemon busy).
        if handshakes.per_client.allow(ClientKey::of(ip).0) {
            let _ = handshakes.all.allow(0);
            return true;
        }
        handshakes.all.allow(0)
    }

    fn shard(&self, key: ClientKey) -> MutexGuard<'_, HashMap<ClientKey, Counts>> {
        let index = (key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most of `limit` a client may hold while the daemon has `free` of it free.
    pub fn most(&self, limit: Limit, free: usize) -> usize {
        match limit {
            Limit::Connections => self.connections.most(free),
            Limit::Workers => self.workers.most(free),
            // A refusal lingers in a connection slot for its answer to be read: while the
            // daemon is crowded, no more of them than the share itself, or a few
            // addresses' refusals would fill the reserve their refusal keeps for others
            // (an attacker's review, with 100 connections: another client waited 2.8 s).
            Limit::Refusals => REFUSALS_ANSWERED.min(self.connections.most(free)),
            // Not less while the daemon is crowded: a balancer stands for many clients,
            // and a burst of theirs, arriving before their headers, would close one
            // another (the oldest make room, [`Limit::AwaitingHeader`]): 445 of 600 so.
            Limit::AwaitingHeader => self.connections.per_client,
        }
    }

    /// Takes one unit of `limit` for the client at `ip`, unless it holds its most already
    /// while the daemon has `free` units free (the refusal is counted).
    pub fn take(&'static self, ip: IpAddr, limit: Limit, free: usize) -> Option<Hold> {
        let key = self.count(ip, limit, free)?;
        Some(Hold {
            clients: self,
            key,
            limit,
        })
    }

    /// [`Clients::take`] for a holder that keeps its key itself (a connection's
    /// [`Ticket`](super::state::Ticket), which knows its `Clients`): the unit is given back
    /// with [`Clients::give_back`].
    pub fn count(&self, ip: IpAddr, limit: Limit, free: usize) -> Option<ClientKey> {
        let key = ClientKey::of(ip);
        let most = self.most(limit, free);
        let mut shard = self.shard(key);
        let counts = shard.entry(key).or_default();
        let held = counts.of(limit);
        if *held >= most {
            if counts.is_empty() {
                shard.remove(&key);
            }
            drop(shard);
            self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *held += 1;
        Some(key)
    }

    /// Whether the client at `ip` holds its most of `limit` now, with `free` units of it
    /// free; a yes is counted as a refusal (the caller refuses it).
    pub fn refuses(&self, ip: IpAddr, limit: Limit, free: usize) -> bool {
        let key = ClientKey::of(ip);
        let most = self.most(limit, free);
        let refused = self
            .shard(key)
            .get_mut(&key)
            .is_some_and(|counts| *counts.of(limit) >= most);
        if refused {
            self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    /// Logs a refusal for a client's limit: at most one line a second for the whole daemon,
    /// with how many went unlogged since (a client hammering its limit must not flood the
    /// log). `most`: the limit that applied, less than the setting's `max` while the daemon
    /// is crowded ([`Share::most`]).
    pub fn warn_refused(
        &self,
        peer: SocketAddr,
        reason: &str,
        setting: &str,
        max: usize,
        most: usize,
    ) {
        if let Some(unlogged) = self.refusals_logged.admit() {
            let crowded = match most < max {
                true => format!(", {most} while the server is crowded"),
                false => String::new(),
            };
            log::warn!("{peer}: {reason} ({setting}={max}{crowded}); refused{unlogged}");
        }
    }

    /// Gives back a unit [`Clients::count`] took.
    pub fn give_back(&self, key: ClientKey, limit: Limit) {
        let mut shard = self.shard(key);
        if let Some(counts) = shard.get_mut(&key) {
            let held = counts.of(limit);
            *held = held.saturating_sub(1);
            if counts.is_empty() {
                shard.remove(&key);
            }
        }
    }

    /// Clients holding anything now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Refusals for `limit` since start.
    pub fn refused(&self, limit: Limit) -> u64 {
        self.refused[limit as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients of a daemon with room for 100 of each kind (never crowded below 75 held).
    fn clients(connections: usize, workers: usize) -> &'static Clients {
        let share = |per_client| Share {
            total: 100,
            per_client,
        };
        Box::leak(Box::new(Clients::new(
            share(connections),
            share(workers),
            0,
        )))
    }

    /// Free units of each kind, plenty: the daemon is not crowded.
    const ROOM: usize = 99;

    #[test]
    fn a_crowded_daemon_refuses_a_heavy_client_and_admits_a_light_one() {
        let clients = clients(25, 25);
        let (heavy, light): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let held: Vec<Hold> = (0..3)
            .map(|_| clients.take(heavy, Limit::Connections, ROOM).unwrap())
            .collect();
        // 24 free, fewer than the reserve of 25: a client may hold 25 / 16 = 1.
        assert!(clients.take(heavy, Limit::Connections, 24).is_none());
        assert!(clients.refuses(heavy, Limit::Connections, 24));
        let first = clients.take(light, Limit::Connections, 24);
        assert!(first.is_some(), "a client holding nothing is let in");
        assert!(clients.take(light, Limit::Connections, 23).is_none());
        // Its refusals wait for their answer in connection slots: one at a time while
        // crowded (16 otherwise).
        let answered = clients.take(heavy, Limit::Refusals, 23);
        assert!(answered.is_some());
        assert!(clients.take(heavy, Limit::Refusals, 23).is_none());
        assert!(clients.take(heavy, Limit::Refusals, ROOM).is_some());
        // Room again: the whole limit.
        assert!(clients.take(heavy, Limit::Connections, 25).is_some());
        drop(held);
    }

    #[test]
    fn one_address_is_held_to_its_limit_and_others_are_not_touched() {
        let clients = clients(2, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = clients.take(a, Limit::Connections, ROOM).unwrap();
        let _second = clients.take(a, Limit::Connections, ROOM).unwrap();
        assert!(clients.take(a, Limit::Connections, ROOM).is_none());
        assert_eq!(clients.refused(Limit::Connections), 1);
        assert!(
            clients.take(b, Limit::Connections, ROOM).is_some(),
            "another client"
        );
        let _worker = clients.take(a, Limit::Workers, ROOM).unwrap();
        assert!(clients.take(a, Limit::Workers, ROOM).is_none());
        drop(first);
        assert!(
            clients.take(a, Limit::Connections, ROOM).is_some(),
            "given back"
        );
    }

    #[test]
    fn an_address_leaves_the_table_when_it_holds_nothing() {
        let clients = clients(1, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held = clients.take(a, Limit::Connections, ROOM).unwrap();
        assert!(clients.take(a, Limit::Connections, ROOM).is_none());
        assert_eq!(clients.tracked(), 1);
        drop(held);
        assert_eq!(clients.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_v4_as_v4() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(one), ClientKey::of(same_64));
        assert_ne!(ClientKey::of(one), ClientKey::of(other_64));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ClientKey::of(v4), ClientKey::of(mapped));
        assert_ne!(
            ClientKey::of("::".parse().unwrap()),
            ClientKey::of("0.0.0.0".parse().unwrap())
        );
    }
}
