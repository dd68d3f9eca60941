//! Integration tests of the AclPolicy controller: the real operator (under the
//! chart's RBAC) against a real kube-apiserver and real Headscale v0.28 and v0.29.
//! What is asserted is what a user sees: fragment and server status, Events, the
//! operator's metrics, and the policy Headscale serves. Run through `make test`.

mod support;

use std::time::{Duration, Instant};

use headscale_operator::api::{AclPolicy, HeadscaleServer};
use headscale_operator::headscale::Policy;
use headscale_operator::policy::{self, Fragment};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const SERVER: &str = "corp";

/// Team A owns the web servers; its members may reach them on 443, and each other
/// on 22.
const TEAM_A: &str = r#"{
  // Team A: the web tier.
  "groups": {"group:team-a": ["alice@"]},
  "tagOwners": {"tag:web": ["group:team-a"]},
  "acls": [
    {"action": "accept", "src": ["group:team-a"], "dst": ["tag:web:443"]},
    {"action": "accept", "src": ["group:team-a"], "dst": ["group:team-a:22"]},
  ],
}"#;

/// Team B reaches the web tier on 80 only.
const TEAM_B: &str = r#"{
  "groups": {"group:team-b": ["bob@"]},
  "acls": [{"action": "accept", "src": ["group:team-b"], "dst": ["tag:web:80"]}],
}"#;

// ---------------------------------------------------------------------------------
// Helpers

/// A namespace with a Ready external server for a fresh Headscale of `version`.
struct Setup {
    client: Client,
    ns: String,
    hs: Headscale,
}

impl Setup {
    async fn new(prefix: &str, version: &str) -> Setup {
        let client = admin_client().await;
        let ns = namespace(&client, prefix).await;
        let hs = start_headscale(version);
        create_key_secret(&client, &ns, "key", &hs.api_key).await;
        let setup = Setup { client, ns, hs };
        setup.apply_server(json!({})).await;
        setup.wait_server("Ready", "True", "Ready").await;
        setup
    }

    fn servers(&self) -> Api<HeadscaleServer> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn fragments(&self) -> Api<AclPolicy> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies the server with `policy` as its spec.policy (as a user would, with
    /// server-side apply under the user's own field manager).
    async fn apply_server(&self, policy: Value) {
        let obj = json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "HeadscaleServer",
            "metadata": {"name": SERVER},
            "spec": {
                "external": {"url": self.hs.url, "apiKeySecretRef": {"name": "key"}},
                "policy": policy,
            },
        });
        self.servers()
            .patch(
                SERVER,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply server");
    }

    async fn apply_fragment(&self, name: &str, server: &str, order: i32, text: &str) {
        self.apply_fragment_spec(
            name,
            json!({"serverRef": {"name": server}, "order": order, "policy": text}),
        )
        .await;
    }

    async fn apply_fragment_spec(&self, name: &str, spec: Value) {
        let obj = json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "AclPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.fragments()
            .patch(name, &PatchParams::apply("e2e-user").force(), &Patch::Apply(&obj))
            .await
            .expect("apply fragment");
    }

    async fn delete_fragment(&self, name: &str) {
        self.fragments()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete fragment");
    }

    /// The server once its condition `type_` has `status` and `reason`.
    async fn wait_server(&self, type_: &str, status: &str, reason: &str) -> HeadscaleServer {
        let api = self.servers();
        wait_for(
            &format!("{}/{SERVER} {type_}={status} {reason}", self.ns),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let hs = api.get(SERVER).await.map_err(|e| e.to_string())?;
                    let c = hs
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
                        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
                    match c {
                        Some((s, r, _)) if s == status && r == reason => Ok(hs),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await
    }

    /// The fragment once its Ready condition has `status` and `reason`, and `check`
    /// holds for it.
    async fn wait_fragment(
        &self,
        name: &str,
        status: &str,
        reason: &str,
        check: impl Fn(&AclPolicy) -> bool,
    ) -> AclPolicy {
        let api = self.fragments();
        let check = &check;
        wait_for(
            &format!("{}/{name} Ready={status} {reason}", self.ns),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let f = api.get(name).await.map_err(|e| e.to_string())?;
                    let c = ready(&f);
                    match &c {
                        Some((s, r, _)) if s == status && r == reason && check(&f) => Ok(f),
                        _ => Err(format!("{c:?} {:?}", f.status)),
                    }
                }
            },
        )
        .await
    }

    /// Waits until every named fragment is Ready and part of the merged policy the
    /// server's `status.policy` records, made of exactly these fragments; returns its hash.
    async fn wait_applied(&self, names: &[&str]) -> String {
        wait_for(&format!("{names:?} applied"), WAIT, || async {
            let hs = self.servers().get(SERVER).await.map_err(|e| e.to_string())?;
            let policy = hs.status.and_then(|s| s.policy).ok_or("no status.policy")?;
            let hash = policy.hash.clone().ok_or("no hash")?;
            let mut want: Vec<String> = names.iter().map(|n| self.id(n)).collect();
            want.sort();
            let mut have = policy.fragments.clone();
            have.sort();
            if have != want {
                return Err(format!("server: fragments {have:?}"));
            }
            for name in names {
                let f = self.fragments().get(name).await.map_err(|e| e.to_string())?;
                let applied = matches!(ready(&f), Some((s, r, _)) if s == "True" && r == "Applied");
                let merged = f.status.as_ref().and_then(|s| s.merged_hash.clone());
                let current = f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation;
                if !(applied && current && merged.as_deref() == Some(hash.as_str())) {
                    return Err(format!("{name}: {:?} {merged:?} (server {hash})", ready(&f)));
                }
            }
            Ok(hash)
        })
        .await
    }

    /// Waits until the operator has counted `n` policy writes to this server.
    async fn wait_writes(&self, n: u64) {
        wait_for(&format!("{n} policy writes"), WAIT, || async {
            match self.policy_writes().await {
                have if have == n => Ok(()),
                have => Err(format!("{have} writes")),
            }
        })
        .await
    }

    async fn served(&self) -> Policy {
        self.hs
            .client()
            .get_policy()
            .await
            .expect("get policy")
            .expect("a policy is stored")
    }

    /// Waits until Headscale serves a policy whose canonical hash is `hash`.
    async fn wait_served(&self, hash: &str) -> Policy {
        wait_for(&format!("Headscale serving {hash}"), WAIT, || async {
            let served = self.served().await;
            if canonical_hash(&served.policy) == hash {
                Ok(served)
            } else {
                Err(served.policy)
            }
        })
        .await
    }

    async fn wait_event(&self, object: &str, type_: &str, reason: &str) -> String {
        self.wait_event_saying(object, type_, reason, "").await
    }

    /// Waits for an Event on `object` of `type_` and `reason` whose message has `says`.
    async fn wait_event_saying(&self, object: &str, type_: &str, reason: &str, says: &str) -> String {
        wait_for(
            &format!("{type_} Event {reason} on {object} saying {says:?}"),
            WAIT,
            || async {
                let evs = events(&self.client, &self.ns).await;
                match evs.iter().find(|e| {
                    e.involved_object.name.as_deref() == Some(object)
                        && e.type_.as_deref() == Some(type_)
                        && e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().unwrap_or_default().contains(says)
                }) {
                    Some(e) => Ok(e.message.clone().unwrap_or_default()),
                    None => Err(format!(
                        "{:?}",
                        evs.iter()
                            .map(|e| (e.involved_object.name.clone(), e.reason.clone()))
                            .collect::<Vec<_>>()
                    )),
                }
            },
        )
        .await
    }

    /// The two teams' fragments, applied and served; returns the merged hash.
    async fn two_teams(&self) -> String {
        self.apply_fragment("team-a", SERVER, 10, TEAM_A).await;
        self.apply_fragment("team-b", SERVER, 20, TEAM_B).await;
        let hash = self.wait_applied(&["team-a", "team-b"]).await;
        self.wait_served(&hash).await;
        hash
    }

    fn id(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    fn minor(&self) -> u64 {
        headscale_operator::headscale::Version::parse(&self.hs.version)
            .unwrap()
            .minor
    }

    async fn policy_writes(&self) -> u64 {
        metric(&format!(
            "headscale_operator_policy_writes_total{{namespace=\"{}\",name=\"{SERVER}\"}}",
            self.ns
        ))
        .await
    }
}

/// A status time in whole seconds (Kubernetes stores no fraction).
fn seconds(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<i64> {
    t.map(|t| t.0.as_second())
}

/// A fresh Headscale (retried: many start at once here).
fn start_headscale(version: &str) -> Headscale {
    start_retrying(version, || Headscale::start(version))
}

fn ready(f: &AclPolicy) -> Option<(String, String, String)> {
    f.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn ready_message(f: &AclPolicy) -> String {
    ready(f).map(|(_, _, m)| m).unwrap_or_default()
}

/// SHA-256 of a policy text in canonical form: what the operator calls its hash.
fn canonical_hash(text: &str) -> String {
    use sha2::Digest;
    let canonical = policy::normalize(text).unwrap_or_default();
    sha2::Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The merge of `fragments` ((id, order, text)) as the operator must compute it.
fn expected(fragments: &[(&str, i32, &str)]) -> policy::Merged {
    let parsed: Vec<Fragment> = fragments
        .iter()
        .map(|(id, order, text)| Fragment::from_hujson(*id, *order, text).unwrap())
        .collect();
    policy::merge(&parsed).unwrap()
}

/// One sample from the operator's /metrics (0 when absent).
async fn metric(series: &str) -> u64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("{}/metrics", operator_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

/// Runs `test` against a fresh setup on every Headscale version, all at once.
async fn on_every_version<F, Fut>(prefix: &str, test: F)
where
    F: Fn(Setup) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runs = headscale_versions().into_iter().map(|v| {
        let test = &test;
        async move { test(Setup::new(prefix, &v).await).await }
    });
    futures::future::join_all(runs).await;
}

// ---------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn two_fragments_merge_into_the_policy_headscale_serves() {
    on_every_version("merge", |s| async move {
        let hash = s.two_teams().await;
        let want = expected(&[(&s.id("team-a"), 10, TEAM_A), (&s.id("team-b"), 20, TEAM_B)]);
        assert_eq!(hash, want.hash(), "the merge is deterministic and documented");

        // What GET policy returns is the merge, and Headscale's own check accepts it.
        let served = s.served().await;
        assert!(want.same_as(&served.policy), "served: {}", served.policy);
        assert_eq!(
            served.policy,
            want.text(),
            "the operator sends the canonical text"
        );
        if s.minor() >= 29 {
            s.hs.client()
                .check_policy(&served.policy)
                .await
                .expect("policy/check accepts it");
        }

        // Status: the server records what it applied and when; each fragment points at it.
        let server = s.servers().get(SERVER).await.unwrap();
        let status = server.status.clone().unwrap();
        let applied = status.policy.clone().unwrap();
        assert_eq!(applied.fragments, [s.id("team-a"), s.id("team-b")], "merge order");
        assert_eq!(applied.default, None);
        assert_eq!(
            seconds(applied.applied_time.as_ref()),
            served.updated_at.map(|t| t.as_second())
        );
        for name in ["team-a", "team-b"] {
            let f = s.fragments().get(name).await.unwrap();
            let fs = f.status.clone().unwrap();
            assert_eq!(fs.merged_hash.as_deref(), Some(hash.as_str()));
            assert_eq!(fs.last_applied_time, applied.applied_time);
            assert_eq!(fs.observed_generation, f.metadata.generation);
            assert!(fs.warnings.is_empty(), "{:?}", fs.warnings);
            s.wait_event(name, "Normal", "Applied").await;
        }
        // kube's event recorder folds repeats of one reason into a series that keeps the
        // first note, so when the two fragments took two writes the Event names the first
        // hash; the status above is the authority on what is applied.
        s.wait_event(SERVER, "Normal", "PolicyApplied").await;
        // One write per merge that was served: usually one (the debounce catches both
        // fragments), two if the second arrived after the first merge was applied.
        let writes = s.policy_writes().await;
        assert!((1..=2).contains(&writes), "{writes} writes for two fragments");

        assert_no_leak(
            &s.client,
            &s.ns,
            &[serde_json::to_value(&server).unwrap()],
            &[&s.hs.api_key],
        )
        .await;
    })
    .await;
}

/// The two teams of `examples/` (one fragment inline, one from a ConfigMap, one using
/// the other's tag) merge into a policy every version accepts and serves.
#[tokio::test]
async fn the_example_fragments_merge_and_are_served_on_every_version() {
    on_every_version("examples", |s| async move {
        let out = kubectl(&[
            "-n",
            &s.ns,
            "apply",
            "-f",
            repo().join("examples/acl-team-platform.yaml").to_str().unwrap(),
            "-f",
            repo().join("examples/acl-team-web.yaml").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let hash = s.wait_applied(&["team-platform", "team-web"]).await;
        let served = s.wait_served(&hash).await;
        let groups =
            serde_json::to_string(&policy::hujson::parse(&served.policy).unwrap()["groups"]).unwrap();
        assert!(
            groups.contains("group:platform") && groups.contains("group:web-devs"),
            "{groups}"
        );
        if s.minor() >= 29 {
            s.hs.client().check_policy(&served.policy).await.unwrap();
        }
        for name in ["team-platform", "team-web"] {
            let f = s.fragments().get(name).await.unwrap();
            assert!(f.status.unwrap().warnings.is_empty(), "{name} has warnings");
        }
    })
    .await;
}

#[tokio::test]
async fn editing_a_fragment_updates_the_server_within_seconds() {
    on_every_version("edit", |s| async move {
        let before = s.two_teams().await;
        let writes = s.policy_writes().await;
        let edited = TEAM_B.replace("tag:web:80", "tag:web:8080");
        let started = Instant::now();
        s.apply_fragment("team-b", SERVER, 20, &edited).await;
        let want = expected(&[(&s.id("team-a"), 10, TEAM_A), (&s.id("team-b"), 20, &edited)]);
        assert_ne!(want.hash(), before);
        s.wait_served(want.hash()).await;
        let took = started.elapsed();
        // Printed, not asserted (2 busy cores): the benchmark measures it; wait_served bounds it.
        println!("{}: edit served after {took:?}", s.hs.version);
        // Both fragments are part of the new merge.
        s.wait_applied(&["team-a", "team-b"]).await;
        s.wait_writes(writes + 1).await;
    })
    .await;
}

#[tokio::test]
async fn a_manual_change_on_the_server_is_reverted_with_an_event() {
    on_every_version("drift", |s| async move {
        let hash = s.two_teams().await;
        let repairs = format!(
            "headscale_operator_policy_drift_repairs_total{{namespace=\"{}\",name=\"{SERVER}\"}}",
            s.ns
        );
        assert_eq!(metric(&repairs).await, 0);
        // Someone opens the network by hand.
        let manual = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;
        let changed = s.hs.client().set_policy(manual).await.unwrap();
        assert_eq!(changed.policy, manual);

        let reverted = s.wait_served(&hash).await;
        let msg = s.wait_event(SERVER, "Warning", "PolicyDriftRepaired").await;
        assert!(msg.contains("changed outside the operator"), "{msg}");
        assert_eq!(metric(&repairs).await, 1);
        let status = s
            .servers()
            .get(SERVER)
            .await
            .unwrap()
            .status
            .unwrap()
            .policy
            .unwrap();
        assert_eq!(status.hash.as_deref(), Some(hash.as_str()));
        assert_eq!(
            seconds(status.applied_time.as_ref()),
            reverted.updated_at.map(|t| t.as_second())
        );
    })
    .await;
}

#[tokio::test]
async fn an_idle_server_gets_no_policy_writes() {
    on_every_version("idle", |s| async move {
        s.two_teams().await;
        // Let the first write's echoes (status updates, requeues) settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let writes = s.policy_writes().await;
        let served = s.served().await;
        let server_rv = s.servers().get(SERVER).await.unwrap().resource_version();
        let fragment_rvs: Vec<_> = s
            .fragments()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|f| f.resource_version())
            .collect();
        let reconciles = metric("headscale_operator_reconciliations_total{controller=\"policy\"}").await;

        // Five resync periods (the tests run the operator with --resync-seconds 2).
        tokio::time::sleep(Duration::from_secs(10)).await;

        assert_eq!(s.policy_writes().await, writes, "policy writes while idle");
        let again = s.served().await;
        assert_eq!(
            again.updated_at, served.updated_at,
            "Headscale's updatedAt moved: a PUT happened (every PUT appends a row)"
        );
        assert_eq!(
            s.servers().get(SERVER).await.unwrap().resource_version(),
            server_rv,
            "the server's status was rewritten"
        );
        let now: Vec<_> = s
            .fragments()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|f| f.resource_version())
            .collect();
        assert_eq!(now, fragment_rvs, "a fragment's status was rewritten");
        // The drift check did run meanwhile.
        assert!(
            metric("headscale_operator_reconciliations_total{controller=\"policy\"}").await >= reconciles + 3,
            "the periodic resync did not run"
        );
        println!(
            "{}: {} policy writes in 10 s idle",
            s.hs.version,
            s.policy_writes().await - writes
        );
    })
    .await;
}

/// Each bad input leaves the last applied policy served (not even re-written: the
/// same `updatedAt`), and every fragment and the server say why.
#[tokio::test]
async fn bad_input_changes_nothing_on_the_server_and_status_says_why() {
    on_every_version("bad", |s| async move {
        let hash = s.two_teams().await;
        let baseline = s.served().await;
        let writes = s.policy_writes().await;
        let team_a = s.id("team-a");
        let team_b = s.id("team-b");
        let v29 = s.minor() >= 29;

        // A failing `tests` entry needs a real node: alice with one laptop.
        s.hs.create_user_with_cli("alice");
        s.hs.create_fake_node("alice", "alice-laptop", &[]);

        struct Case {
            name: &'static str,
            team_b: String,
            reason: &'static str,
            /// Fragments named at fault in the others' messages (None: not determinable).
            at_fault: Option<&'static str>,
            /// Must appear in team-b's message (the parser's, the checks' or Headscale's words).
            says: Vec<String>,
        }
        let with = |extra: &str| TEAM_B.replacen('{', &format!("{{\n  {extra},"), 1);
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = vec![
            Case {
                name: "HuJSON syntax error",
                team_b: "{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": []},\n  ],\n}".into(),
                reason: "PolicySyntaxError",
                at_fault: Some("team-b"),
                says: words(&["line 3, column"]),
            },
            Case {
                name: "unknown top-level key",
                team_b: with(r#""bogus": {"x": 1}"#),
                reason: "PolicyRejected",
                // Headscale quotes the key; the operator finds the fragment that has it.
                at_fault: Some("team-b"),
                says: words(&["unknown field", "bogus"]),
            },
            Case {
                name: "rule using an undefined group",
                team_b: TEAM_B.replace("\"src\": [\"group:team-b\"]", "\"src\": [\"group:nobody\"]"),
                reason: "UndefinedGroup",
                at_fault: Some("team-b"),
                says: words(&["group:nobody", "acls"]),
            },
            Case {
                name: "tag not in tagOwners",
                team_b: TEAM_B.replace("tag:web:80", "tag:db:5432"),
                reason: "UndefinedTag",
                at_fault: Some("team-b"),
                says: words(&["tag:db", "tagOwners"]),
            },
            Case {
                name: "user without @",
                team_b: TEAM_B.replace("\"bob@\"", "\"bob\""),
                reason: "UserWithoutAt",
                at_fault: Some("team-b"),
                says: words(&["bob@"]),
            },
            Case {
                name: "conflicting group definition across two fragments",
                team_b: TEAM_B.replace(
                    r#""group:team-b": ["bob@"]"#,
                    r#""group:team-b": ["bob@"], "group:team-a": ["mallory@"]"#,
                ),
                reason: "MergeConflict",
                at_fault: Some("team-a"),
                says: words(&[&team_a, &team_b, "group:team-a", "differently"]),
            },
            Case {
                name: "failing tests entry",
                team_b: with(r#""tests": [{"src": "alice@", "deny": ["alice@:22"]}]"#),
                reason: "PolicyRejected",
                at_fault: if v29 { Some("team-b") } else { None },
                // 0.29 runs the tests and says which failed; 0.28 has no `tests` at all.
                says: if v29 {
                    words(&["test(s) failed", "alice@"])
                } else {
                    words(&["unknown field", "tests"])
                },
            },
        ];

        for case in cases {
            let name = case.name;
            s.apply_fragment("team-b", SERVER, 20, &case.team_b).await;
            let b = s
                .wait_fragment("team-b", "False", case.reason, |f| {
                    f.status.as_ref().and_then(|st| st.observed_generation) == f.metadata.generation
                })
                .await;
            let msg = ready_message(&b);
            for word in &case.says {
                assert!(msg.contains(word), "{name}: team-b says {msg:?}, missing {word:?}");
            }
            if case.at_fault == Some("team-b") {
                assert!(msg.contains("This fragment is at fault"), "{name}: {msg}");
            }
            // The other fragment is told, with the fragment at fault where known.
            let a = s.wait_fragment("team-a", "False", case.reason, |_| true).await;
            let a_msg = ready_message(&a);
            match case.at_fault {
                Some("team-a") => assert!(a_msg.contains("This fragment is at fault"), "{name}: {a_msg}"),
                Some(_) => assert!(a_msg.contains(&format!("{team_b} at fault")), "{name}: {a_msg}"),
                None => assert!(a_msg.contains("could not be determined"), "{name}: {a_msg}"),
            }
            // The server says why too, and still records the applied policy.
            let server = s.wait_server("PolicyApplied", "False", case.reason).await;
            let policy = server.status.unwrap().policy.unwrap();
            assert_eq!(policy.hash.as_deref(), Some(hash.as_str()), "{name}");
            // Headscale still serves the last applied policy, not even re-written.
            let served = s.served().await;
            assert_eq!(served, baseline, "{name}: the served policy changed");
            assert_eq!(s.policy_writes().await, writes, "{name}: a write happened");

            // Fixing it goes back to the applied merge without a write.
            s.apply_fragment("team-b", SERVER, 20, TEAM_B).await;
            assert_eq!(s.wait_applied(&["team-a", "team-b"]).await, hash, "{name}");
            assert_eq!(s.served().await, baseline, "{name}: fixing it re-wrote the policy");
        }

        // A ConfigMap reference that does not exist.
        s.apply_fragment_spec(
            "team-c",
            json!({"serverRef": {"name": SERVER}, "configMapRef": {"name": "team-c-acl", "key": "policy.hujson"}}),
        )
        .await;
        let c = s.wait_fragment("team-c", "False", "ConfigMapNotFound", |_| true).await;
        assert!(ready_message(&c).contains("\"team-c-acl\""), "{}", ready_message(&c));
        let a = s.wait_fragment("team-a", "False", "ConfigMapNotFound", |_| true).await;
        assert!(ready_message(&a).contains(&s.id("team-c")), "{}", ready_message(&a));
        s.wait_server("PolicyApplied", "False", "ConfigMapNotFound").await;
        assert_eq!(s.served().await, baseline);
        s.delete_fragment("team-c").await;
        assert_eq!(s.wait_applied(&["team-a", "team-b"]).await, hash);

        // A fragment naming a server that does not exist: it says so; corp is untouched.
        s.apply_fragment("stray", "ghost", 10, TEAM_B).await;
        let stray = s.wait_fragment("stray", "False", "ServerNotFound", |_| true).await;
        assert!(ready_message(&stray).contains("\"ghost\""), "{}", ready_message(&stray));
        s.wait_event("stray", "Warning", "ServerNotFound").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.wait_fragment("team-a", "True", "Applied", |_| true).await;
        assert_eq!(s.served().await, baseline);
        assert_eq!(s.policy_writes().await, writes);
        assert_no_leak(&s.client, &s.ns, &[], &[&s.hs.api_key]).await;
    })
    .await;
}

/// `grants` exist from 0.29 on: 0.29 applies the fragment, 0.28 refuses it, and
/// the fragment carries 0.28's own words.
#[tokio::test]
async fn a_policy_one_version_accepts_and_the_other_rejects_reports_the_servers_message() {
    on_every_version("versions", |s| async move {
        let hash = s.two_teams().await;
        let grants = r#"{"grants": [{"src": ["group:team-a"], "dst": ["tag:web"], "ip": ["tcp:8443"]}]}"#;
        s.apply_fragment("grants", SERVER, 30, grants).await;
        if s.minor() >= 29 {
            let merged = s.wait_applied(&["team-a", "team-b", "grants"]).await;
            assert_ne!(merged, hash);
            s.wait_served(&merged).await;
        } else {
            let f = s.wait_fragment("grants", "False", "PolicyRejected", |_| true).await;
            let msg = ready_message(&f);
            assert!(msg.contains("unknown field") && msg.contains("grants"), "{msg}");
            assert_eq!(canonical_hash(&s.served().await.policy), hash);
            let server = s.wait_server("PolicyApplied", "False", "PolicyRejected").await;
            let message = server
                .status
                .unwrap()
                .conditions
                .into_iter()
                .find(|c| c.type_ == "PolicyApplied")
                .unwrap()
                .message;
            assert!(message.contains("Headscale rejected the merged policy"), "{message}");
            s.wait_event(SERVER, "Warning", "PolicyRejected").await;
            let rejections = format!(
                "headscale_operator_policy_rejections_total{{namespace=\"{}\",name=\"{SERVER}\",by=\"headscale\"}}",
                s.ns
            );
            assert_eq!(metric(&rejections).await, 1, "one distinct rejection, counted once");
        }
    })
    .await;
}

#[tokio::test]
async fn fragments_from_configmaps_follow_their_configmap() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("cm", &version).await;
    s.apply_fragment("team-a", SERVER, 10, TEAM_A).await;
    s.apply_fragment_spec(
        "team-b",
        json!({"serverRef": {"name": SERVER}, "order": 20, "configMapRef": {"name": "team-b-acl", "key": "policy.hujson"}}),
    )
    .await;
    s.wait_fragment("team-b", "False", "ConfigMapNotFound", |_| true)
        .await;

    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let apply_cm = |text: String| {
        let cms = cms.clone();
        async move {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-b-acl"},
                            "data": {"policy.hujson": text}});
            cms.patch(
                "team-b-acl",
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap();
        }
    };
    // The ConfigMap appears: the watch brings the server back.
    apply_cm(TEAM_B.to_string()).await;
    let hash = s.wait_applied(&["team-a", "team-b"]).await;
    let want = expected(&[(&s.id("team-a"), 10, TEAM_A), (&s.id("team-b"), 20, TEAM_B)]);
    assert_eq!(hash, want.hash());
    s.wait_served(&hash).await;

    // Editing the ConfigMap updates the server.
    let edited = TEAM_B.replace("tag:web:80", "tag:web:81");
    let started = Instant::now();
    apply_cm(edited.clone()).await;
    let want = expected(&[(&s.id("team-a"), 10, TEAM_A), (&s.id("team-b"), 20, &edited)]);
    s.wait_served(want.hash()).await;
    // Bounded by wait_served's timeout; the figure is printed, not asserted (timing
    // belongs in benchmarks: on 2 busy cores a fixed bound only makes the test flaky).
    println!("ConfigMap edit served after {:?}", started.elapsed());

    // A missing key.
    s.apply_fragment_spec(
        "team-b",
        json!({"serverRef": {"name": SERVER}, "order": 20, "configMapRef": {"name": "team-b-acl", "key": "nope"}}),
    )
    .await;
    let b = s
        .wait_fragment("team-b", "False", "ConfigMapKeyMissing", |_| true)
        .await;
    assert!(ready_message(&b).contains("\"nope\""), "{}", ready_message(&b));
    s.wait_served(want.hash()).await;
}

#[tokio::test]
async fn deleting_fragments_applies_the_rest_then_the_default() {
    on_every_version("delete", |s| async move {
        s.two_teams().await;
        let writes = s.policy_writes().await;

        s.delete_fragment("team-b").await;
        let rest = expected(&[(&s.id("team-a"), 10, TEAM_A)]);
        assert_eq!(s.wait_applied(&["team-a"]).await, rest.hash());
        s.wait_served(rest.hash()).await;

        // The last one goes: deny-all (the default of spec.policy.whenEmpty).
        s.delete_fragment("team-a").await;
        let deny = policy::default_policy(policy::DefaultPolicy::DenyAll);
        let served = s.wait_served(deny.hash()).await;
        assert!(deny.same_as(&served.policy), "{}", served.policy);
        let server = s.wait_server("PolicyApplied", "True", "DefaultApplied").await;
        let status = server.status.unwrap().policy.unwrap();
        assert_eq!(
            status.default,
            Some(headscale_operator::api::EmptyPolicy::DenyAll)
        );
        assert!(status.fragments.is_empty());

        // The user's choice: allow-all.
        s.apply_server(json!({"whenEmpty": "AllowAll"})).await;
        let allow = policy::default_policy(policy::DefaultPolicy::AllowAll);
        s.wait_served(allow.hash()).await;
        // The rest, deny-all, allow-all.
        s.wait_writes(writes + 3).await;
    })
    .await;
}

/// Safety: adopting a running Headscale must not cut off its network. Without any
/// AclPolicy, and with no policy ever applied by the operator, the server's own
/// policy stays, and the server's status says so.
#[tokio::test]
async fn a_server_without_fragments_keeps_its_own_policy() {
    let version = headscale_versions().pop().unwrap();
    let client = admin_client().await;
    let ns = namespace(&client, "adopt").await;
    let hs = start_headscale(&version);
    let own = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;
    let stored = hs.client().set_policy(own).await.unwrap();
    create_key_secret(&client, &ns, "key", &hs.api_key).await;
    let s = Setup { client, ns, hs };
    s.apply_server(json!({})).await;
    s.wait_server("Ready", "True", "Ready").await;
    let server = s.wait_server("PolicyApplied", "False", "NoAclPolicies").await;
    assert_eq!(server.status.unwrap().policy, None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.served().await, stored, "the server's own policy was touched");
    assert_eq!(s.policy_writes().await, 0);
}

#[tokio::test]
async fn fragments_of_a_managed_server_are_not_ready() {
    let client = admin_client().await;
    let ns = namespace(&client, "managed-acl").await;
    let api: Api<HeadscaleServer> = Api::namespaced(client.clone(), &ns);
    let obj = json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "HeadscaleServer",
        "metadata": {"name": "m"},
        "spec": {"managed": {"version": "0.29.2", "serverUrl": "https://hs.example.com"}},
    });
    api.patch("m", &PatchParams::apply("e2e-user"), &Patch::Apply(&obj))
        .await
        .unwrap();
    let fragments: Api<AclPolicy> = Api::namespaced(client.clone(), &ns);
    let acl = json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "AclPolicy",
        "metadata": {"name": "team-a"},
        "spec": {"serverRef": {"name": "m"}, "policy": TEAM_A},
    });
    fragments
        .patch("team-a", &PatchParams::apply("e2e-user"), &Patch::Apply(&acl))
        .await
        .unwrap();
    let f = wait_for("team-a ServerNotReady", WAIT, || async {
        let f = fragments.get("team-a").await.map_err(|e| e.to_string())?;
        match ready(&f) {
            Some((s, r, _)) if s == "False" && r == "ServerNotReady" => Ok(f),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A managed server without a volume (this cluster has no default storage class)
    // never becomes Ready; its fragments wait for it and say so.
    assert!(ready_message(&f).contains("once it is"), "{}", ready_message(&f));
}

/// The server controller (`headscale-operator/server`) and the policy controller
/// (`headscale-operator/policy`) write the same status with server-side apply; each
/// keeps to its own fields, through an outage and back.
#[tokio::test]
async fn the_two_controllers_keep_each_others_status_fields() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("managers", &version).await;
    let hash = s.two_teams().await;
    let server = s.servers().get(SERVER).await.unwrap();
    let managers: Vec<(String, String)> = server
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                serde_json::to_string(&m.fields_v1).unwrap(),
            )
        })
        .collect();
    let fields = |manager: &str| {
        managers
            .iter()
            .find(|(m, _)| m == manager)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no status fields of {manager}: {managers:?}"))
    };
    let policy_fields = fields("headscale-operator/policy");
    let server_fields = fields("headscale-operator/server");
    assert!(policy_fields.contains("f:policy") && policy_fields.contains("PolicyApplied"));
    assert!(!policy_fields.contains("\\\"Ready\\\"") && !policy_fields.contains("f:version"));
    assert!(server_fields.contains("f:version") && server_fields.contains("\\\"Ready\\\""));
    assert!(!server_fields.contains("f:policy") && !server_fields.contains("PolicyApplied"));

    // The server controller rewrites its status (Ready=False, then True): the policy
    // status stays.
    s.hs.stop();
    let down = s.wait_server("Ready", "False", "ServerUnreachable").await;
    let status = down.status.unwrap();
    assert_eq!(status.policy.and_then(|p| p.hash), Some(hash.clone()));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "PolicyApplied" && c.status == "True")
    );
    // Nothing pending: the fragments stay Ready while Headscale is away.
    let a = s.fragments().get("team-a").await.unwrap();
    assert_eq!(ready(&a).unwrap().1, "Applied");

    // A change while it is away waits, and says why; it lands when it is back.
    let edited = TEAM_B.replace("tag:web:80", "tag:web:82");
    s.apply_fragment("team-b", SERVER, 20, &edited).await;
    s.wait_fragment("team-b", "False", "ServerNotReady", |_| true)
        .await;
    s.hs.restart();
    let up = s.wait_server("Ready", "True", "Ready").await;
    assert!(up.status.unwrap().policy.is_some());
    let want = expected(&[(&s.id("team-a"), 10, TEAM_A), (&s.id("team-b"), 20, &edited)]);
    assert_eq!(s.wait_applied(&["team-a", "team-b"]).await, want.hash());
    s.wait_served(want.hash()).await;
    let server = s.wait_server("PolicyApplied", "True", "Applied").await;
    assert!(
        server
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}
