//! Talking to Headscale: a typed REST client for `/api/v1` that knows the
//! differences between the supported versions (0.27 to 0.30). No Kubernetes in here.
//!
//! - `client.rs`: transport (timeouts, connection reuse, rate limit, retries of reads).
//! - `version.rs`: the version table ([`ApiShape`]): which request shape each version needs.
//! - `error.rs`: typed errors and the classifier for error bodies.
//! - `models.rs`: JSON shapes.
//! - `users.rs`, `nodes.rs`, `keys.rs`, `policy.rs`: the calls, one file per API area.

pub mod client;
pub mod error;
#[cfg(test)]
pub(crate) mod fake_server;
#[cfg(test)]
mod faults;
mod keys;
mod limiter;
pub mod models;
mod nodes;
mod policy;
mod users;
pub mod version;

pub use client::{Client, ClientConfig, Observer, Timings, install_crypto_provider};
pub use error::Error;
pub use models::*;
pub use version::{ApiShape, Version};
