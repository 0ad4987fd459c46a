//! The server: accepting connections and the totals over finished ones.

use crate::config::{ConnectionStats, ServerConfig};
use crate::connection::Connection;

/// The server: configuration plus totals over finished connections.
#[derive(Debug, Clone, Default)]
pub struct Server {
    config: ServerConfig,
    accepted: u64,
    active: u64,
    finished: ConnectionStats,
}

impl Server {
    /// A server with the given policy.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            accepted: 0,
            active: 0,
            finished: ConnectionStats::default(),
        }
    }
    /// The policy.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
    /// Starts the state machine for a newly accepted TCP connection.
    pub fn accept(&mut self, now_ms: u64) -> Connection {
        self.accepted = self.accepted.saturating_add(1);
        self.active = self.active.saturating_add(1);
        Connection::new(self.config.clone(), now_ms)
    }
    /// Folds a closed connection's counters into the totals.
    pub fn retire(&mut self, connection: &Connection) {
        self.active = self.active.saturating_sub(1);
        self.finished.add(connection.stats());
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }
    /// Connections accepted and not yet retired.
    pub fn active(&self) -> u64 {
        self.active
    }
    /// Counters summed over retired connections.
    pub fn finished_totals(&self) -> &ConnectionStats {
        &self.finished
    }
}
