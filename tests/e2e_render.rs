//! The rendered configuration, proven with the real Headscale binaries (0.28.0 and
//! 0.29.2, from `e2e/tools.sh env`): validated and rendered with `Layout::local` into a
//! scratch directory, generated noise and DERP keys written with mode 0400, then
//! `headscale -c <that file> serve` must become healthy, report the target version,
//! serve metrics and open its socket with mode 0770. Every database mode the machine
//! hosts: SQLite always; Postgres with the server `e2e/tools.sh` provides
//! (`HSOP_POSTGRES_BIN`), its password only in `HEADSCALE_DATABASE_POSTGRES_PASS`.
//!
//! The mirror: specs our validation refuses, rendered anyway, are refused by the real
//! binary too (it exits non-zero), so the refusal comes from us first, with a reason.
//!
//! Needs only the tools, not the control plane: `e2e/test.sh` runs it with
//! `HSOP_E2E_DIR` as scratch space; by hand:
//!   eval "$(e2e/tools.sh env)"; HSOP_E2E_DIR=$(mktemp -d) cargo test --test e2e_render

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headscale_operator::api::server::ManagedSpec;
use headscale_operator::controller::dns::build::default_input;
use headscale_operator::render::{
    DnsInput, Layout, POSTGRES_PASSWORD_ENV, Target, generate_private_key, render_config, validate,
};
use serde_json::{Value, json};
use support::{KubeletDir, headscale_bin, scratch_dir};

const VERSIONS: [&str; 2] = ["0.28.0", "0.29.2"];
const START_TIMEOUT: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------
// The proofs

/// What a server without a DnsConfig gets: no DNS settings and the records file
/// holding `[]` (as the operator writes it).
#[test]
fn minimal_sqlite_config_runs_on_every_version() {
    each_version(|version| {
        let run = Run::new("min");
        let spec = run.spec(version, json!({}));
        let mut records = KubeletDir::new(&run.layout.dns_dir);
        records.write(&run.layout.extra_records, "[]\n");
        run.prove(&spec, &default_input(&run.layout), &[]);
    });
}

/// Extra records change without a restart: the records file is projected the way the
/// kubelet projects a ConfigMap volume (a timestamped directory behind the `..data`
/// symlink, swapped atomically, the old one removed), and what Headscale serves is read
/// from `/debug/config` on its metrics listener (loopback only): its
/// `TailcfgDNSConfig.ExtraRecords`, which is the DNS config every client's map is
/// cloned from (`mapper.generateDNSConfig`). A change is served by the same process;
/// an empty (0-byte) file is ignored by Headscale, and `[]` clears the records.
#[test]
fn extra_records_change_without_a_restart_on_every_version() {
    each_version(|version| {
        let run = Run::new("records");
        let spec = run.spec(version, json!({}));
        let dns = DnsInput {
            magic_dns: true,
            base_domain: Some("tailnet.example.net".into()),
            override_local_dns: true,
            global_nameservers: vec!["10.0.0.53".into()],
            ..default_input(&run.layout)
        };
        let file = &run.layout.extra_records;
        let mut records = KubeletDir::new(&run.layout.dns_dir);
        records.write(
            file,
            r#"[{"name":"grafana.tailnet.example.net","type":"A","value":"100.64.0.10"}]"#,
        );
        let mut hs = run.prove_running(&spec, &dns, &[]);
        let pid = hs.child.id();
        let metrics = run.layout.metrics_port;
        served(metrics, &["grafana.tailnet.example.net A 100.64.0.10"], &hs);

        let t0 = Instant::now();
        records.write(
            file,
            r#"[{"name":"grafana.tailnet.example.net","type":"A","value":"100.64.0.11"},
                {"name":"db.tailnet.example.net","type":"AAAA","value":"fd7a:115c:a1e0::5"}]"#,
        );
        served(
            metrics,
            &[
                "db.tailnet.example.net AAAA fd7a:115c:a1e0::5",
                "grafana.tailnet.example.net A 100.64.0.11",
            ],
            &hs,
        );
        eprintln!(
            "headscale {version}: a changed records file served after {:?}",
            t0.elapsed()
        );

        // An empty file is ignored (Headscale takes it for a write in progress) ...
        records.write(file, "");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            served_now(metrics).len(),
            2,
            "headscale {version} applied an empty records file"
        );
        // ... and `[]` removes the last record: what the operator writes for none.
        records.write(file, "[]\n");
        served(metrics, &[], &hs);
        assert!(hs.child.try_wait().unwrap().is_none(), "headscale exited");
        assert_eq!(hs.child.id(), pid, "the same process serves the new records");
    });
}

/// The extra records Headscale serves now, as `name type value`, sorted.
fn served_now(metrics_port: u16) -> Vec<String> {
    let Some((200, body)) = http_get(metrics_port, "/debug/config") else {
        return vec!["(no answer from /debug/config)".into()];
    };
    let config: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut out: Vec<String> = config["TailcfgDNSConfig"]["ExtraRecords"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} {}",
                r["Name"].as_str().unwrap_or(""),
                r["Type"].as_str().unwrap_or(""),
                r["Value"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until Headscale serves exactly `want` (sorted `name type value`).
fn served(metrics_port: u16, want: &[&str], hs: &Headscale) {
    let t0 = Instant::now();
    loop {
        let have = served_now(metrics_port);
        if have == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "headscale serves {have:?}, not {want:?}:\n{}",
            hs.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The example DnsConfig (`examples/dns-config.yaml`), mapped and checked by the DNS
/// controller's own function, starts on every version: Headscale serves its records,
/// resolvers, split DNS and search domain.
#[test]
fn the_example_dnsconfig_as_the_controller_maps_it_runs_on_every_version() {
    let example: Value =
        serde_yaml::from_str(&std::fs::read_to_string("examples/dns-config.yaml").unwrap()).unwrap();
    let dns_spec: headscale_operator::api::DnsConfigSpec =
        serde_json::from_value(example["spec"].clone()).unwrap();
    each_version(|version| {
        let run = Run::new("exdns");
        let spec = run.spec(version, json!({}));
        let candidate = headscale_operator::controller::dns::build::candidate(&dns_spec, &spec, &run.layout)
            .unwrap_or_else(|p| panic!("the example DnsConfig is refused: {p:?}"));
        KubeletDir::new(&run.layout.dns_dir).write(&run.layout.extra_records, &candidate.records);
        let hs = run.prove_running(&spec, &candidate.input, &[]);
        let metrics = run.layout.metrics_port;
        served(
            metrics,
            &[
                "grafana.tailnet.example.com A 100.64.0.10",
                "grafana.tailnet.example.com AAAA fd7a:115c:a1e0::10",
            ],
            &hs,
        );
        let Some((200, body)) = http_get(metrics, "/debug/config") else {
            panic!("no /debug/config from headscale {version}")
        };
        let config: Value = serde_json::from_str(&body).unwrap();
        let served_dns = config["TailcfgDNSConfig"].to_string();
        for want in [
            "10.0.0.53",
            "https://dns.example.com/dns-query",
            "corp.example.com",
            "10.20.0.53",
        ] {
            assert!(
                served_dns.contains(want),
                "headscale {version} does not serve {want}: {served_dns}"
            );
        }
    });
}

/// Everything the renderer can write at once (except DERP map URLs, which would need
/// the internet): DNS with MagicDNS, override, split DNS, search domains and an
/// extra-records file, OIDC with a client secret file, a subset prefix, random
/// allocation, a relay address, custom expiry and ephemeral timeout, text logs.
#[test]
fn full_sqlite_config_with_oidc_and_dns_runs_on_every_version() {
    let (issuer, discoveries) = oidc_discovery_stub();
    each_version(|version| {
        let run = Run::new("full");
        let spec = run.spec(
            version,
            json!({
                "prefixes": {"v4": "100.64.8.0/24", "v6": "fd7a:115c:a1e0:8::/64", "allocation": "Random"},
                "derp": {"region": {"id": 950, "code": "test", "name": "Test relay"}, "ipv4": "127.0.0.1"},
                "oidc": {"issuer": issuer, "clientId": "headscale", "clientSecretRef": {"name": "oidc", "key": "client-secret"},
                         "allowedDomains": ["example.com"], "allowedGroups": ["vpn"]},
                "nodeExpiry": "90d",
                "ephemeralInactivityTimeout": "1h30m",
                "logging": {"level": "debug", "format": "text"},
            }),
        );
        let dns = DnsInput {
            magic_dns: true,
            base_domain: Some("tailnet.example.net".into()),
            override_local_dns: true,
            global_nameservers: vec!["10.0.0.53".into(), "https://dns.example.net/dns-query".into()],
            split: BTreeMap::from([("corp.example.com".into(), vec!["10.1.0.53".into()])]),
            search_domains: vec!["corp.example.com".into()],
            extra_records_path: Some(run.layout.extra_records.clone()),
        };
        std::fs::create_dir_all(&run.layout.dns_dir).unwrap();
        std::fs::write(
            &run.layout.extra_records,
            r#"[{"name": "grafana.tailnet.example.net", "type": "A", "value": "100.64.8.10"}]"#,
        )
        .unwrap();
        write_secret(&run.layout.oidc_client_secret, "not-a-real-client-secret");
        run.prove(&spec, &dns, &[]);
    });
    // Both servers read the issuer from the rendered oidc block and asked it.
    assert!(
        discoveries.load(Ordering::SeqCst) >= VERSIONS.len(),
        "Headscale never fetched the OIDC discovery document"
    );
}

#[test]
fn postgres_config_runs_on_every_version() {
    let Some(pg) = Postgres::start() else {
        // e2e/tools.sh could not provide a PostgreSQL server on this machine (it says
        // why); the SQLite proofs above still ran.
        eprintln!("Postgres not proven: {}", Postgres::unavailable_reason());
        return;
    };
    each_version(|version| {
        let run = Run::new("pg");
        let db = format!("hs_{}", version.replace('.', "_"));
        pg.create_database(&db);
        let spec = run.spec(
            version,
            json!({"database": {"type": "Postgres", "postgres": {
                "host": "127.0.0.1", "port": pg.port, "database": db, "user": Postgres::USER,
                "passwordSecretRef": {"name": "pg", "key": "password"}, "sslMode": "disable"}}}),
        );
        let rendered = run.prove(
            &spec,
            &DnsInput::safe_default(),
            &[(POSTGRES_PASSWORD_ENV, &pg.password)],
        );
        assert!(
            !rendered.contains(&pg.password),
            "the Postgres password is in the config"
        );
        // And without the variable Headscale cannot log in: the password really came
        // from the environment, not from a default.
        let run = Run::new("pgnopw");
        let spec = run.spec(
            version,
            json!({"database": {"type": "Postgres", "postgres": {
                "host": "127.0.0.1", "port": pg.port, "database": db, "user": Postgres::USER,
                "passwordSecretRef": {"name": "pg", "key": "password"}, "sslMode": "disable"}}}),
        );
        let log = run.expect_refusal(
            &spec,
            &DnsInput::safe_default(),
            &run.target(&spec, &DnsInput::safe_default()),
        );
        assert!(log.contains("password") || log.contains("auth"), "{log}");
    });
}

/// Specs our validation refuses, rendered anyway: the real binary refuses them too.
#[test]
fn what_validation_refuses_headscale_refuses_too() {
    each_version(|version| {
        for case in ["base-domain", "magic-dns", "override-dns", "ephemeral", "derp"] {
            let run = Run::new(&format!("bad-{case}"));
            let good = run.spec(version, json!({}));
            let safe = DnsInput::safe_default();
            let target = run.target(&good, &safe);
            let magic = |base: Option<&str>, globals: Vec<String>| DnsInput {
                magic_dns: true,
                base_domain: base.map(str::to_string),
                override_local_dns: true,
                global_nameservers: globals,
                ..DnsInput::safe_default()
            };
            let ns = vec!["10.0.0.53".to_string()];
            let (spec, dns, reason, headscale_says) = match case {
                // No port in the URL: Headscale's own check compares the host with the
                // port attached and would miss it otherwise (ours does not).
                "base-domain" => (
                    run.spec(version, json!({"serverUrl": "http://hs.example.test"})),
                    magic(Some("example.test"), ns),
                    "BaseDomainContainsServer",
                    "server_url cannot be part of base_domain",
                ),
                "magic-dns" => (
                    good.clone(),
                    magic(None, ns),
                    "MagicDnsWithoutBaseDomain",
                    "dns.base_domain must be set when using MagicDNS",
                ),
                "override-dns" => (
                    good.clone(),
                    magic(Some("tailnet.example.net"), vec![]),
                    "OverrideLocalDnsWithoutNameservers",
                    "dns.nameservers.global must be set when dns.override_local_dns is true",
                ),
                "ephemeral" => (
                    run.spec(version, json!({"ephemeralInactivityTimeout": "60s"})),
                    safe.clone(),
                    "InvalidDuration",
                    "is set too low",
                ),
                "derp" => (
                    run.spec(version, json!({"derp": {"embedded": false}})),
                    safe.clone(),
                    "DerpMapEmpty",
                    "initial DERPMap is empty",
                ),
                _ => unreachable!(),
            };
            let problems = validate(&spec, &dns).expect_err(case);
            assert!(
                problems.iter().any(|p| p.reason == reason),
                "{version} {case}: validation gave {problems:?}, not {reason}"
            );
            let log = run.expect_refusal(&spec, &dns, &target);
            assert!(
                log.contains(headscale_says),
                "{version} {case}: Headscale refused, but not with {headscale_says:?}:\n{log}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------
// One Headscale run in its own directory

struct Run {
    dir: PathBuf,
    layout: Layout,
}

impl Run {
    fn new(name: &str) -> Run {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(scratch_dir())
            .expect("tempdir")
            .keep();
        let [http, metrics] = free_ports::<2>(false);
        let [stun] = free_ports::<1>(true);
        let layout = Layout::local(&dir, http, metrics, stun);
        assert!(
            layout.socket.as_os_str().len() < 100,
            "socket path too long for a unix socket: {} (use a shorter HSOP_E2E_DIR)",
            layout.socket.display()
        );
        Run { dir, layout }
    }

    /// A managed spec for `version` served at this run's port, plus `extra` fields.
    fn spec(&self, version: &str, extra: Value) -> ManagedSpec {
        let mut spec =
            json!({"version": version, "serverUrl": format!("http://127.0.0.1:{}", self.layout.http_port)});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    fn target(&self, spec: &ManagedSpec, dns: &DnsInput) -> Target {
        validate(spec, dns).unwrap_or_else(|p| panic!("refused: {p:?}"))
    }

    /// Writes config.yaml and fresh keys (mode 0400) where the layout says.
    fn write(&self, spec: &ManagedSpec, target: &Target, dns: &DnsInput) -> String {
        let config = render_config(spec, target, dns, &self.layout);
        std::fs::create_dir_all(self.layout.config_dir()).unwrap();
        std::fs::write(&self.layout.config_file, &config).unwrap();
        for key in [&self.layout.noise_key, &self.layout.derp_key] {
            let secret = generate_private_key().expect("OS randomness");
            write_secret(key, secret.expose());
        }
        std::fs::create_dir_all(&self.layout.data_dir).unwrap();
        config
    }

    fn start(&self, version: &str, env: &[(&str, &str)]) -> Headscale {
        let log_path = self.dir.join("headscale.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(headscale_bin(version));
        // Only the variables we mean: nothing HEADSCALE_* from the caller's shell.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HEADSCALE_")) {
            cmd.env_remove(k);
        }
        // Killed with this test's thread if the run dies before Drop (parent-death signal).
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.envs(env.iter().copied())
            .arg("-c")
            .arg(&self.layout.config_file)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Headscale {
            child: cmd.spawn().expect("starting headscale"),
            log: log_path,
        }
    }

    /// Validates, renders, starts and checks: healthy, the target version, metrics
    /// served, socket with mode 0770. Returns the rendered config.
    fn prove(&self, spec: &ManagedSpec, dns: &DnsInput, env: &[(&str, &str)]) -> String {
        self.prove_running(spec, dns, env);
        std::fs::read_to_string(&self.layout.config_file).unwrap()
    }

    /// [`Run::prove`], leaving Headscale running.
    fn prove_running(&self, spec: &ManagedSpec, dns: &DnsInput, env: &[(&str, &str)]) -> Headscale {
        let target = self.target(spec, dns);
        let config = self.write(spec, &target, dns);
        let t0 = Instant::now();
        let mut hs = self.start(&target.version(), env);
        let port = self.layout.http_port;
        loop {
            if let Some(status) = hs.child.try_wait().unwrap() {
                panic!(
                    "headscale {} exited ({status}) on the rendered config:\n{config}\n--- log:\n{}",
                    target.version(),
                    hs.log_text()
                );
            }
            if http_get(port, "/health").is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(
                t0.elapsed() < START_TIMEOUT,
                "headscale {} not healthy after {START_TIMEOUT:?}:\n{}",
                target.version(),
                hs.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let healthy_after = t0.elapsed();
        let (code, body) = http_get(port, "/version").expect("GET /version");
        assert_eq!(code, 200, "{body}");
        let version: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(version["version"], target.reported_version(), "{body}");
        let (code, _) = http_get(self.layout.metrics_port, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200);
        let mode = std::fs::metadata(&self.layout.socket)
            .expect("the unix socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o770, "socket mode {mode:o}");
        eprintln!(
            "headscale {} healthy on the rendered config in {healthy_after:?} ({})",
            target.version(),
            self.dir.display()
        );
        hs
    }

    /// Renders `spec` for `target` without validating it, starts Headscale and
    /// expects it to exit non-zero; returns its log.
    fn expect_refusal(&self, spec: &ManagedSpec, dns: &DnsInput, target: &Target) -> String {
        let config = self.write(spec, target, dns);
        let t0 = Instant::now();
        let mut hs = self.start(&target.version(), &[]);
        loop {
            if let Some(status) = hs.child.try_wait().unwrap() {
                assert!(!status.success(), "headscale exited 0 on:\n{config}");
                return hs.log_text();
            }
            assert!(
                http_get(self.layout.http_port, "/health").is_none_or(|(code, _)| code != 200),
                "headscale {} started on a config we refuse:\n{config}",
                target.version()
            );
            assert!(
                t0.elapsed() < START_TIMEOUT,
                "headscale {} neither started nor exited:\n{}",
                target.version(),
                hs.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Headscale {
    child: Child,
    log: PathBuf,
}

impl Headscale {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Headscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` for every version at once, one thread each.
fn each_version(f: impl Fn(&str) + Sync) {
    std::thread::scope(|s| {
        let handles: Vec<_> = VERSIONS.iter().map(|v| (v, s.spawn(|| f(v)))).collect();
        let failed: Vec<&str> = handles
            .into_iter()
            .filter_map(|(v, h)| h.join().is_err().then_some(*v))
            .collect();
        assert!(failed.is_empty(), "failed on {failed:?} (see the panics above)");
    });
}

fn write_secret(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no chunking, no keep-alive): status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// `N` distinct ports free on 127.0.0.1 now (TCP, or UDP), never handed out twice in
/// this process; drawn below the ephemeral range like `e2e/lib.sh`'s `free_ports`.
fn free_ports<const N: usize>(udp: bool) -> [u16; N] {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap();
    let mut out = [0u16; N];
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    for slot in out.iter_mut() {
        loop {
            let r = support::random_url_safe(3)
                .bytes()
                .fold(0u32, |a, b| a * 64 + u32::from(b));
            let port = 20000 + (r % 12000) as u16;
            if given.contains(&port) {
                continue;
            }
            let ok = if udp {
                UdpSocket::bind(("127.0.0.1", port))
                    .map(|s| held_udp.push(s))
                    .is_ok()
            } else {
                TcpListener::bind(("127.0.0.1", port))
                    .map(|s| held_tcp.push(s))
                    .is_ok()
            };
            if ok {
                given.insert(port);
                *slot = port;
                break;
            }
        }
    }
    out
}

/// A minimal OpenID Connect discovery document on 127.0.0.1, standing in for the
/// identity provider Headscale contacts at start (`only_start_if_oidc_is_available`):
/// there is no real one offline. It serves the document for any path and nothing else;
/// Headscale only reads it at start. Returns the issuer URL and a count of requests.
fn oidc_discovery_stub() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            if conn.read(&mut buf).is_ok_and(|n| {
                String::from_utf8_lossy(&buf[..n]).contains("/.well-known/openid-configuration")
            }) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                doc.len()
            );
        }
    });
    (issuer, hits)
}

// ---------------------------------------------------------------------------------
// A real PostgreSQL server for the Postgres case

struct Postgres {
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// uid and gid to run as: PostgreSQL refuses to run as root.
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl Postgres {
    const USER: &'static str = "headscale";

    fn unavailable_reason() -> String {
        std::env::var("HSOP_POSTGRES_UNAVAILABLE").unwrap_or_else(|_| "HSOP_POSTGRES_BIN is empty".into())
    }

    /// initdb + a server on a free 127.0.0.1 port with password (SCRAM) authentication,
    /// as a child of this test; `None` when `e2e/tools.sh env` found no PostgreSQL on
    /// this machine (and said why).
    fn start() -> Option<Postgres> {
        let bin = std::env::var("HSOP_POSTGRES_BIN")
            .expect("HSOP_POSTGRES_BIN (set by e2e/tools.sh env; may be empty)");
        if bin.is_empty() {
            assert!(
                std::env::var("HSOP_POSTGRES_UNAVAILABLE").is_ok_and(|r| !r.is_empty()),
                "HSOP_POSTGRES_BIN is empty but e2e/tools.sh gave no reason (HSOP_POSTGRES_UNAVAILABLE)"
            );
            return None;
        }
        // As root, run as `postgres`, in a directory of its own outside the
        // (root-only) scratch directory.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = (unsafe { libc::geteuid() } == 0).then(|| (id_of("-u"), id_of("-g")));
        let data = tempfile::Builder::new()
            .prefix("hsop-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let [port] = free_ports::<1>(false);
        let password = support::random_url_safe(32);
        let pwfile = data.join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        if user.is_some() {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "chown: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pg = Postgres {
            data,
            bin: PathBuf::from(bin),
            port,
            password,
            user,
            server: None,
        };
        let db = pg.data.join("db");
        let out = pg
            .cmd("initdb")
            .args(["-A", "scram-sha-256", "-U", Self::USER, "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(pg.data.join("postgres.log")).unwrap();
        let server = pg
            .cmd("postgres")
            .arg("-D")
            .arg(&db)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("port={port}"),
                "-c",
            ])
            .arg(format!("unix_socket_directories={}", pg.data.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        pg.server = Some(server);
        let t0 = Instant::now();
        loop {
            let ready = pg
                .cmd("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Some(pg);
            }
            assert!(
                t0.elapsed() < START_TIMEOUT,
                "postgres not ready: {}",
                std::fs::read_to_string(pg.data.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PostgreSQL tool, as the `postgres` user when we are root, and killed with
    /// this test (parent-death signal), so nothing outlives a killed run.
    fn cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.env("PGPASSWORD", &self.password);
        let user = self.user;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = user
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                // After setuid, which clears it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd
    }

    fn create_database(&self, name: &str) {
        let out = self
            .cmd("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                Self::USER,
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGINT) };
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "postgres"]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "no postgres user (id {flag} postgres): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
