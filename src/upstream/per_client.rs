//! Stream connections (`tcp://`, `tls://`) toward an upstream that reads
//! PROXY headers (`--upstream-proxy-protocol`).
//!
//! A PROXY header is sent once, at the start of a connection, and names one
//! client for everything that follows. So a connection may carry the
//! queries of one client only: here each client (address and TLS server
//! name) gets its own [`StreamPool`], whose connections start with that
//! client's header. The port in the header is that of the client
//! connection whose query opened the upstream connection.
//!
//! Bounded: at most [`MAX_CLIENTS`] clients have pools at a time. A new
//! client beyond that first drops the pools whose connections the upstream
//! has closed, then the pool used longest ago; a dropped pool's queries in
//! flight are still answered (the query holds the pool), and its
//! connections close after them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::origin::Origin;
use super::reply::{Reply, UpstreamError};
use super::stream::{Connector, StreamPool};
use crate::metrics::stats::Stats;
use crate::proto::dns::QueryInfo;

/// Clients with upstream connections of their own at a time, per upstream.
/// Each has at least one connection while it is active, so this also bounds
/// the connections dotgate holds open toward the upstream in normal use
/// (a busy client may open a few more, see `StreamPool`).
pub const MAX_CLIENTS: usize = 256;

/// Who a pool is for: the client's address (without its port) and the
/// server name it asked for, both of which its header carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    ip: IpAddr,
    authority: Option<Arc<str>>,
}

struct Entry {
    pool: Arc<StreamPool>,
    used: Instant,
}

/// One upstream's pools, one per client, plus one for dotgate's own
/// queries (health probes, with the LOCAL command).
pub struct PerClient {
    connector: Connector,
    stats: Arc<Stats>,
    write_timeout: Duration,
    pools: Mutex<HashMap<Key, Entry>>,
    own: StreamPool,
}

impl PerClient {
    pub fn new(connector: Connector, stats: Arc<Stats>, write_timeout: Duration) -> Self {
        let mut local = Vec::new();
        crate::proto::proxy_header::write_v2_local(&mut local);
        let own = StreamPool::with_prelude(
            connector.clone(),
            local.into_boxed_slice(),
            stats.clone(),
            write_timeout,
        );
        Self {
            connector,
            stats,
            write_timeout,
            pools: Mutex::new(HashMap::new()),
            own,
        }
    }

    fn pools(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one query over the pool of the client `origin` names, waiting
    /// for its reply until `deadline`.
    pub async fn exchange(
        &self,
        msg: &[u8],
        info: &QueryInfo,
        origin: &Origin,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, UpstreamError> {
        match self.pool_for(origin) {
            Some(pool) => pool.exchange(msg, info, origin.subnet(), deadline).await,
            None => {
                self.own
                    .exchange(msg, info, origin.subnet(), deadline)
                    .await
            }
        }
    }

    /// The pool of the client `origin` names, made if need be; `None` for
    /// dotgate's own queries.
    fn pool_for(&self, origin: &Origin) -> Option<Arc<StreamPool>> {
        let client = origin.proxy_client()?;
        let key = Key {
            ip: client.client.ip().to_canonical(),
            authority: client.authority.clone(),
        };
        let now = Instant::now();
        let mut pools = self.pools();
        if let Some(entry) = pools.get_mut(&key) {
            entry.used = now;
            return Some(entry.pool.clone());
        }
        if pools.len() >= MAX_CLIENTS {
            // Pools left without connections (the upstream closed them
            // when idle) first, then the one used longest ago.
            pools.retain(|_, e| e.pool.connections() > 0);
            if pools.len() >= MAX_CLIENTS {
                let oldest = pools
                    .iter()
                    .min_by_key(|(_, e)| e.used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    pools.remove(&oldest);
                }
            }
        }
        let pool = Arc::new(StreamPool::with_prelude(
            self.connector.clone(),
            origin.stream_prelude().into_boxed_slice(),
            self.stats.clone(),
            self.write_timeout,
        ));
        pools.insert(
            key,
            Entry {
                pool: pool.clone(),
                used: now,
            },
        );
        Some(pool)
    }

    /// Open connections, all clients together (for metrics).
    pub fn connections(&self) -> usize {
        let clients: usize = self.pools().values().map(|e| e.pool.connections()).sum();
        clients + self.own.connections()
    }
}
