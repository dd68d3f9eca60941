//! DnsConfig, pure: which DnsConfig is in force for a server, what it maps to
//! ([`DnsInput`] and the records file), and the statuses that follow from what the
//! server's reconcile did with it. No Kubernetes calls.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};

use crate::api::conditions::{self, reason};
use crate::api::server::ManagedSpec;
use crate::api::{DnsConfig, DnsConfigSpec, DnsConfigStatus, ServerDnsStatus};
use crate::render::{self, DnsInput, Layout, Problem};

/// DnsConfig `Ready` reasons (besides the DNS reasons of [`render::reason`]).
pub mod why {
    /// Rendered into the server's config and records file.
    pub const APPLIED: &str = "Applied";
    /// The named server does not exist.
    pub const SERVER_NOT_FOUND: &str = crate::api::conditions::reason::SERVER_NOT_FOUND;
    /// The named server is external: Headscale has no API for DNS.
    pub const EXTERNAL_SERVER: &str = "ExternalServer";
    /// An older DnsConfig names the same server; this one is not used.
    pub const CONFLICT: &str = "DnsConfigConflict";
    /// The server itself is not applied yet (its spec is refused, or something it needs
    /// is missing); the DNS goes with it.
    pub const SERVER_PENDING: &str = "ServerPending";
}

/// The DnsConfigs that name one server: the one in force (the oldest by creation
/// time, then name) and the others, which are refused rather than merged.
#[derive(Debug)]
pub struct Selection {
    pub in_force: Option<Arc<DnsConfig>>,
    pub refused: Vec<Arc<DnsConfig>>,
}

/// Picks the DnsConfig in force among those naming a server. Objects being deleted
/// do not count.
pub fn select(mut configs: Vec<Arc<DnsConfig>>) -> Selection {
    configs.retain(|c| c.metadata.deletion_timestamp.is_none());
    configs.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let mut it = configs.into_iter();
    Selection {
        in_force: it.next(),
        refused: it.collect(),
    }
}

/// What a server runs with when no DnsConfig names it: no DNS settings pushed
/// ([`DnsInput::safe_default`]) and the records file, holding `[]`, so that records
/// added later need no restart.
pub fn default_input(layout: &Layout) -> DnsInput {
    DnsInput {
        extra_records_path: Some(layout.extra_records.clone()),
        ..DnsInput::safe_default()
    }
}

/// A DnsConfig's settings as the renderer takes them; the records go to the file.
pub fn dns_input(spec: &DnsConfigSpec, layout: &Layout) -> DnsInput {
    DnsInput {
        magic_dns: spec.magic_dns,
        base_domain: spec.base_domain.clone(),
        override_local_dns: spec.override_local_dns,
        global_nameservers: spec.nameservers.global.clone(),
        split: spec.nameservers.split.clone(),
        search_domains: spec.search_domains.clone(),
        extra_records_path: Some(layout.extra_records.clone()),
    }
}

/// A DnsConfig ready to render: its settings and its records file.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub input: DnsInput,
    pub records: String,
    pub record_count: usize,
}

/// Maps and checks a DnsConfig against the server's spec: everything Headscale would
/// refuse at start about DNS (the server URL's host included) and every bad record.
pub fn candidate(
    spec: &DnsConfigSpec,
    server: &ManagedSpec,
    layout: &Layout,
) -> Result<Candidate, Vec<Problem>> {
    let input = dns_input(spec, layout);
    let mut problems = render::validate_dns(server, &input);
    let host = render::server_host(server);
    problems.extend(render::check_records(&spec.extra_records, host.as_deref()));
    if !problems.is_empty() {
        return Err(problems);
    }
    let records = render::render_records(&spec.extra_records);
    let record_count = render::count_records(&records).unwrap_or_default();
    let settings = settings_size(&input);
    if settings > MAX_SETTINGS_BYTES {
        problems.push(Problem {
            reason: render::reason::DNS_TOO_LARGE,
            message: format!(
                "the DNS settings (nameservers, split DNS, search domains) take {settings} bytes, more than the \
                 {MAX_SETTINGS_BYTES} the server's config may give them (a ConfigMap holds at most 1 MiB): use fewer \
                 or shorter resolvers and domains"
            ),
        });
    }
    if records.len() > MAX_RECORDS_BYTES {
        problems.push(Problem {
            reason: render::reason::DNS_TOO_LARGE,
            message: format!(
                "the extra records take {} bytes, more than the {MAX_RECORDS_BYTES} their ConfigMap may hold",
                records.len()
            ),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Candidate {
        input,
        records,
        record_count,
    })
}

/// Room for the DNS settings in the server's config ConfigMap (at most 1 MiB in all,
/// the rest of the config is a few KiB).
pub const MAX_SETTINGS_BYTES: usize = 512 * 1024;
/// Room for the extra records in their own ConfigMap (at most 1 MiB).
pub const MAX_RECORDS_BYTES: usize = 900 * 1024;

/// About what the DNS settings take in the rendered YAML (their JSON form, which is
/// close to it).
fn settings_size(dns: &DnsInput) -> usize {
    dns.global_nameservers.iter().map(|n| n.len() + 8).sum::<usize>()
        + dns
            .split
            .iter()
            .map(|(domain, servers)| domain.len() + 8 + servers.iter().map(|n| n.len() + 10).sum::<usize>())
            .sum::<usize>()
        + dns.search_domains.iter().map(|d| d.len() + 8).sum::<usize>()
}

/// Leak protection: clients use the tailnet's resolvers for everything, so a query
/// never goes to the resolver of whatever network the device is on.
pub fn leak_protection(override_local_dns: bool, global_nameservers: &[String]) -> bool {
    override_local_dns && !global_nameservers.is_empty()
}

/// The server's `status.dns` for what it renders.
pub fn server_status(
    dns: &DnsInput,
    config: Option<(String, Option<i64>)>,
    record_count: usize,
) -> ServerDnsStatus {
    let (config_ref, config_generation) = match config {
        Some((name, generation)) => (Some(name), generation),
        None => (None, None),
    };
    ServerDnsStatus {
        config_ref,
        config_generation,
        magic_dns: dns.magic_dns,
        override_local_dns: dns.override_local_dns,
        leak_protection: leak_protection(dns.override_local_dns, &dns.global_nameservers),
        extra_records: i64::try_from(record_count).unwrap_or(i64::MAX),
        settings_hash: Some(settings_hash(dns)),
        records_hash: None,
    }
}

/// A stable fingerprint of the DNS settings rendered into the config (not the records).
pub fn settings_hash(dns: &DnsInput) -> String {
    let canonical = serde_json::json!({
        "magicDns": dns.magic_dns,
        "baseDomain": dns.base_domain,
        "overrideLocalDns": dns.override_local_dns,
        "global": dns.global_nameservers,
        "split": dns.split,
        "searchDomains": dns.search_domains,
        "extraRecordsPath": dns.extra_records_path,
    });
    crate::controller::managed::sha256_hex(canonical.to_string().as_bytes())
}

/// What a server's reconcile did with the DnsConfig in force.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Its settings are in the config and its records in the file (or none names
    /// the server and the safe default is).
    Applied { record_count: usize },
    /// It is refused: the server renders its last good DNS instead.
    Refused { problems: Vec<Problem>, kept: String },
    /// The server was not applied (its own spec is refused, a Secret is missing, ...):
    /// `reason: message` of the server.
    ServerPending { message: String },
    /// The server is external: DNS cannot be applied.
    External,
}

/// The status of a DnsConfig naming server `server`. `in_force` says whether it is
/// the one in force (`None`: refused in favour of that older DnsConfig). Pure.
pub fn config_status(
    dc: &DnsConfig,
    server: &str,
    in_force: Result<&Report, &str>,
    now: Timestamp,
) -> DnsConfigStatus {
    let old = dc.status.clone().unwrap_or_default();
    let generation = dc.metadata.generation;
    let spec = &dc.spec;
    // Protection is claimed only for DNS clients get: this DnsConfig in force and
    // applied. A conflicting, refused or pending one protects nobody.
    let applied = matches!(in_force, Ok(Report::Applied { .. }));
    let mut status = DnsConfigStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        leak_protection: Some(applied && leak_protection(spec.override_local_dns, &spec.nameservers.global)),
        extra_records: None,
    };
    let (ok, why, message) = match in_force {
        Err(older) => (
            false,
            why::CONFLICT,
            format!(
                "HeadscaleServer {server:?} already takes its DNS from DnsConfig {older:?} (created earlier); \
                 a server has one DnsConfig: move these settings into {older:?} or delete one of them. \
                 Nothing of this DnsConfig is applied"
            ),
        ),
        Ok(Report::Applied { record_count }) => {
            status.extra_records = Some(i64::try_from(*record_count).unwrap_or(i64::MAX));
            (
                true,
                why::APPLIED,
                format!(
                    "applied to HeadscaleServer {server:?}: settings in its config (a change rolls its pod once), \
                     {record_count} extra record(s) in ConfigMap \"{server}-dns-records\" (changed without a restart)"
                ),
            )
        }
        Ok(Report::Refused { problems, kept }) => {
            let first = problems.first().map(|p| p.reason).unwrap_or(reason::INVALID_SPEC);
            let all: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            (
                false,
                first,
                format!(
                    "{} (nothing was changed: HeadscaleServer {server:?} keeps running with {kept})",
                    all.join("; ")
                ),
            )
        }
        Ok(Report::ServerPending { message }) => (
            false,
            why::SERVER_PENDING,
            format!("HeadscaleServer {server:?} is not applied ({message}); this DNS is applied with it"),
        ),
        Ok(Report::External) => (
            false,
            why::EXTERNAL_SERVER,
            format!(
                "HeadscaleServer {server:?} is external: Headscale has no API for DNS settings or records, so the \
                 operator cannot apply them; set them in that server's own config file (dns.*), or run the server \
                 in managed mode"
            ),
        ),
    };
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        ok,
        why,
        crate::controller::truncate(&message, 2000),
        generation,
        now,
    );
    status
}

/// The status of a DnsConfig whose server does not exist. Pure.
pub fn orphan_status(dc: &DnsConfig, now: Timestamp) -> DnsConfigStatus {
    let old = dc.status.clone().unwrap_or_default();
    let generation = dc.metadata.generation;
    // Applied to no server, it protects nobody.
    let mut status = DnsConfigStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        leak_protection: Some(false),
        extra_records: None,
    };
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        false,
        why::SERVER_NOT_FOUND,
        format!(
            "HeadscaleServer {:?} (spec.serverRef) does not exist in this namespace",
            dc.spec.server_ref.name
        ),
        generation,
        now,
    );
    status
}

/// An Event when `Ready` changes status or reason; none on an unchanged requeue.
pub fn transition_event(old: Option<&Condition>, new: Option<&Condition>) -> Option<Event> {
    let mut event = crate::controller::condition_event(old, new, "ApplyDns")?;
    if matches!(event.type_, EventType::Normal) {
        event.reason = "DnsApplied".into();
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn dc(name: &str, created: &str, spec: serde_json::Value) -> Arc<DnsConfig> {
        let mut spec = spec;
        spec["serverRef"] = json!({"name": "hs"});
        let spec: DnsConfigSpec = serde_json::from_value(spec).unwrap();
        let mut d = DnsConfig::new(name, spec);
        d.metadata.namespace = Some("ns".into());
        d.metadata.generation = Some(1);
        d.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        Arc::new(d)
    }

    fn server(url: &str) -> ManagedSpec {
        serde_json::from_value(json!({"version": "0.29.2", "serverUrl": url})).unwrap()
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn full() -> serde_json::Value {
        json!({
            "baseDomain": "tailnet.example.net",
            "nameservers": {"global": ["10.0.0.53"], "split": {"corp.example.com": ["10.1.0.53"]}},
            "searchDomains": ["corp.example.com"],
            "extraRecords": [{"name": "grafana.tailnet.example.net", "type": "A", "value": "100.64.0.10"}],
        })
    }

    #[test]
    fn the_oldest_wins_then_the_name() {
        let a = dc("b-first", "2026-01-01T00:00:00Z", full());
        let b = dc("a-second", "2026-01-02T00:00:00Z", full());
        let c = dc("a-first-too", "2026-01-01T00:00:00Z", full());
        let s = select(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(s.in_force.unwrap().name_any(), "a-first-too");
        let refused: Vec<String> = s.refused.iter().map(|d| d.name_any()).collect();
        assert_eq!(refused, ["b-first", "a-second"]);
        // One being deleted does not count.
        let mut gone = (*c).clone();
        gone.metadata.deletion_timestamp = Some(Time(now()));
        let s = select(vec![a, b, Arc::new(gone)]);
        assert_eq!(s.in_force.unwrap().name_any(), "b-first");
        assert!(select(vec![]).in_force.is_none());
    }

    #[test]
    fn a_dns_config_maps_to_settings_and_a_records_file() {
        let layout = Layout::pod();
        let d = dc("dns", "2026-01-01T00:00:00Z", full());
        let c = candidate(&d.spec, &server("https://hs.example.com"), &layout).unwrap();
        assert!(c.input.magic_dns && c.input.override_local_dns);
        assert_eq!(c.input.base_domain.as_deref(), Some("tailnet.example.net"));
        assert_eq!(c.input.split["corp.example.com"], ["10.1.0.53"]);
        assert_eq!(c.input.extra_records_path, Some(layout.extra_records.clone()));
        assert_eq!(c.record_count, 1);
        assert!(c.records.contains("grafana.tailnet.example.net"));
        // The defaults of the schema: MagicDNS and override on.
        let d = dc(
            "dns",
            "2026-01-01T00:00:00Z",
            json!({"magicDns": false, "overrideLocalDns": false}),
        );
        let c = candidate(&d.spec, &server("https://hs.example.com"), &layout).unwrap();
        assert_eq!(c.records, "[]\n");
        assert_eq!(c.input, default_input(&layout));
    }

    #[test]
    fn dns_headscale_would_refuse_is_refused_with_its_reason() {
        let layout = Layout::pod();
        let cases = [
            (
                json!({"baseDomain": "example.com", "nameservers": {"global": ["1.1.1.1"]}}),
                "BaseDomainContainsServer",
            ),
            (
                json!({"nameservers": {"global": ["1.1.1.1"]}}),
                "MagicDnsWithoutBaseDomain",
            ),
            (json!({"magicDns": false}), "OverrideLocalDnsWithoutNameservers"),
            (
                json!({"magicDns": false, "overrideLocalDns": false, "searchDomains": ["A..b"]}),
                "InvalidDns",
            ),
            (
                json!({"magicDns": false, "overrideLocalDns": false,
                       "extraRecords": [{"name": "*.x.example.net", "type": "A", "value": "100.64.0.1"}]}),
                "InvalidExtraRecord",
            ),
        ];
        for (spec, want) in cases {
            let d = dc("dns", "2026-01-01T00:00:00Z", spec.clone());
            let problems = candidate(&d.spec, &server("https://hs.example.com:8443"), &layout).unwrap_err();
            assert_eq!(problems[0].reason, want, "{spec}: {problems:?}");
        }
    }

    #[test]
    fn dns_too_large_for_its_configmaps_is_refused() {
        let layout = Layout::pod();
        // Within the schema's bounds (256 split domains of 16 resolvers), but about 1 MB.
        let long = format!("https://doh.example.com/{}", "q".repeat(230));
        let split: serde_json::Map<String, serde_json::Value> = (0..256)
            .map(|i| (format!("d{i}.corp.example.com"), json!(vec![long.clone(); 16])))
            .collect();
        let d = dc(
            "dns",
            "2026-01-01T00:00:00Z",
            json!({"baseDomain": "ts.example.net", "nameservers": {"global": ["192.0.2.53"], "split": split}}),
        );
        let problems = candidate(&d.spec, &server("https://hs.example.com"), &layout).unwrap_err();
        assert_eq!(problems[0].reason, "DnsTooLarge", "{problems:?}");
        assert!(problems[0].message.contains("bytes"), "{problems:?}");
    }

    #[test]
    fn statuses_say_what_happened_and_name_the_older_config() {
        let d = dc("dns", "2026-01-01T00:00:00Z", full());
        let s = config_status(&d, "hs", Ok(&Report::Applied { record_count: 1 }), now());
        let r = conditions::find(&s.conditions, "Ready").unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Applied"));
        assert_eq!(s.leak_protection, Some(true));
        assert_eq!(s.extra_records, Some(1));
        assert_eq!(s.observed_generation, Some(1));

        let s = config_status(&d, "hs", Err("older"), now());
        let r = conditions::find(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "DnsConfigConflict")
        );
        assert_eq!(s.leak_protection, Some(false), "not in force: protects nobody");
        assert!(
            r.message.contains("\"older\"") && r.message.contains("\"hs\""),
            "{}",
            r.message
        );

        let refused = Report::Refused {
            problems: vec![Problem {
                reason: "BaseDomainContainsServer",
                message: "baseDomain \"example.com\" is a parent".into(),
            }],
            kept: "DnsConfig \"dns\" generation 1".into(),
        };
        let s = config_status(&d, "hs", Ok(&refused), now());
        let r = conditions::find(&s.conditions, "Ready").unwrap();
        assert_eq!(r.reason, "BaseDomainContainsServer");
        assert!(
            r.message.contains("nothing was changed") && r.message.contains("generation 1"),
            "{}",
            r.message
        );
        assert_eq!(s.extra_records, None);
        assert_eq!(s.leak_protection, Some(false), "refused: protects nobody");

        let s = config_status(&d, "hs", Ok(&Report::External), now());
        assert_eq!(
            conditions::find(&s.conditions, "Ready").unwrap().reason,
            "ExternalServer"
        );
        assert_eq!(s.leak_protection, Some(false));
        let pending = Report::ServerPending {
            message: "InvalidDuration: ...".into(),
        };
        let s = config_status(&d, "hs", Ok(&pending), now());
        assert_eq!(s.leak_protection, Some(false), "not applied: protects nobody");
        let s = orphan_status(&d, now());
        assert_eq!(
            conditions::find(&s.conditions, "Ready").unwrap().reason,
            "ServerNotFound"
        );
        assert_eq!(s.leak_protection, Some(false));
        // Applied, it is what the spec says.
        let mut open = (*d).clone();
        open.spec.override_local_dns = false;
        let s = config_status(&open, "hs", Ok(&Report::Applied { record_count: 1 }), now());
        assert_eq!(s.leak_protection, Some(false));

        // Leak protection needs override and a resolver.
        assert!(!leak_protection(true, &[]));
        assert!(!leak_protection(false, &["1.1.1.1".into()]));
    }

    #[test]
    fn events_on_transitions_only() {
        let d = dc("dns", "2026-01-01T00:00:00Z", full());
        let a = config_status(&d, "hs", Ok(&Report::Applied { record_count: 1 }), now());
        let ev = transition_event(None, conditions::find(&a.conditions, "Ready")).unwrap();
        assert_eq!((ev.type_, ev.reason.as_str()), (EventType::Normal, "DnsApplied"));
        let b = config_status(&d, "hs", Ok(&Report::Applied { record_count: 2 }), now());
        assert!(
            transition_event(
                conditions::find(&a.conditions, "Ready"),
                conditions::find(&b.conditions, "Ready")
            )
            .is_none()
        );
        let c = config_status(&d, "hs", Err("older"), now());
        let ev = transition_event(
            conditions::find(&b.conditions, "Ready"),
            conditions::find(&c.conditions, "Ready"),
        )
        .unwrap();
        assert_eq!(
            (ev.type_, ev.reason.as_str()),
            (EventType::Warning, "DnsConfigConflict")
        );
    }

    #[test]
    fn server_status_reports_leak_protection() {
        let layout = Layout::pod();
        let s = server_status(&default_input(&layout), None, 0);
        assert_eq!(s.config_ref, None);
        assert!(!s.leak_protection && !s.magic_dns);
        let d = dc("dns", "2026-01-01T00:00:00Z", full());
        let c = candidate(&d.spec, &server("https://hs.example.com"), &layout).unwrap();
        let s = server_status(&c.input, Some(("dns".into(), Some(3))), c.record_count);
        assert_eq!(
            (s.config_ref.as_deref(), s.config_generation),
            (Some("dns"), Some(3))
        );
        assert!(s.leak_protection && s.magic_dns && s.override_local_dns);
        assert_eq!(s.extra_records, 1);
    }
}
