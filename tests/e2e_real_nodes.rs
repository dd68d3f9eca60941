//! The nodes and policy controllers proven on real Tailscale clients (tailscaled in network
//! namespaces, `tests/support/clients.rs`) instead of fake nodes: the real operator under the
//! chart's RBAC, a real kube-apiserver, and real Headscale v0.28.0 and v0.29.2 listening on a
//! private test bridge. What fake nodes cannot show: a waiting `tailscale up` finishing
//! because a `NodeApproval` approved it, a pre-approved key consumed by a real node, pruning
//! that never touches an online node and waits out a Headscale restart, and merged
//! `AclPolicy` fragments enforced on real TCP traffic. Run through `make test` (root).

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use headscale_operator::api::AclPolicy;
use headscale_operator::headscale::{Node, PreAuthKeySpec, UserId};
use headscale_operator::secret::SecretString;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::clients::{Client, TestNet, on_versions};
use support::nodes::{Setup, WAIT, status};
use support::*;

/// One version's world: a test network, a Headscale on it behind an external
/// `HeadscaleServer` `corp` (user `alice`), and a runtime for the Kubernetes and API calls.
/// Clients block their own thread; each version runs in its own.
struct World {
    s: Setup,
    net: TestNet,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(prefix: &str, version: &str) -> World {
        let net = TestNet::up();
        let hs = net.start_headscale(version, &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(Setup::with(prefix, hs, json!({})));
        World { s, net, rt }
    }

    fn version(&self) -> &str {
        &self.s.hs.version
    }

    fn client(&self, name: &str) -> Client {
        self.net.client(&self.s.hs.url, name)
    }

    fn user(&self, name: &str) -> UserId {
        let users = self
            .rt
            .block_on(self.s.hs.client().list_users())
            .expect("list users");
        users
            .into_iter()
            .find(|u| u.name == name)
            .map(|u| u.id)
            .unwrap_or_else(|| UserId(self.s.hs.create_user_with_cli(name)))
    }

    /// A single-use key minted behind the operator's back (its node is unexpected).
    fn key_for(&self, user: &str) -> SecretString {
        let spec = PreAuthKeySpec {
            user: Some(self.user(user)),
            tags: vec![],
            reusable: false,
            ephemeral: false,
            expiration: Timestamp::now() + SignedDuration::from_hours(1),
        };
        self.rt
            .block_on(self.s.hs.client().create_pre_auth_key(&spec))
            .expect("create pre-auth key")
            .key
    }

    /// A client `name` joined as `user` with a key from [`World::key_for`].
    fn joined(&self, name: &str, user: &str) -> Client {
        let c = self.client(name);
        c.join(&self.key_for(user))
            .unwrap_or_else(|e| panic!("{}: {name}: {e}", self.version()));
        c
    }

    fn nodes(&self) -> Vec<Node> {
        self.rt
            .block_on(self.s.hs.client().list_nodes(None))
            .expect("list nodes")
    }

    /// Polls Headscale's node list until `check` holds.
    fn wait_nodes(&self, what: &str, timeout: Duration, check: impl Fn(&[Node]) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let nodes = self.nodes();
            if check(&nodes) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                let seen: Vec<_> = nodes.iter().map(|n| (&n.name, n.online)).collect();
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; nodes: {seen:?}",
                    self.version()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn server_ready(&self, want: &str) {
        self.rt.block_on(self.s.wait_server_ready(want));
    }

    fn fragments(&self) -> Api<AclPolicy> {
        Api::namespaced(self.s.client.clone(), &self.s.ns)
    }

    fn apply_fragment(&self, name: &str, order: i32, policy: &str) {
        let obj = json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "AclPolicy",
            "metadata": {"name": name},
            "spec": {"serverRef": {"name": "corp"}, "order": order, "policy": policy},
        });
        self.rt
            .block_on(self.fragments().patch(
                name,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(&obj),
            ))
            .expect("apply fragment");
    }

    /// The fragment's Ready condition once it has `status` and `reason`.
    fn wait_fragment(&self, name: &str, want_status: &str, want_reason: &str) -> String {
        let api = self.fragments();
        self.rt.block_on(wait_for(
            &format!("{}: {name} Ready={want_status} {want_reason}", self.version()),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let f = api.get(name).await.map_err(|e| e.to_string())?;
                    let current =
                        f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation;
                    let c = f
                        .status
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
                    match c {
                        Some(c) if current && c.status == want_status && c.reason == want_reason => {
                            Ok(c.message)
                        }
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        ))
    }
}

fn inventory_of(
    w: &World,
    what: &str,
    check: impl Fn(&headscale_operator::api::server::NodeInventory) -> bool,
) {
    w.rt.block_on(w.s.wait_inventory(what, check));
}

// ---------------------------------------------------------------------------------
// Enrollment

/// A real `tailscale up` without a key waits; a `NodeApproval` of the auth id it printed
/// registers it, the client finishes joining, and the approval names the node.
#[test]
fn an_approved_interactive_login_lets_the_waiting_client_join() {
    on_versions(|v| {
        let w = World::new("rn-reg", v);
        let c = w.client("laptop");
        let login = c.join_interactive();
        let started = Instant::now();
        w.rt.block_on(w.s.approve(
            "laptop",
            json!({"registration": {"authId": login.auth_id, "user": "alice"}, "hostname": "laptop"}),
        ));
        let na = w.rt.block_on(w.s.wait_phase("laptop", "Approved", "Registered"));
        login
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{v}: the approved client did not finish joining: {e}"));
        println!(
            "{v}: NodeApproval created -> waiting tailscale up finished: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(c.backend_state(), "Running", "{v}");
        let node = status(&na).node.expect("status.node");
        assert_eq!(node.name, "laptop", "{v}");
        assert_eq!(node.user.as_deref(), Some("alice"), "{v}");
        w.wait_nodes("laptop online", WAIT, |nodes| {
            nodes.len() == 1 && nodes[0].id.to_string() == node.id && nodes[0].online
        });
        // The audit accounts for it: online, expected.
        inventory_of(&w, "1 online, none unexpected", |i| {
            i.total == 1 && i.online == 1 && i.unexpected == 0
        });
        assert_eq!(c.ipv4().octets()[0], 100, "{v}: a tailnet address");
    });
}

/// A pre-approved key, read from the Secret the operator wrote, is used by a real node: the
/// approval turns Approved (KeyUsed) and names that node; a node joined with a key minted
/// behind the operator's back is reported unexpected.
#[test]
fn a_pre_approved_key_is_consumed_by_a_real_node() {
    on_versions(|v| {
        let w = World::new("rn-key", v);
        w.rt.block_on(w.s.approve(
            "builder",
            json!({"preAuthKey": {"user": "alice", "expiration": "30m", "secretName": "builder-key"}}),
        ));
        w.rt.block_on(w.s.wait_phase("builder", "KeyIssued", "KeyIssued"));
        let (key, _) = w.rt.block_on(w.s.secret_key("builder-key"));
        let c = w.client("builder");
        c.join(&SecretString::new(key.clone()))
            .unwrap_or_else(|e| panic!("{v}: joining with the approval's key: {e}"));

        let na = w.rt.block_on(w.s.wait_phase("builder", "Approved", "KeyUsed"));
        let st = status(&na);
        let node = st.node.clone().expect("status names the node that used the key");
        assert_eq!(node.name, "builder", "{v}");
        assert_eq!(node.user.as_deref(), Some("alice"), "{v}");
        assert!(st.pre_auth_key.as_ref().is_some_and(|k| k.used), "{v}: {st:?}");
        let nodes = w.nodes();
        let listed = nodes
            .iter()
            .find(|n| n.id.to_string() == node.id)
            .expect("listed");
        assert_eq!(listed.name, "builder");
        w.rt.block_on(w.s.wait_event("builder", "Normal", "KeyUsed"));

        // Single use: the same key does not enrol a second machine.
        let again = w.client("second");
        assert!(
            again.join(&SecretString::new(key.clone())).is_err(),
            "{v}: a used single-use key enrolled another node"
        );

        // A node behind the operator's back is unexpected; the approved one is not.
        let _rogue = w.joined("rogue", "alice");
        inventory_of(&w, "2 nodes, 1 unexpected (rogue)", |i| {
            i.total == 2
                && i.unexpected == 1
                && i.unexpected_nodes.iter().any(|n| n.name == "rogue")
                && i.online == 2
        });

        let na = w.rt.block_on(w.s.approvals().get("builder")).unwrap();
        let objects = vec![serde_json::to_value(&na).unwrap()];
        w.rt.block_on(assert_no_leak(&w.s.client, &w.s.ns, &objects, &[&key]));
    });
}

// ---------------------------------------------------------------------------------
// Pruning

/// With the most eager pruning (stale after 1 s), an offline node goes and online ones stay,
/// audit after audit. After Headscale restarts every node looks offline until it reconnects:
/// nothing is pruned in the grace period, the node that came back stays, the one that did
/// not is pruned once the grace period is over.
#[test]
fn pruning_never_touches_online_nodes_and_waits_out_a_restart() {
    on_versions(|v| {
        let w = World::new("rn-prune", v);
        let a = w.joined("stays", "alice");
        let b = w.joined("leaves", "alice");
        let c = w.joined("dies", "alice");
        w.wait_nodes("3 nodes online", WAIT, |n| {
            n.len() == 3 && n.iter().all(|n| n.online)
        });
        w.rt.block_on(w.s.set_nodes_spec(json!({"pruning": {
            "enabled": true, "dryRun": false, "staleAfter": "1s", "restartGrace": "0s",
        }})));

        // `tailscale down`: offline after Headscale's disconnect grace, then pruned.
        let down = Instant::now();
        b.go_offline();
        // Headscale's 10 s disconnect grace, then an audit: well under a minute, but the
        // machine may be busy.
        w.wait_nodes("`leaves` pruned", Duration::from_secs(120), |n| {
            n.len() == 2 && n.iter().all(|n| n.name != "leaves")
        });
        println!(
            "{v}: tailscale down -> node pruned: {:.1} s",
            down.elapsed().as_secs_f64()
        );
        let msg = w.rt.block_on(w.s.wait_event("corp", "Normal", "NodePruned"));
        assert!(msg.contains("leaves"), "{v}: {msg}");
        // Online nodes are never candidates: several audits later both are still there.
        std::thread::sleep(Duration::from_secs(6));
        let left = w.nodes();
        assert_eq!(left.len(), 2, "{v}: {left:?}");
        assert!(left.iter().all(|n| n.online), "{v}: {left:?}");
        assert_eq!(w.rt.block_on(w.s.count_events("NodePruned")), 1, "{v}");

        // Headscale restarts; `dies` does not come back. The grace is long enough for the
        // clients' reconnect back-off.
        w.rt.block_on(w.s.set_nodes_spec(json!({"pruning": {"restartGrace": "45s"}})));
        w.s.hs.stop();
        c.kill_daemon();
        w.server_ready("False");
        w.s.hs.restart();
        let restarted = Instant::now();
        w.server_ready("True");
        inventory_of(&w, "pruning held after the restart", |i| {
            i.pruning_held
                .as_deref()
                .is_some_and(|h| h.contains("restart grace"))
        });
        let back = w.wait_nodes("`stays` online again", Duration::from_secs(90), |n| {
            n.iter().any(|n| n.name == "stays" && n.online)
        });
        println!(
            "{v}: `stays` online again {:.1} s after the restart",
            back.as_secs_f64()
        );
        let nodes = w.nodes();
        assert!(
            nodes.iter().any(|n| n.name == "dies" && !n.online),
            "{v}: the offline node is kept in the grace period: {nodes:?}"
        );
        w.wait_nodes(
            "`dies` pruned after the grace period",
            Duration::from_secs(120),
            |n| n.len() == 1 && n[0].name == "stays",
        );
        let after = restarted.elapsed();
        assert!(
            after >= Duration::from_secs(40),
            "{v}: pruned {after:?} after the restart"
        );
        println!(
            "{v}: `dies` pruned {:.1} s after the restart (grace 45 s)",
            after.as_secs_f64()
        );
        assert!(w.nodes()[0].online, "{v}");
        assert_eq!(a.backend_state(), "Running", "{v}");
    });
}

// ---------------------------------------------------------------------------------
// Policy

/// Alice reaches Bob's port 7001 (team A's fragment), Bob reaches Alice's 7002 (team B's).
const TEAM_A: &str = r#"{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:7001"]}]}"#;
const TEAM_B: &str = r#"{
  // Team B: Bob's way in to Alice.
  "acls": [{"action": "accept", "src": ["bob@"], "dst": ["alice@:7002"]}],
}"#;
/// Refused by the operator's own check before Headscale sees it: an undefined group.
const BROKEN: &str = r#"{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["alice@:7003"]}]}"#;

fn allowed(from: &Client, to: Ipv4Addr, port: u16, want: bool, what: &str) {
    let (r, took) = from.reach_until(to, port, want, Duration::from_secs(30));
    assert_eq!(r.is_allowed(), want, "{what}: {r:?}");
    println!("{what}: {r:?} after {:.1} s", took.as_secs_f64());
}

/// Two `AclPolicy` fragments merged by the operator are what real traffic obeys; deleting
/// one closes its path; a refused fragment leaves the last good policy in force.
#[test]
fn merged_acl_policies_are_enforced_on_real_traffic() {
    on_versions(|v| {
        let w = World::new("rn-acl", v);
        w.user("bob");
        let alice = w.joined("alice-laptop", "alice");
        let bob = w.joined("bob-laptop", "bob");
        let (ip_alice, ip_bob) = (alice.ipv4(), bob.ipv4());
        let _bob_7001 = bob.serve_tcp(7001);
        let _bob_7003 = bob.serve_tcp(7003);
        let _alice_7002 = alice.serve_tcp(7002);

        w.apply_fragment("team-a", 10, TEAM_A);
        w.apply_fragment("team-b", 20, TEAM_B);
        w.wait_fragment("team-a", "True", "Applied");
        w.wait_fragment("team-b", "True", "Applied");
        allowed(
            &alice,
            ip_bob,
            7001,
            true,
            &format!("{v}: alice -> bob:7001 (team A)"),
        );
        allowed(
            &bob,
            ip_alice,
            7002,
            true,
            &format!("{v}: bob -> alice:7002 (team B)"),
        );
        allowed(
            &alice,
            ip_bob,
            7003,
            false,
            &format!("{v}: alice -> bob:7003 (no rule)"),
        );
        allowed(
            &bob,
            ip_alice,
            7001,
            false,
            &format!("{v}: bob -> alice:7001 (no rule)"),
        );

        // A broken fragment is refused; the last good merge stays in force.
        w.apply_fragment("broken", 30, BROKEN);
        let msg = w.wait_fragment("broken", "False", "UndefinedGroup");
        assert!(msg.contains("group:nobody"), "{v}: {msg}");
        allowed(
            &alice,
            ip_bob,
            7001,
            true,
            &format!("{v}: alice -> bob:7001 (kept)"),
        );
        allowed(
            &bob,
            ip_alice,
            7002,
            true,
            &format!("{v}: bob -> alice:7002 (kept)"),
        );
        w.rt.block_on(w.fragments().delete("broken", &DeleteParams::default()))
            .unwrap();

        // Team B's fragment goes: its path closes, team A's stays.
        w.rt.block_on(w.fragments().delete("team-b", &DeleteParams::default()))
            .unwrap();
        allowed(
            &bob,
            ip_alice,
            7002,
            false,
            &format!("{v}: bob -> alice:7002 (team B deleted)"),
        );
        allowed(
            &alice,
            ip_bob,
            7001,
            true,
            &format!("{v}: alice -> bob:7001 (team A stays)"),
        );
    });
}
