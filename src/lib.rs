//! headscale-operator: runs and governs Headscale from Kubernetes resources.

pub mod api;
pub mod controller;
pub mod headscale;
pub mod http;
pub mod keyholder;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod render;
pub mod secret;
pub mod telemetry;
