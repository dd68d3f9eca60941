//! Talking to Headscale: a typed REST client for `/api/v1` that knows the
//! differences between the supported versions. No Kubernetes in here.

pub mod client;
pub mod error;
pub mod version;

pub use client::{Client, VersionInfo};
pub use error::Error;
pub use version::Version;
