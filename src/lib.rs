//! firestream: wildfire-intelligence feeds normalised into one record envelope and delivered
//! to Kafka or the embedded local log.
//!
//! A record's path: [`sources`] (transport + parser) → [`mode`] (when to fetch) → [`dedupe`]
//! → [`queue`] (bounded, by priority) → [`delivery`] ([`router`] → [`sinks`]); anything that
//! fails on the way becomes a [`dlq`] record. [`manager::StreamManager`] wires it from
//! [`config`].

pub mod alert;
pub mod api;
pub mod api_tls;
pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod control;
pub mod dedupe;
pub mod delivery;
pub mod dlq;
pub mod dlq_admin;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod mode;
pub mod queue;
pub mod receipt;
pub mod record;
pub mod retry;
pub mod router;
pub mod secret;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod stream;
pub mod throttle;
pub mod transport;
