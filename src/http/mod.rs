//! The polite, hardened HTTP client every polled source shares (DESIGN §5 ApiClient).
//!
//! One [`ApiClient`] per upstream host, shared by every source on that host, so the host's
//! rate limit, budget and `Retry-After` pauses hold across sources. A source owns its
//! [`CircuitBreaker`]. Nothing here prints a secret: URLs are shown redacted and reqwest
//! errors are stripped of their URL before they are formatted.

mod breaker;
mod client;
mod error;

pub use breaker::{BreakerState, CircuitBreaker};
pub use client::{
    ApiClient, ApiClients, Expect, Fetched, HostSnapshot, NWS_GRID_EXPIRED_COOLDOWN, Request,
    Validators,
};
pub use error::FetchError;
