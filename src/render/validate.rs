//! Everything Headscale refuses at start, refused first, with a reason and a message.
//!
//! Headscale's own checks (0.28.0 and 0.29.2, `hscontrol/types/config.go` and
//! `hscontrol/app.go`) and what we do about each:
//! - `server_url` must start with `http://` or `https://` (case-sensitive): we also
//!   want a host and nothing but scheme, host and port.
//! - `dns.base_domain` equal to the server URL's host, or a parent domain of it
//!   (`isSafeServerURL`): refused. Headscale compares labels of `server.Host`
//!   (which keeps the port), case-sensitively; we compare the host name without the
//!   port, case-insensitively, which refuses everything Headscale refuses and the
//!   same mistake when the URL has a port.
//! - `dns.magic_dns` without `dns.base_domain`, `dns.override_local_dns` without
//!   `dns.nameservers.global`: refused.
//! - The ephemeral inactivity timeout must be more than 65s: refused below.
//! - At least one prefix; prefixes outside 100.64.0.0/10 and fd7a:115c:a1e0::/48 only
//!   get a warning from Headscale, but Tailscale clients break on them: refused.
//! - An empty DERP map (no embedded server, no URL) is fatal: refused.
//! - Everything else Headscale checks (noise key path, database type, TLS, removed
//!   keys, extra records vs path, OIDC secret vs secret path, HA probe intervals,
//!   tuning) concerns keys only the renderer writes, and it writes them right.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use reqwest::Url;

use super::{DnsInput, Problem, SUPPORTED_MINORS, Target, reason};
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::api::server::{DatabaseType, DerpSpec, ManagedSpec, OidcSpec, PrefixesSpec};

/// Headscale's minimum ephemeral inactivity timeout is "more than 65s".
const MIN_EPHEMERAL_TIMEOUT: Duration = Duration::from_secs(65);
/// Shorter node expiries log nodes out right after they log in (Tailscale's own minimum
/// key expiry is a day); 0 stays "never".
const MIN_NODE_EXPIRY: Duration = Duration::from_secs(3600);
/// Longer durations overflow Go's `time.Duration` (292 years) in spirit, and Headscale
/// turns an unparseable `node.expiry` into "never expires": keep well below.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Checks a managed spec and the DNS it will be rendered with. `Ok` carries the
/// target version to render for; `Err` lists every problem found, not just the first.
pub fn validate(spec: &ManagedSpec, dns: &DnsInput) -> Result<Target, Vec<Problem>> {
    let mut problems = Vec::new();
    let target = check_version(&spec.version, &mut problems);
    if spec.replicas != 1 {
        problems.push(Problem::new(
            reason::INVALID_REPLICAS,
            format!(
                "replicas is {}: Headscale cannot share its database: replicas must be 1",
                spec.replicas
            ),
        ));
    }
    let host = check_server_url(&spec.server_url, &mut problems);
    check_prefixes(&spec.prefixes, &mut problems);
    check_derp(&spec.derp, &mut problems);
    check_durations(spec, &mut problems);
    check_database(spec, &mut problems);
    if let Some(oidc) = &spec.oidc {
        check_oidc(oidc, &mut problems);
    }
    check_logging(spec, &mut problems);
    check_image(&spec.image, &mut problems);
    if let Some(resources) = &spec.pod.resources {
        check_resources(resources, &mut problems);
    }
    check_dns(dns, host.as_deref(), &mut problems);
    match target {
        Some(target) if problems.is_empty() => Ok(target),
        _ => Err(problems),
    }
}

/// Checks only the DNS settings, against the spec's server URL: the DNS problems
/// [`validate`] would report. Used to tell a refused DnsConfig (the server keeps its
/// last good DNS) from a refused server spec.
pub fn validate_dns(spec: &ManagedSpec, dns: &DnsInput) -> Vec<Problem> {
    let host = check_server_url(&spec.server_url, &mut Vec::new());
    let mut problems = Vec::new();
    check_dns(dns, host.as_deref(), &mut problems);
    problems
}

/// The server URL's host name (lowercase, no port or brackets), when the URL is valid.
pub fn server_host(spec: &ManagedSpec) -> Option<String> {
    check_server_url(&spec.server_url, &mut Vec::new())
}

fn supported_list() -> String {
    let names: Vec<String> = SUPPORTED_MINORS.iter().map(|m| format!("0.{m}.x")).collect();
    names.join(" and ")
}

fn check_version(version: &str, problems: &mut Vec<Problem>) -> Option<Target> {
    let parsed = version
        .strip_prefix('v')
        .unwrap_or(version)
        .split_once('.')
        .and_then(|(major, rest)| Some((major, rest.split_once('.')?)))
        .and_then(|(major, (minor, patch))| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(major) || !digits(minor) || !digits(patch) {
                return None;
            }
            let n = |s: &str| s.parse::<u32>().ok();
            Some((n(major)?, n(minor)?, n(patch)?))
        });
    match parsed {
        Some((0, minor, patch)) if SUPPORTED_MINORS.contains(&minor) => Some(Target { minor, patch }),
        Some(_) => {
            problems.push(Problem::new(
                reason::UNSUPPORTED_VERSION,
                format!(
                    "version {version} is not supported in managed mode: the operator renders \
                     Headscale's configuration for {} only (older releases can be governed in \
                     external mode)",
                    supported_list()
                ),
            ));
            None
        }
        None => {
            problems.push(Problem::new(
                reason::UNSUPPORTED_VERSION,
                format!(
                    "version {version:?} is not a Headscale release number such as 0.29.2; \
                     managed mode runs {}",
                    supported_list()
                ),
            ));
            None
        }
    }
}

/// Returns the host name (lowercase, without brackets or port) when the URL is fine.
fn check_server_url(raw: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let bad = |why: &str, problems: &mut Vec<Problem>| {
        problems.push(Problem::new(
            reason::INVALID_SERVER_URL,
            format!("serverUrl {raw:?} {why}"),
        ));
        None
    };
    // Headscale's own check is this literal, case-sensitive prefix test.
    if !raw.starts_with("http://") && !raw.starts_with("https://") {
        return bad(
            "must start with http:// or https:// (lowercase), e.g. https://headscale.example.com",
            problems,
        );
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters", problems);
    }
    // Headscale gets the text as written, while names here (the base-domain check) are
    // compared in the punycode form the URL parser makes of them: insist on that form.
    if !raw.is_ascii() || raw.contains('%') {
        return bad(
            "must have a plain ASCII host, without %-escapes: write an internationalized name \
             in its punycode (xn--) form, e.g. https://xn--bcher-kva.example for bücher.example",
            problems,
        );
    }
    let after_scheme = raw.split_once("://").map_or("", |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let port = match host_port.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").map(|(_, port)| port),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    };
    if let Some(port) = port.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !(port.len() <= 5 && port.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)))
    {
        return bad("has a port outside 1-65535", problems);
    }
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return bad(&format!("is not a valid URL ({e})"), problems),
    };
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return bad("has no host", problems);
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry credentials (user:password@)", problems);
    }
    if url.query().is_some() || url.fragment().is_some() || raw.contains(['?', '#']) {
        return bad("must not have a query (?...) or a fragment (#...)", problems);
    }
    // The parser makes "https://host" and "https://host/" alike; Headscale does not: it
    // appends "/machine/..." to the text, and "//machine/..." is a 404.
    if url.path() != "/" || after_scheme.contains('/') {
        return bad(
            "must not have a path or a trailing slash (write https://headscale.example.com): \
             Headscale serves at the root of its host and builds its paths from this URL",
            problems,
        );
    }
    if host.ends_with('.') {
        // `example.com.` and `example.com` are one name, but Headscale's own base-domain
        // check (and any comparison of names) would take them for two.
        return bad(
            "must not end its host name with a dot (write https://headscale.example.com)",
            problems,
        );
    }
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

fn check_prefixes(prefixes: &PrefixesSpec, problems: &mut Vec<Problem>) {
    if prefixes.v4.is_empty() && prefixes.v6.is_empty() {
        problems.push(Problem::new(
            reason::INVALID_PREFIX,
            "prefixes: at least one of v4 or v6 must be set (Headscale needs a range to give \
             nodes addresses from)",
        ));
    }
    let v4_range = (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10);
    let v6_range = (
        IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0)),
        48,
    );
    // Headscale never hands out a prefix's first and last address (network and
    // broadcast), so a longer prefix leaves no address for any node.
    for (field, value, range, text, longest) in [
        ("v4", &prefixes.v4, v4_range, "100.64.0.0/10", 30),
        ("v6", &prefixes.v6, v6_range, "fd7a:115c:a1e0::/48", 126),
    ] {
        if value.is_empty() {
            continue;
        }
        let why = match parse_cidr(value) {
            None => format!("is not a network in CIDR notation (e.g. {text})"),
            Some((addr, len)) if mask(addr, len) != addr => format!(
                "has host bits set: write the network address, {}/{len}",
                mask(addr, len)
            ),
            Some((addr, len)) if len < range.1 || mask(addr, range.1) != range.0 => format!(
                "lies outside {text}, the only range Tailscale clients work with; use {text} \
                 or a part of it"
            ),
            Some((_, len)) if len > longest => format!(
                "is a /{len}: Headscale gives no node a range's first or last address, so it \
                 leaves none for nodes; use a /{longest} or larger network, e.g. {text}"
            ),
            Some(_) => continue,
        };
        problems.push(Problem::new(
            reason::INVALID_PREFIX,
            format!("prefixes.{field} {value:?} {why}"),
        ));
    }
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

fn check_derp(derp: &DerpSpec, problems: &mut Vec<Problem>) {
    if !derp.embedded && derp.urls.is_empty() {
        problems.push(Problem::new(
            reason::DERP_MAP_EMPTY,
            "derp has no relay: Headscale refuses to start with an empty DERP map; keep \
             derp.embedded: true (the default), or list a DERP map in derp.urls",
        ));
    }
    for url in &derp.urls {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        if !ok {
            problems.push(Problem::new(
                reason::INVALID_DERP,
                format!("derp.urls entry {url:?} is not an absolute http:// or https:// URL"),
            ));
        }
    }
    for (field, value, v4) in [("ipv4", &derp.ipv4, true), ("ipv6", &derp.ipv6, false)] {
        if let Some(value) = value {
            let ok = match value.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => v4,
                Ok(IpAddr::V6(_)) => !v4,
                Err(_) => false,
            };
            if !ok {
                problems.push(Problem::new(
                    reason::INVALID_DERP,
                    format!(
                        "derp.{field} {value:?} is not an {} address",
                        field.to_uppercase()
                    ),
                ));
            }
        }
    }
}

fn check_durations(spec: &ManagedSpec, problems: &mut Vec<Problem>) {
    let mut duration = |field: &str, value: &str| -> Option<Duration> {
        match parse_duration(value) {
            Some(d) if d <= MAX_DURATION => Some(d),
            Some(_) => {
                problems.push(Problem::new(
                    reason::INVALID_DURATION,
                    format!("{field} {value:?} is longer than 100 years"),
                ));
                None
            }
            None => {
                problems.push(Problem::new(
                    reason::INVALID_DURATION,
                    format!(
                        "{field} {value:?} is not a duration such as 180d, 12h or 1h30m \
                         (units ms, s, m, h, d, w; 0 for none)"
                    ),
                ));
                None
            }
        }
    };
    let expiry = duration("nodeExpiry", &spec.node_expiry);
    let ephemeral = duration("ephemeralInactivityTimeout", &spec.ephemeral_inactivity_timeout);
    if let Some(d) = expiry
        && !d.is_zero()
        && d < MIN_NODE_EXPIRY
    {
        problems.push(Problem::new(
            reason::INVALID_DURATION,
            format!(
                "nodeExpiry {:?} is shorter than 1h: nodes would be logged out right after they \
                 log in; use e.g. 180d, or 0 for never",
                spec.node_expiry
            ),
        ));
    }
    if let Some(d) = ephemeral
        && d <= MIN_EPHEMERAL_TIMEOUT
    {
        problems.push(Problem::new(
            reason::INVALID_DURATION,
            format!(
                "ephemeralInactivityTimeout {:?} is too short: Headscale requires more than 65s \
                 (clients send a keepalive every 60s), e.g. 30m",
                spec.ephemeral_inactivity_timeout
            ),
        ));
    }
}

fn check_database(spec: &ManagedSpec, problems: &mut Vec<Problem>) {
    let db = &spec.database;
    match (db.type_, &db.postgres) {
        (DatabaseType::Postgres, None) => problems.push(Problem::new(
            reason::INVALID_DATABASE,
            "database.type is Postgres but database.postgres is not set (host, database, user, \
             passwordSecretRef)",
        )),
        (DatabaseType::Postgres, Some(pg)) => {
            // Headscale builds a libpq key=value string without quoting.
            for (field, value) in [("host", &pg.host), ("database", &pg.database), ("user", &pg.user)] {
                if value.is_empty()
                    || value
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "'\\=".contains(c))
                {
                    problems.push(Problem::new(
                        reason::INVALID_DATABASE,
                        format!(
                            "database.postgres.{field} {value:?} must be non-empty without spaces, \
                             quotes, backslashes or '=' (Headscale passes it to the driver unquoted)"
                        ),
                    ));
                }
            }
            if !(1..=65535).contains(&pg.port) {
                problems.push(Problem::new(
                    reason::INVALID_DATABASE,
                    format!("database.postgres.port {} is outside 1-65535", pg.port),
                ));
            }
            if !["disable", "require", "verify-ca", "verify-full"].contains(&pg.ssl_mode.as_str()) {
                problems.push(Problem::new(
                    reason::INVALID_DATABASE,
                    format!(
                        "database.postgres.sslMode {:?} must be disable, require, verify-ca or verify-full",
                        pg.ssl_mode
                    ),
                ));
            }
        }
        (DatabaseType::Sqlite, _) => {}
    }
}

fn check_oidc(oidc: &OidcSpec, problems: &mut Vec<Problem>) {
    let issuer_ok = (oidc.issuer.starts_with("http://") || oidc.issuer.starts_with("https://"))
        && !oidc.issuer.chars().any(char::is_whitespace)
        && Url::parse(&oidc.issuer).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
    if !issuer_ok {
        problems.push(Problem::new(
            reason::INVALID_OIDC,
            format!(
                "oidc.issuer {:?} must be an absolute http:// or https:// URL of the identity \
                 provider, e.g. https://accounts.google.com",
                oidc.issuer
            ),
        ));
    }
    if oidc.client_id.trim().is_empty() {
        problems.push(Problem::new(
            reason::INVALID_OIDC,
            "oidc.clientId must not be empty",
        ));
    }
}

fn check_logging(spec: &ManagedSpec, problems: &mut Vec<Problem>) {
    let log = &spec.logging;
    if !["trace", "debug", "info", "warn", "error"].contains(&log.level.as_str()) {
        problems.push(Problem::new(
            reason::INVALID_LOGGING,
            format!(
                "logging.level {:?} must be trace, debug, info, warn or error",
                log.level
            ),
        ));
    }
    if !["json", "text"].contains(&log.format.as_str()) {
        problems.push(Problem::new(
            reason::INVALID_LOGGING,
            format!("logging.format {:?} must be json or text", log.format),
        ));
    }
}

/// The image is composed as `{image}:{version}`: a tag or digest of its own would make
/// a reference no registry serves (`repo@sha256:...:0.29.2`), an empty one `:0.29.2`.
fn check_image(image: &str, problems: &mut Vec<Problem>) {
    // The last path component: a ':' before it is a registry port, not a tag.
    let last = image.rsplit('/').next().unwrap_or_default();
    let why = if image.is_empty() {
        "must name a repository, e.g. docker.io/headscale/headscale (the tag comes from version)"
    } else if image.contains('@') || last.contains(':') {
        "must be a repository without a tag or digest, e.g. docker.io/headscale/headscale: the \
         operator appends version as the tag"
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain spaces or control characters"
    } else {
        return;
    };
    problems.push(Problem::new(
        reason::INVALID_SPEC,
        format!("image {image:?} {why}"),
    ));
}

/// Every request and limit must be a Kubernetes quantity: the API server cannot decode
/// one that is not, and answers with a server error the operator would retry forever.
fn check_resources(resources: &ResourceRequirements, problems: &mut Vec<Problem>) {
    for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
        for (name, quantity) in map.iter().flatten() {
            let why = match parse_quantity(&quantity.0) {
                None => "is not a Kubernetes quantity such as 500m, 2, 128Mi or 1Gi",
                Some(true) => "must not be negative",
                Some(false) => continue,
            };
            problems.push(Problem::new(
                reason::INVALID_SPEC,
                format!("spec.managed.pod.resources.{kind}.{name} {:?} {why}", quantity.0),
            ));
        }
    }
}

/// Kubernetes' quantity syntax (`k8s.io/apimachinery/pkg/api/resource`): a signed
/// decimal number and a suffix, binary SI (`Ki` .. `Ei`), decimal SI (`m`, ``, `k`,
/// `M` .. `E`) or a decimal exponent (`e3`, `E-2`). `Some(negative)` when it parses.
pub(crate) fn parse_quantity(text: &str) -> Option<bool> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let suffix_ok = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => suffix
            .strip_prefix(['e', 'E'])
            .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())),
    };
    let zero = number.bytes().all(|b| b == b'0' || b == b'.');
    suffix_ok.then_some(negative && !zero)
}

fn check_dns(dns: &DnsInput, server_host: Option<&str>, problems: &mut Vec<Problem>) {
    let base = dns.base_domain.as_deref().filter(|b| !b.is_empty());
    if dns.magic_dns && base.is_none() {
        problems.push(Problem::new(
            reason::MAGIC_DNS_WITHOUT_BASE_DOMAIN,
            "MagicDNS is on but there is no base domain: set baseDomain (e.g. \
             tailnet.example.com), or turn magicDns off",
        ));
    }
    if dns.override_local_dns && dns.global_nameservers.is_empty() {
        problems.push(Problem::new(
            reason::OVERRIDE_LOCAL_DNS_WITHOUT_NAMESERVERS,
            "overrideLocalDns is on but there is no global nameserver: add one to \
             nameservers.global (e.g. your resolver's address), or turn overrideLocalDns off",
        ));
    }
    if let Some(base) = base {
        if !is_dns_name(base) {
            problems.push(Problem::new(
                reason::INVALID_DNS,
                format!(
                    "baseDomain {base:?} is not a DNS name (lowercase labels of letters, digits \
                     and '-', separated by dots, no trailing dot)"
                ),
            ));
        } else if let Some(host) = server_host
            && (host == base || host.ends_with(&format!(".{base}")))
        {
            let how = if host == base {
                "is"
            } else {
                "is a parent domain of"
            };
            problems.push(Problem::new(
                reason::BASE_DOMAIN_CONTAINS_SERVER,
                format!(
                    "baseDomain {base:?} {how} the server URL's host {host:?}: MagicDNS would \
                         take over that name and clients could no longer reach the server \
                         (Headscale refuses to start); use a domain the server's host is not \
                         under, e.g. a subdomain of it or a name under .internal"
                ),
            ));
        }
    }
    for ns in &dns.global_nameservers {
        if !is_nameserver(ns) {
            problems.push(Problem::new(
                reason::INVALID_DNS,
                format!("nameservers.global entry {ns:?} is neither an IP address nor an https:// DoH URL"),
            ));
        }
    }
    for (domain, servers) in &dns.split {
        if !is_dns_name(domain) {
            problems.push(Problem::new(
                reason::INVALID_DNS,
                format!("nameservers.split domain {domain:?} is not a DNS name"),
            ));
        }
        for ns in servers.iter().filter(|ns| !is_nameserver(ns)) {
            problems.push(Problem::new(
                reason::INVALID_DNS,
                format!(
                    "nameservers.split[{domain:?}] entry {ns:?} is neither an IP address nor an \
                     https:// DoH URL"
                ),
            ));
        }
    }
    for domain in dns.search_domains.iter().filter(|d| !is_dns_name(d)) {
        problems.push(Problem::new(
            reason::INVALID_DNS,
            format!("searchDomains entry {domain:?} is not a DNS name"),
        ));
    }
}

/// Lowercase DNS name: labels of `[a-z0-9-]`, 1-63 bytes, not starting or ending in
/// `-`; at most 253 bytes; no trailing dot.
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_nameserver(ns: &str) -> bool {
    ns.parse::<IpAddr>().is_ok()
        || (ns.starts_with("https://")
            && !ns.chars().any(char::is_whitespace)
            && Url::parse(ns).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty())))
}

/// A duration as the CRDs write it: Go's units plus Headscale's `d` and `w`, e.g.
/// `180d`, `1h30m`, `500ms`, `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len): (u64, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let secs = match rest.chars().next()? {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return None,
            };
            (secs * 1000, 1)
        };
        total = total.checked_add(Duration::from_millis(n.checked_mul(unit_ms)?))?;
        rest = &rest[len..];
    }
    Some(total)
}

/// A duration both of Headscale's parsers read (Go's `time.ParseDuration` for the
/// ephemeral timeout, Prometheus' `model.ParseDuration` for node expiry): hours,
/// minutes, seconds and milliseconds, largest first, zero parts left out (`4320h`,
/// `30m`, `1m30s`); `0` for zero.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".to_string();
    }
    let ms = d.as_millis();
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A managed spec from JSON, with the schema's defaults (serde's).
    fn spec(extra: serde_json::Value) -> ManagedSpec {
        let mut base = json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn dns_on(base: &str) -> DnsInput {
        DnsInput {
            magic_dns: true,
            base_domain: Some(base.to_string()),
            override_local_dns: true,
            global_nameservers: vec!["10.0.0.53".into()],
            ..DnsInput::safe_default()
        }
    }

    /// The single problem `validate` finds: its reason and message.
    fn refused(spec: &ManagedSpec, dns: &DnsInput) -> Problem {
        let problems = validate(spec, dns).expect_err("should be refused");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems.into_iter().next().unwrap()
    }

    fn assert_refused(p: Problem, reason: &str, words: &[&str]) {
        assert_eq!(p.reason, reason, "{p}");
        // A string continuation without its backslash leaves a run of spaces.
        assert!(!p.message.contains("  "), "stray spaces in {:?}", p.message);
        for w in words {
            assert!(p.message.contains(w), "{:?} lacks {w:?}", p.message);
        }
    }

    #[test]
    fn defaults_are_valid_and_target_the_version() {
        let t = validate(&spec(json!({})), &DnsInput::safe_default()).unwrap();
        assert_eq!(
            (t.minor(), t.version(), t.reported_version()),
            (29, "0.29.2".into(), "v0.29.2".into())
        );
        let t = validate(&spec(json!({"version": "v0.28.0"})), &DnsInput::safe_default()).unwrap();
        assert_eq!(t.version(), "0.28.0");
        validate(&spec(json!({})), &dns_on("tailnet.example.net")).unwrap();
    }

    #[test]
    fn unsupported_versions_are_refused_naming_the_range() {
        for v in ["0.27.1", "0.30.0", "0.26.0", "1.29.0"] {
            let p = refused(&spec(json!({"version": v})), &DnsInput::safe_default());
            assert_refused(
                p,
                "UnsupportedVersion",
                &[v, "0.28.x and 0.29.x", "external mode"],
            );
        }
        for v in ["latest", "0.29", "0.29.2-beta.1", ""] {
            let p = refused(&spec(json!({"version": v})), &DnsInput::safe_default());
            assert_refused(
                p,
                "UnsupportedVersion",
                &["not a Headscale release number", "0.28.x and 0.29.x"],
            );
        }
    }

    #[test]
    fn two_replicas_are_refused() {
        let p = refused(&spec(json!({"replicas": 2})), &DnsInput::safe_default());
        assert_refused(
            p,
            "InvalidReplicas",
            &["cannot share its database", "replicas must be 1"],
        );
    }

    #[test]
    fn invalid_server_urls_are_refused() {
        for (url, why) in [
            ("hs.example.com", "must start with http:// or https://"),
            ("HTTPS://hs.example.com", "must start with http:// or https://"),
            ("ftp://hs.example.com", "must start with http:// or https://"),
            ("https://", "is not a valid URL"),
            ("https://hs.example.com/headscale", "must not have a path"),
            (
                "https://HEADSCALE.example.com.",
                "must not end its host name with a dot",
            ),
            ("https://u:p@hs.example.com", "must not carry credentials"),
            ("https://hs.example.com/?a=b", "must not have a query"),
            ("https://hs.example.com:99999", "port outside 1-65535"),
            ("https://hs.example.com:0", "port outside 1-65535"),
            ("https://[::1]:65536", "port outside 1-65535"),
            ("https://hs example.com", "spaces"),
            // Headscale appends "/machine/..." to the text: "//machine/..." is a 404.
            ("https://hs.example.com/", "trailing slash"),
            ("https://hs.example.com:8443/", "trailing slash"),
            // Headscale gets the raw text, our base-domain check the punycode.
            ("https://bücher.example", "punycode (xn--)"),
            ("https://b%C3%BCcher.example", "punycode (xn--)"),
        ] {
            let p = refused(&spec(json!({"serverUrl": url})), &DnsInput::safe_default());
            assert_refused(p, "InvalidServerUrl", &[why]);
        }
        for ok in [
            "http://127.0.0.1:8080",
            "https://hs.example.com:65535",
            "https://xn--bcher-kva.example",
            "https://[::1]:443",
        ] {
            validate(&spec(json!({"serverUrl": ok})), &DnsInput::safe_default()).unwrap();
        }
    }

    #[test]
    fn base_domain_containing_the_server_host_is_refused() {
        // Headscale's isSafeServerURL: the same host, or a parent domain of it.
        for (url, base, how) in [
            (
                "https://hs.example.com",
                "hs.example.com",
                "is the server URL's host",
            ),
            ("https://hs.example.com", "example.com", "is a parent domain of"),
            (
                "https://a.b.example.com",
                "b.example.com",
                "is a parent domain of",
            ),
            ("https://HS.Example.com", "example.com", "is a parent domain of"),
            // Headscale misses it when the URL has a port; we do not.
            (
                "https://hs.example.com:8443",
                "example.com",
                "is a parent domain of",
            ),
        ] {
            let p = refused(&spec(json!({"serverUrl": url})), &dns_on(base));
            assert_refused(
                p,
                "BaseDomainContainsServer",
                &[base, how, "MagicDNS would take over"],
            );
        }
        // A subdomain of the server's host, a sibling, or an unrelated domain is fine.
        for base in [
            "ts.hs.example.com",
            "tailnet.example.net",
            "xample.com",
            "internal",
        ] {
            validate(&spec(json!({})), &dns_on(base)).unwrap();
        }
    }

    #[test]
    fn magic_dns_without_base_domain_is_refused() {
        let dns = DnsInput {
            base_domain: None,
            ..dns_on("x")
        };
        let p = refused(&spec(json!({})), &dns);
        assert_refused(
            p,
            "MagicDnsWithoutBaseDomain",
            &["set baseDomain", "magicDns off"],
        );
        let dns = DnsInput {
            base_domain: Some(String::new()),
            ..dns_on("x")
        };
        assert_eq!(
            refused(&spec(json!({})), &dns).reason,
            "MagicDnsWithoutBaseDomain"
        );
    }

    #[test]
    fn override_local_dns_without_nameservers_is_refused() {
        let dns = DnsInput {
            global_nameservers: vec![],
            ..dns_on("tailnet.example.net")
        };
        let p = refused(&spec(json!({})), &dns);
        assert_refused(
            p,
            "OverrideLocalDnsWithoutNameservers",
            &["nameservers.global", "overrideLocalDns off"],
        );
    }

    #[test]
    fn bad_dns_names_and_nameservers_are_refused() {
        let mut dns = dns_on("Tailnet.Example.net.");
        assert_refused(
            refused(&spec(json!({})), &dns),
            "InvalidDns",
            &["baseDomain", "not a DNS name"],
        );
        dns = dns_on("tailnet.example.net");
        dns.global_nameservers = vec!["dns.google".into()];
        assert_refused(
            refused(&spec(json!({})), &dns),
            "InvalidDns",
            &["dns.google", "DoH"],
        );
        dns = dns_on("tailnet.example.net");
        dns.split
            .insert("corp.example.com".into(), vec!["10.1.1.1".into(), "nope".into()]);
        assert_refused(
            refused(&spec(json!({})), &dns),
            "InvalidDns",
            &["corp.example.com", "nope"],
        );
        dns = dns_on("tailnet.example.net");
        dns.search_domains = vec!["a..b".into()];
        assert_refused(refused(&spec(json!({})), &dns), "InvalidDns", &["a..b"]);
        dns = dns_on("tailnet.example.net");
        dns.global_nameservers = vec![
            "1.1.1.1".into(),
            "2606:4700:4700::1111".into(),
            "https://dns.example/dns-query".into(),
        ];
        validate(&spec(json!({})), &dns).unwrap();
    }

    #[test]
    fn prefixes_outside_tailscale_ranges_are_refused() {
        for (prefixes, words) in [
            (
                json!({"v4": "10.0.0.0/8"}),
                vec!["prefixes.v4", "outside 100.64.0.0/10"],
            ),
            (json!({"v4": "100.0.0.0/8"}), vec!["outside 100.64.0.0/10"]),
            (json!({"v4": "100.64.0.1/24"}), vec!["host bits", "100.64.0.0/24"]),
            (
                json!({"v4": "fd7a:115c:a1e0::/48"}),
                vec!["outside 100.64.0.0/10"],
            ),
            (json!({"v4": "100.64.0.0"}), vec!["CIDR"]),
            (
                json!({"v6": "fd00::/8"}),
                vec!["prefixes.v6", "outside fd7a:115c:a1e0::/48"],
            ),
            (json!({"v4": "", "v6": ""}), vec!["at least one of v4 or v6"]),
            // Headscale never gives out the first and last address: nothing is left.
            (
                json!({"v4": "100.64.0.0/32"}),
                vec!["prefixes.v4", "/32", "/30 or larger"],
            ),
            (json!({"v4": "100.64.0.0/31"}), vec!["/31", "/30 or larger"]),
            (
                json!({"v6": "fd7a:115c:a1e0::/128"}),
                vec!["prefixes.v6", "/128", "/126 or larger"],
            ),
            (json!({"v6": "fd7a:115c:a1e0::/127"}), vec!["/127"]),
        ] {
            let p = refused(&spec(json!({"prefixes": prefixes})), &DnsInput::safe_default());
            assert_refused(p, "InvalidPrefix", &words);
        }
        for ok in [
            json!({"v4": "100.64.0.0/24"}),
            json!({"v4": "100.64.0.0/30", "v6": "fd7a:115c:a1e0::/126"}),
            json!({"v4": "", "v6": "fd7a:115c:a1e0:ab::/64"}),
            json!({"v6": ""}),
        ] {
            validate(&spec(json!({"prefixes": ok})), &DnsInput::safe_default()).unwrap();
        }
    }

    #[test]
    fn images_with_a_tag_or_digest_or_none_are_refused() {
        for (image, why) in [
            ("", "must name a repository"),
            ("docker.io/headscale/headscale:0.29.2", "without a tag or digest"),
            ("repo@sha256:abc", "without a tag or digest"),
            ("registry.local:5000/headscale:latest", "without a tag or digest"),
            ("headscale ", "spaces"),
        ] {
            let p = refused(&spec(json!({"image": image})), &DnsInput::safe_default());
            assert_refused(p, "InvalidSpec", &["image", why]);
        }
        for ok in [
            "ghcr.io/juanfont/headscale",
            "registry.local:5000/mirror/headscale",
        ] {
            validate(&spec(json!({"image": ok})), &DnsInput::safe_default()).unwrap();
        }
    }

    #[test]
    fn resource_quantities_must_parse() {
        for (resources, field, why) in [
            (
                json!({"limits": {"cpu": "lots"}}),
                "spec.managed.pod.resources.limits.cpu",
                "not a Kubernetes quantity",
            ),
            (
                json!({"requests": {"memory": "128mb"}}),
                "spec.managed.pod.resources.requests.memory",
                "not a Kubernetes quantity",
            ),
            (
                json!({"requests": {"cpu": "-1"}}),
                "spec.managed.pod.resources.requests.cpu",
                "negative",
            ),
        ] {
            let p = refused(
                &spec(json!({"pod": {"resources": resources}})),
                &DnsInput::safe_default(),
            );
            assert_refused(p, "InvalidSpec", &[field, why]);
        }
        let ok = json!({"requests": {"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1.5G"},
                        "limits": {"cpu": "2", "memory": "1e9", "nvidia.com/gpu": "+1"}});
        validate(
            &spec(json!({"pod": {"resources": ok}})),
            &DnsInput::safe_default(),
        )
        .unwrap();
        for good in ["0", "1", ".5", "5.", "1.5Gi", "100m", "1E3", "2e-3", "1Ei", "-0"] {
            assert_eq!(parse_quantity(good), Some(false), "{good}");
        }
        for bad in [
            "", "+", ".", "1..2", "1ki", "1 Gi", "Gi", "1e", "1e1.5", "1Mi2", "0x10",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn derp_with_nothing_is_refused() {
        let p = refused(
            &spec(json!({"derp": {"embedded": false}})),
            &DnsInput::safe_default(),
        );
        assert_refused(
            p,
            "DerpMapEmpty",
            &["empty DERP map", "derp.embedded: true", "derp.urls"],
        );
        let p = refused(
            &spec(json!({"derp": {"urls": ["controlplane.tailscale.com"]}})),
            &DnsInput::safe_default(),
        );
        assert_refused(p, "InvalidDerp", &["controlplane.tailscale.com"]);
        let p = refused(&spec(json!({"derp": {"ipv4": "::1"}})), &DnsInput::safe_default());
        assert_refused(p, "InvalidDerp", &["derp.ipv4", "IPV4"]);
        let only_urls = json!({"derp": {"embedded": false, "urls": ["https://controlplane.tailscale.com/derpmap/default"]}});
        validate(&spec(only_urls), &DnsInput::safe_default()).unwrap();
    }

    #[test]
    fn durations_are_checked() {
        let p = refused(
            &spec(json!({"ephemeralInactivityTimeout": "60s"})),
            &DnsInput::safe_default(),
        );
        assert_refused(p, "InvalidDuration", &["60s", "more than 65s"]);
        let p = refused(
            &spec(json!({"ephemeralInactivityTimeout": "65s"})),
            &DnsInput::safe_default(),
        );
        assert_refused(p, "InvalidDuration", &["more than 65s"]);
        let p = refused(&spec(json!({"nodeExpiry": "soon"})), &DnsInput::safe_default());
        assert_refused(p, "InvalidDuration", &["nodeExpiry", "not a duration"]);
        let p = refused(&spec(json!({"nodeExpiry": "1ms"})), &DnsInput::safe_default());
        assert_refused(p, "InvalidDuration", &["nodeExpiry", "shorter than 1h"]);
        assert!(validate(&spec(json!({"nodeExpiry": "1h"})), &DnsInput::safe_default()).is_ok());
        let p = refused(&spec(json!({"nodeExpiry": "99999w"})), &DnsInput::safe_default());
        assert_refused(p, "InvalidDuration", &["longer than 100 years"]);
        validate(
            &spec(json!({"ephemeralInactivityTimeout": "66s", "nodeExpiry": "0"})),
            &DnsInput::safe_default(),
        )
        .unwrap();
    }

    #[test]
    fn postgres_and_oidc_problems_are_refused() {
        let p = refused(
            &spec(json!({"database": {"type": "Postgres"}})),
            &DnsInput::safe_default(),
        );
        assert_refused(p, "InvalidDatabase", &["database.postgres is not set"]);
        let pg = json!({"type": "Postgres", "postgres": {"host": "db", "database": "hs db", "user": "hs",
                        "passwordSecretRef": {"name": "pg", "key": "password"}}});
        let p = refused(&spec(json!({"database": pg})), &DnsInput::safe_default());
        assert_refused(p, "InvalidDatabase", &["database.postgres.database", "unquoted"]);
        let oidc = json!({"issuer": "accounts.example.com", "clientId": "hs", "clientSecretRef": {"name": "o", "key": "s"}});
        let p = refused(&spec(json!({"oidc": oidc})), &DnsInput::safe_default());
        assert_refused(p, "InvalidOidc", &["oidc.issuer", "accounts.example.com"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = validate(
            &spec(json!({"version": "0.27.1", "replicas": 3, "derp": {"embedded": false}})),
            &DnsInput {
                global_nameservers: vec![],
                ..dns_on("example.com")
            },
        )
        .unwrap_err();
        let reasons: Vec<&str> = problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                "UnsupportedVersion",
                "InvalidReplicas",
                "DerpMapEmpty",
                "OverrideLocalDnsWithoutNameservers",
                "BaseDomainContainsServer"
            ]
        );
    }

    #[test]
    fn durations_parse_and_format_for_go() {
        for (text, secs, go) in [
            ("0", 0, "0"),
            ("180d", 180 * 86_400, "4320h"),
            ("30m", 1800, "30m"),
            ("90s", 90, "1m30s"),
            ("1w1h", 608_400, "169h"),
            ("1h30m", 5400, "1h30m"),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(format_duration(d), go, "{text}");
        }
        assert_eq!(format_duration(parse_duration("1500ms").unwrap()), "1s500ms");
        for bad in ["", "1", "h", "1x", "-1h", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_schema_admits_exactly_the_supported_versions() {
        // The CRD's CEL rule and SUPPORTED_MINORS must agree.
        let crd =
            serde_json::to_string(&<crate::api::HeadscaleServer as kube::CustomResourceExt>::crd()).unwrap();
        let minors: Vec<String> = SUPPORTED_MINORS.iter().map(u32::to_string).collect();
        assert!(
            crd.contains(&format!("0\\\\\\\\.({})\\\\\\\\.", minors.join("|"))),
            "the version rule in the CRD is out of date"
        );
    }
}
