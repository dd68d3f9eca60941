//! TEMPORARY STUB (replaced by the render branch): the contract the managed
//! controller builds against.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::server::ManagedSpec;
use crate::secret::SecretString;

pub const POSTGRES_PASSWORD_ENV: &str = "HEADSCALE_DATABASE_POSTGRES_PASS";

pub struct Layout;
impl Layout {
    pub fn pod() -> Self {
        Layout
    }
}

#[derive(Clone, Debug)]
pub struct Target {
    pub minor: u32,
}

pub struct DnsInput {
    pub magic_dns: bool,
    pub base_domain: Option<String>,
    pub override_local_dns: bool,
    pub global_nameservers: Vec<String>,
    pub split: BTreeMap<String, Vec<String>>,
    pub search_domains: Vec<String>,
    pub extra_records_path: Option<PathBuf>,
}
impl DnsInput {
    pub fn safe_default() -> Self {
        Self {
            magic_dns: false,
            base_domain: None,
            override_local_dns: false,
            global_nameservers: vec![],
            split: BTreeMap::new(),
            search_domains: vec![],
            extra_records_path: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

pub fn validate(spec: &ManagedSpec, _dns: &DnsInput) -> Result<Target, Vec<Problem>> {
    let v = spec.version.trim_start_matches('v');
    let minor: u32 = v.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    if !(28..=29).contains(&minor) {
        return Err(vec![Problem {
            reason: "UnsupportedVersion",
            message: format!("managed mode runs Headscale 0.28 and 0.29, not {}", spec.version),
        }]);
    }
    Ok(Target { minor })
}

pub fn render_config(spec: &ManagedSpec, _t: &Target, _dns: &DnsInput, _l: &Layout) -> String {
    format!("server_url: {}\n", spec.server_url)
}

pub fn generate_private_key() -> SecretString {
    SecretString::new("privkey:0000000000000000000000000000000000000000000000000000000000000000")
}
