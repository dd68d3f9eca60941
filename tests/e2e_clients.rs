//! Real Tailscale clients (tailscaled in network namespaces, `tests/support/clients.rs`)
//! against real Headscale v0.28.0 and v0.29.2 listening on a private test bridge: enrollment
//! with pre-auth keys and by interactive registration, online/offline, ephemeral pruning, and
//! policy enforced on real TCP traffic. No operator needed; run through `make test`
//! (needs root: network namespaces).

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use headscale_operator::headscale::{Client as Api, Node, PreAuthKeySpec, UserId, Version};
use headscale_operator::secret::SecretString;
use jiff::{SignedDuration, Timestamp};
use support::clients::{CONNECT_TIMEOUT, Reach, TestNet, auth_id_of, on_versions};
use support::*;

/// The shortest ephemeral timeout both versions accept (they refuse 65 s or less).
const EPHEMERAL_TIMEOUT: &str = "66s";
const ALLOW_ALL: &str = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;
const DENY_ALL: &str = r#"{"acls": []}"#;
/// Peers stay visible to each other (there is a rule between them) but only port 1 is open:
/// what is refused is refused by the receiving client's packet filter.
const ONLY_PORT_1: &str = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:1"]}]}"#;

/// One version's world: a test network, a Headscale on it with a user `alice`, and a runtime
/// for the API calls (each version runs in its own thread).
struct World {
    rt: tokio::runtime::Runtime,
    api: Api,
    alice: UserId,
    hs: Headscale,
    net: TestNet,
}

impl World {
    fn new(version: &str, options: &[&str]) -> World {
        let net = TestNet::up();
        let hs = net.start_headscale(version, options);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let api = hs.client();
        let alice = rt.block_on(api.create_user("alice")).expect("create user").id;
        World {
            rt,
            api,
            alice,
            hs,
            net,
        }
    }

    fn key(&self, reusable: bool, ephemeral: bool) -> SecretString {
        let spec = PreAuthKeySpec {
            user: Some(self.alice),
            tags: vec![],
            reusable,
            ephemeral,
            expiration: Timestamp::now() + SignedDuration::from_hours(1),
        };
        self.rt
            .block_on(self.api.create_pre_auth_key(&spec))
            .expect("create pre-auth key")
            .key
    }

    fn nodes(&self) -> Vec<Node> {
        self.rt.block_on(self.api.list_nodes(None)).expect("list nodes")
    }

    /// Polls the node list until `check` accepts it; returns what it returned and the time.
    fn wait_nodes<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Node]) -> Option<T>,
    ) -> (T, Duration) {
        let start = Instant::now();
        loop {
            let nodes = self.nodes();
            if let Some(v) = check(&nodes) {
                return (v, start.elapsed());
            }
            if start.elapsed() > timeout {
                let seen: Vec<_> = nodes.iter().map(|n| (&n.name, n.online)).collect();
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; nodes: {seen:?}",
                    self.hs.version
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_online(&self, name: &str, online: bool, timeout: Duration) -> (Node, Duration) {
        self.wait_nodes(&format!("{name} online={online}"), timeout, |nodes| {
            nodes
                .iter()
                .find(|n| n.name == name && n.online == online)
                .cloned()
        })
    }

    fn set_policy(&self, policy: &str) {
        self.rt.block_on(self.api.set_policy(policy)).expect("set policy");
    }
}

#[test]
fn auth_ids_are_read_from_both_url_formats() {
    assert_eq!(
        auth_id_of("http://10.213.7.1:2000/register/hskey-authreq-AbC_d-0123456789abcdefghi").as_deref(),
        Some("hskey-authreq-AbC_d-0123456789abcdefghi")
    );
    assert_eq!(
        auth_id_of("http://10.213.7.1:2000/register/AbC_d-0123456789abcdefgh").as_deref(),
        Some("AbC_d-0123456789abcdefgh")
    );
    assert_eq!(auth_id_of("http://x/register/"), None);
    assert_eq!(auth_id_of("http://x/other"), None);
}

#[test]
fn a_key_joined_client_is_online_then_offline_then_back() {
    on_versions(|version| {
        let w = World::new(version, &[]);
        let a = w.net.client(&w.hs.url, "alpha");
        a.join(&w.key(false, false)).unwrap();
        assert_eq!(a.backend_state(), "Running");
        let (node, _) = w.wait_online("alpha", true, Duration::from_secs(20));
        assert!(
            !node.ephemeral,
            "{version}: a non-ephemeral key made an ephemeral node"
        );
        assert!(
            node.pre_auth_key_id.is_some(),
            "{version}: the node names no pre-auth key"
        );
        assert_eq!(node.user.as_ref().map(|u| u.name.as_str()), Some("alice"));
        assert_eq!(
            node.ip_addresses.first().map(String::as_str),
            Some(a.ipv4().to_string().as_str())
        );

        a.go_offline();
        // Headscale waits 10 s for a reconnect before it calls a node offline.
        let (_, took) = w.wait_online("alpha", false, Duration::from_secs(40));
        println!("{version}: offline {took:?} after `tailscale down`");
        assert_eq!(w.nodes().len(), 1, "{version}: an offline node stays listed");

        a.go_online().unwrap();
        let (_, took) = w.wait_online("alpha", true, Duration::from_secs(20));
        println!("{version}: online {took:?} after `tailscale up`");
    });
}

#[test]
fn an_ephemeral_client_is_removed_after_its_inactivity_timeout() {
    on_versions(|version| {
        let w = World::new(version, &["--ephemeral-timeout", EPHEMERAL_TIMEOUT]);
        let e = w.net.client(&w.hs.url, "ephem");
        e.join(&w.key(false, true)).unwrap();
        let (node, _) = w.wait_online("ephem", true, Duration::from_secs(20));
        assert!(
            node.ephemeral,
            "{version}: an ephemeral key made a non-ephemeral node"
        );
        // A second, non-ephemeral client that goes away too must stay.
        let p = w.net.client(&w.hs.url, "persist");
        p.join(&w.key(false, false)).unwrap();
        w.wait_online("persist", true, Duration::from_secs(20));

        let gone_at = Instant::now();
        e.kill_daemon();
        p.kill_daemon();
        // Disconnect grace (10 s) + the timeout (66 s) + slack for a busy machine.
        w.wait_nodes(
            "the ephemeral node to be deleted",
            Duration::from_secs(150),
            |nodes| (!nodes.iter().any(|n| n.name == "ephem")).then_some(()),
        );
        println!(
            "{version}: ephemeral node deleted {:?} after its client vanished (timeout {EPHEMERAL_TIMEOUT})",
            gone_at.elapsed()
        );
        assert!(
            gone_at.elapsed() >= Duration::from_secs(60),
            "{version}: deleted before the inactivity timeout"
        );
        let nodes = w.nodes();
        assert!(
            nodes.iter().any(|n| n.name == "persist" && !n.online),
            "{version}: the non-ephemeral node must stay, offline: {:?}",
            nodes.iter().map(|n| (&n.name, n.online)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn an_interactive_registration_completes_when_its_auth_id_is_registered() {
    on_versions(|version| {
        let w = World::new(version, &[]);
        let c = w.net.client(&w.hs.url, "interactive");
        let pending = c.join_interactive();
        println!("{version}: login URL {}", pending.url);
        assert!(
            pending.url.starts_with(&format!("{}/register/", w.hs.url)),
            "{version}: {}",
            pending.url
        );
        if Version::parse(version).unwrap().at_least(0, 29) {
            assert!(
                pending.auth_id.starts_with("hskey-authreq-"),
                "{}",
                pending.auth_id
            );
            assert_eq!(pending.auth_id.len(), 38, "{}", pending.auth_id);
        } else {
            assert_eq!(pending.auth_id.len(), 24, "{}", pending.auth_id);
        }
        // Not a node until registered.
        assert!(
            w.nodes().is_empty(),
            "{version}: a pending registration is listed as a node"
        );
        assert_eq!(c.backend_state(), "NeedsLogin");

        let node =
            w.rt.block_on(w.api.register_node(&pending.auth_id, "alice"))
                .expect("register the auth id");
        assert_eq!(node.name, "interactive");
        pending.wait(Duration::from_secs(60)).unwrap();
        assert_eq!(c.backend_state(), "Running");
        let (node, _) = w.wait_online("interactive", true, Duration::from_secs(20));
        assert_eq!(node.register_method, "REGISTER_METHOD_CLI", "{version}");
        assert_eq!(
            node.ip_addresses.first().map(String::as_str),
            Some(c.ipv4().to_string().as_str())
        );
    });
}

#[test]
fn traffic_flows_under_allow_all_and_stops_under_a_deny_policy() {
    on_versions(|version| {
        let w = World::new(version, &[]);
        w.set_policy(ALLOW_ALL);
        let key = w.key(true, false);
        let clients = w.net.joined_clients(&w.hs.url, "peer", 2, &key);
        let (a, b) = (&clients[0], &clients[1]);
        let (ip_a, ip_b) = (a.ipv4(), b.ipv4());
        let svc_a = a.serve_tcp(0);
        let svc_b = b.serve_tcp(0);

        let (r, took) = a.reach_until(ip_b, svc_b.port, true, Duration::from_secs(30));
        assert_eq!(r, Reach::Allowed, "{version}: a -> b under allow-all");
        println!("{version}: a -> b allowed after {took:?}");
        let (r, _) = b.reach_until(ip_a, svc_a.port, true, Duration::from_secs(30));
        assert_eq!(r, Reach::Allowed, "{version}: b -> a under allow-all");

        // Deny-all: Headscale stops telling the clients about each other (no route left).
        w.set_policy(DENY_ALL);
        let (r, took) = a.reach_until(ip_b, svc_b.port, false, Duration::from_secs(30));
        assert!(
            !r.is_allowed(),
            "{version}: a -> b still allowed 30 s after deny-all"
        );
        println!("{version}: a -> b refused {took:?} after deny-all: {r:?}");
        let accepted = (svc_a.accepted(), svc_b.accepted());
        assert!(
            !b.reach(ip_a, svc_a.port, CONNECT_TIMEOUT).is_allowed(),
            "{version}: b -> a under deny-all"
        );
        assert!(
            !a.reach(ip_b, svc_b.port, CONNECT_TIMEOUT).is_allowed(),
            "{version}: a -> b under deny-all"
        );

        // A policy that opens only another port: the peers see each other, and the
        // receiving client's packet filter drops the connection.
        w.set_policy(ONLY_PORT_1);
        std::thread::sleep(Duration::from_secs(2));
        let (r, _) = a.reach_until(ip_b, svc_b.port, true, Duration::from_secs(8));
        assert!(
            !r.is_allowed(),
            "{version}: a -> b allowed by a policy that opens only port 1"
        );
        println!("{version}: a -> b under a port-1-only policy: {r:?}");
        assert!(
            !b.reach(ip_a, svc_a.port, CONNECT_TIMEOUT).is_allowed(),
            "{version}: b -> a, port 1 only"
        );
        assert_eq!(
            (svc_a.accepted(), svc_b.accepted()),
            accepted,
            "{version}: a denied connection reached a service"
        );

        // The same clients connect again once the policy allows it: the policy, not a
        // broken tunnel, stopped them.
        w.set_policy(ALLOW_ALL);
        let (r, took) = a.reach_until(ip_b, svc_b.port, true, Duration::from_secs(30));
        assert_eq!(r, Reach::Allowed, "{version}: a -> b after allow-all again");
        println!("{version}: a -> b allowed again {took:?} after allow-all");
    });
}

/// Routes (in every table the rules can pick) and sockets of a joined client's namespace
/// reach only the test subnet, loopback and the tailnet (whose packets go out, encrypted, to
/// test-subnet endpoints); an address outside has no route at all (asked of the kernel:
/// nothing is sent).
/// A test run killed with SIGKILL (no Drop, no trap) leaves nothing behind: the owner-pid
/// watchdog of `netns.sh up` removes the namespace, its veth, the bridge and kills what ran
/// inside the namespace.
#[test]
fn a_killed_test_run_leaves_no_namespace_link_or_process_behind() {
    use std::process::{Command, Stdio};
    let netns = repo().join("e2e/netns.sh");
    let dir = tempfile::Builder::new()
        .prefix("net-killed-")
        .tempdir_in(scratch_dir())
        .unwrap()
        .keep();
    let dir_s = dir.to_str().unwrap();
    let mut owner = Command::new("sleep").arg("600").spawn().unwrap();
    let out = Command::new(&netns)
        .args(["up", dir_s, "--owner-pid", &owner.id().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = std::fs::read_to_string(dir.join("net.env")).unwrap();
    let bridge = env
        .lines()
        .find_map(|l| l.strip_prefix("HSOP_NET_BRIDGE="))
        .unwrap()
        .to_string();
    let out = Command::new(&netns)
        .args(["host", dir_s, "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let namespace = stdout.split_whitespace().next().unwrap().to_string();
    let mut inside = Command::new("ip")
        .args(["netns", "exec", &namespace, "sleep", "600"])
        .spawn()
        .unwrap();
    let links = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    let namespaces = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    assert!(namespaces().contains(&namespace) && links().contains(&bridge));

    owner.kill().unwrap();
    owner.wait().unwrap();
    let t0 = Instant::now();
    while namespaces().contains(&namespace) || links().contains(&bridge) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still there 60 s after the owner died: {namespace} {bridge}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t_gone = t0.elapsed();
    // The process that ran inside the namespace was killed with it.
    loop {
        if inside.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the namespace's process survived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "owner SIGKILLed -> namespace, veth and bridge gone after {:.1} s",
        t_gone.as_secs_f64()
    );
}

#[test]
fn a_test_host_reaches_only_the_test_subnet_and_loopback() {
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let w = World::new("v0.29.2", &[]);
    let key = w.key(true, false);
    let clients = w.net.joined_clients(&w.hs.url, "iso", 2, &key);
    let c = &clients[0];
    let svc = clients[1].serve_tcp(0);
    let (r, _) = c.reach_until(clients[1].ipv4(), svc.port, true, Duration::from_secs(30));
    assert_eq!(r, Reach::Allowed, "tailnet traffic between the test hosts");

    let allowed = Allowed::new(&w.net.subnet);
    let mut violations = vec![];
    let mut seen = String::new();
    for family in ["-4", "-6"] {
        let out = c.exec(&["ip", family, "route", "show", "table", "all"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        seen.push_str(&format!("ip {family} route show table all:\n{text}"));
        violations.extend(allowed.route_violations(&text));
    }
    for outside in [
        "198.51.100.1",
        "203.0.113.1",
        "2001:db8::1",
        &w.net.addr.to_string(),
    ] {
        let out = c.exec(&["ip", "route", "get", outside]);
        let reachable = out.status.success();
        if outside == w.net.addr.to_string() {
            assert!(
                reachable,
                "the host's bridge address must be reachable (Headscale is there)"
            );
        } else if reachable {
            violations.push(format!(
                "{outside} has a route: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    let out = c.exec(&["ss", "-tunaH"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    seen.push_str(&format!("ss -tuna:\n{text}"));
    violations.extend(allowed.socket_violations(&text));
    assert!(
        text.contains(&format!("{}:", w.net.addr)),
        "the client is connected to Headscale on the bridge"
    );
    assert!(
        violations.is_empty(),
        "{}\n--- in {} ---\n{seen}",
        violations.join("\n"),
        c.namespace
    );
    println!(
        "{}: routes (every table) and sockets reach only {}, loopback and the tailnet",
        c.namespace, w.net.subnet
    );
    // Vendor logging is off and its config stays in the client's own directory.
    assert!(
        c.dir.join("tailscaled.log.conf").is_file(),
        "TS_LOGS_DIR keeps tailscaled's log config in the client's directory"
    );
    let log = std::fs::read_to_string(c.dir.join("tailscaled.log")).unwrap();
    assert!(
        log.contains("You have disabled logging"),
        "tailscaled runs with --no-logs-no-support"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forward_before,
        "the host's ip_forward changed"
    );
}

#[test]
fn wall_time_of_starting_1_and_5_clients() {
    let w = World::new("v0.29.2", &[]);
    let key = w.key(true, false);
    let start = Instant::now();
    let one = w.net.joined_clients(&w.hs.url, "one", 1, &key);
    let t1 = start.elapsed();
    let start = Instant::now();
    let five = w.net.joined_clients(&w.hs.url, "five", 5, &key);
    let t5 = start.elapsed();
    w.wait_nodes("6 nodes online", Duration::from_secs(30), |nodes| {
        (nodes.iter().filter(|n| n.online).count() == 6).then_some(())
    });
    println!(
        "wall time to start and join real clients (namespace, tailscaled, tailscale up with a key): \
         1 client {:.2} s, 5 clients in parallel {:.2} s",
        t1.as_secs_f64(),
        t5.as_secs_f64()
    );
    let start = Instant::now();
    drop(five);
    drop(one);
    println!("tearing down 6 clients: {:.2} s", start.elapsed().as_secs_f64());
}

/// The checker must catch what it is there to catch.
#[test]
fn the_isolation_checker_flags_routes_and_sockets_that_leave_the_test_subnet() {
    let allowed = Allowed::new("10.213.5.0/24");
    let good_routes = "10.213.5.0/24 dev eth0 proto kernel scope link src 10.213.5.11\n\
        local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n\
        100.64.0.2 dev tailscale0 table 52\n\
        fd7a:115c:a1e0::/48 dev tailscale0 table 52 metric 1024 pref medium\n\
        multicast ff00::/8 dev eth0 table local proto kernel metric 256 pref medium\n\
        unreachable 0.0.0.0/0 table 99\n";
    assert!(allowed.route_violations(good_routes).is_empty());
    for bad in [
        "default via 10.213.5.1 dev eth0",
        "default dev eth0 scope link",
        "10.213.6.0/24 dev eth0 scope link",
        "198.51.100.0/24 via 10.213.5.1 dev eth0",
        "0.0.0.0/0 dev tailscale0 table 52",
        "2001:db8::/32 dev eth0 metric 1024",
        "unicast 203.0.113.0/24 dev eth0",
    ] {
        assert_eq!(allowed.route_violations(bad).len(), 1, "{bad}");
    }
    let good_sockets = "udp UNCONN 0 0 0.0.0.0:44398 0.0.0.0:*\n\
        tcp LISTEN 0 4096 100.64.0.1:58436 0.0.0.0:*\n\
        tcp ESTAB 0 0 10.213.5.11:42952 10.213.5.1:24258\n\
        tcp ESTAB 0 0 [::1]:4000 [::1]:4001\n";
    assert!(allowed.socket_violations(good_sockets).is_empty());
    for bad in [
        "tcp ESTAB 0 0 10.213.5.11:42952 10.213.6.1:443",
        "udp ESTAB 0 0 10.213.5.11:41641 198.51.100.7:3478",
        "tcp SYN-SENT 0 1 [fd00::5]:40000 [2001:db8::1]:443",
    ] {
        assert_eq!(allowed.socket_violations(bad).len(), 1, "{bad}");
    }
}

// --- addresses -----------------------------------------------------------------------

/// What a test host may reach: the test subnet, loopback, and the tailnet (link-local and
/// multicast on its own links).
struct Allowed {
    v4: Vec<(Ipv4Addr, u8)>,
    v6: Vec<(Ipv6Addr, u8)>,
}

impl Allowed {
    fn new(subnet: &str) -> Allowed {
        Allowed {
            v4: vec![
                parse_v4_net(subnet),
                parse_v4_net("127.0.0.0/8"),
                parse_v4_net("100.64.0.0/10"),
            ],
            v6: ["::1/128", "fe80::/64", "ff00::/8", "fd7a:115c:a1e0::/48"]
                .into_iter()
                .map(parse_v6_net)
                .collect(),
        }
    }

    fn covers(&self, dest: &str) -> bool {
        match dest.split('/').next().unwrap_or("").parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => self.v4.iter().any(|n| v4_contains(*n, &parse_v4_net(dest))),
            Ok(IpAddr::V6(_)) => self.v6.iter().any(|n| v6_contains(*n, &parse_v6_net(dest))),
            Err(_) => false,
        }
    }

    /// Lines of `ip route show table all` that lead anywhere else (or through a gateway).
    fn route_violations(&self, text: &str) -> Vec<String> {
        let mut out = vec![];
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dest = match words.first() {
                // Routes that forbid rather than lead somewhere.
                Some(&("unreachable" | "blackhole" | "prohibit" | "throw")) => continue,
                Some(&("local" | "broadcast" | "multicast" | "unicast" | "anycast")) => {
                    words.get(1).copied().unwrap_or("")
                }
                Some(d) => d,
                None => continue,
            };
            if words.contains(&"via") || dest == "default" {
                out.push(format!("route through a gateway: {line}"));
            } else if !self.covers(dest) {
                out.push(format!("route outside the test subnet: {line}"));
            }
        }
        out
    }

    /// Lines of `ss -tunaH` whose peer is elsewhere (listening and unconnected sockets pass).
    fn socket_violations(&self, text: &str) -> Vec<String> {
        let mut out = vec![];
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(peer) = words.get(5) else { continue };
            let host = peer.rsplit_once(':').map(|(h, _)| h).unwrap_or(peer);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.split('%').next().unwrap_or(host);
            if matches!(host, "*" | "0.0.0.0" | "::") {
                continue;
            }
            if !self.covers(host) {
                out.push(format!("socket to outside the test subnet: {line}"));
            }
        }
        out
    }
}

fn parse_v4_net(s: &str) -> (Ipv4Addr, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    (a.parse().unwrap_or_else(|_| panic!("{s}")), l.parse().unwrap())
}

fn parse_v6_net(s: &str) -> (Ipv6Addr, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, "128"));
    (a.parse().unwrap_or_else(|_| panic!("{s}")), l.parse().unwrap())
}

fn v4_contains(net: (Ipv4Addr, u8), inner: &(Ipv4Addr, u8)) -> bool {
    let mask = if net.1 == 0 { 0 } else { u32::MAX << (32 - net.1) };
    inner.1 >= net.1 && (u32::from(inner.0) & mask) == (u32::from(net.0) & mask)
}

fn v6_contains(net: (Ipv6Addr, u8), inner: &(Ipv6Addr, u8)) -> bool {
    let mask = if net.1 == 0 { 0 } else { u128::MAX << (128 - net.1) };
    inner.1 >= net.1 && (u128::from(inner.0) & mask) == (u128::from(net.0) & mask)
}
