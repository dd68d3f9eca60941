//! Integration tests: the real operator binary (under the chart's RBAC) against a
//! real kube-apiserver and real Headscale servers. Run through `make test`.

mod support;

use std::time::Duration;

use headscale_operator::api::HeadscaleServer;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn external_server(name: &str, url: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "HeadscaleServer",
        "metadata": {"name": name},
        "spec": {"external": {"url": url, "apiKeySecretRef": {"name": secret}}},
    })
}

async fn create(client: &Client, ns: &str, obj: Value) -> Result<HeadscaleServer, kube::Error> {
    let obj: HeadscaleServer = serde_json::from_value(obj).expect("object shape");
    Api::<HeadscaleServer>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
}

/// Creates an arbitrary object through the dynamic API and returns the API server's
/// rejection message, if any.
async fn create_raw(client: &Client, ns: &str, obj: Value) -> Result<(), String> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let kind = obj["kind"].as_str().unwrap().to_string();
    let gvk = GroupVersionKind::gvk("headscale.operator.dev", "v1alpha1", &kind);
    let plural = format!("{}s", kind.to_lowercase()).replace("policys", "policies");
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => Err(e.to_string()),
    }
}

/// (status, reason) of the Ready condition, once it matches `want`.
async fn wait_ready(client: &Client, ns: &str, name: &str, want: (&str, &str)) -> HeadscaleServer {
    let api = Api::<HeadscaleServer>::namespaced(client.clone(), ns);
    wait_for(&format!("{ns}/{name} Ready={want:?}"), WAIT, || {
        let api = api.clone();
        async move {
            let hs = api.get(name).await.map_err(|e| e.to_string())?;
            let cond = hs
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
            match cond {
                Some((s, r, _)) if s == want.0 && r == want.1 => Ok(hs),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

fn condition(hs: &HeadscaleServer, type_: &str) -> (String, String) {
    let c = find_condition(hs, type_);
    (c.status.clone(), c.reason.clone())
}

fn find_condition<'a>(
    hs: &'a HeadscaleServer,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    hs.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

async fn wait_event(client: &Client, ns: &str, object: &str, type_: &str, reason: &str) {
    wait_for(&format!("{type_} Event {reason} on {object}"), WAIT, || async {
        let evs = events(client, ns).await;
        if evs.iter().any(|e| {
            e.involved_object.name.as_deref() == Some(object)
                && e.type_.as_deref() == Some(type_)
                && e.reason.as_deref() == Some(reason)
        }) {
            Ok(())
        } else {
            let seen: Vec<_> = evs.iter().map(|e| (e.type_.clone(), e.reason.clone())).collect();
            Err(format!("{seen:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn external_server_is_ready_on_every_supported_version() {
    let client = admin_client().await;
    for version in headscale_versions() {
        let ns = namespace(&client, "ready").await;
        let hs = Headscale::start(&version);
        create_key_secret(&client, &ns, "key", &hs.api_key).await;
        create(&client, &ns, external_server("corp", &hs.url, "key"))
            .await
            .unwrap();

        let obj = wait_ready(&client, &ns, "corp", ("True", "Ready")).await;
        let status = obj.status.clone().unwrap();
        assert_eq!(
            status.version.as_deref(),
            Some(version.as_str()),
            "reported version"
        );
        assert_eq!(status.mode.as_deref(), Some("External"));
        assert_eq!(status.endpoint.as_deref(), Some(hs.url.as_str()));
        assert_eq!(status.observed_generation, obj.metadata.generation);
        assert_eq!(condition(&obj, "Stalled").0, "False");
        wait_event(&client, &ns, "corp", "Normal", "Ready").await;
        // Three controllers report on this status (server, policy and nodes, each its
        // own fields): the steady state starts once all have written, i.e. once the
        // object stops changing for longer than a resync.
        let api = Api::<HeadscaleServer>::namespaced(client.clone(), &ns);
        let obj = wait_for("the server's status to settle", WAIT, || async {
            let before = api.get("corp").await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let after = api.get("corp").await.map_err(|e| e.to_string())?;
            let policy = after
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "PolicyApplied"))
                .map(|c| c.reason.clone());
            if before.resource_version() == after.resource_version()
                && policy.as_deref() == Some("NoAclPolicies")
            {
                Ok(after)
            } else {
                Err(format!(
                    "{:?} -> {:?}, PolicyApplied {policy:?}",
                    before.resource_version(),
                    after.resource_version()
                ))
            }
        })
        .await;

        // Steady state writes nothing: the operator re-checks every 2 s in the tests,
        // and the object's resourceVersion must not move.
        let rv = obj.resource_version();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let again = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .get("corp")
            .await
            .unwrap();
        assert_eq!(
            again.resource_version(),
            rv,
            "status was rewritten without a change"
        );

        let metrics = reqwest_get(&format!("{}/metrics", operator_url())).await;
        assert!(
            metrics.contains(&format!(
                "headscale_operator_server_ready{{namespace=\"{ns}\",name=\"corp\"}} 1"
            )),
            "server_ready metric missing:\n{metrics}"
        );
        assert_no_leak(
            &client,
            &ns,
            &[serde_json::to_value(&again).unwrap()],
            &[&hs.api_key],
        )
        .await;
    }
}

async fn reqwest_get(url: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn failures_are_reported_and_the_operator_recovers() {
    let client = admin_client().await;
    let ns = namespace(&client, "recover").await;
    let version = headscale_versions().pop().unwrap();
    let hs = Headscale::start(&version);

    // No Secret yet.
    create(&client, &ns, external_server("corp", &hs.url, "key"))
        .await
        .unwrap();
    let obj = wait_ready(&client, &ns, "corp", ("False", "SecretNotFound")).await;
    assert_eq!(
        condition(&obj, "Stalled"),
        ("True".into(), "SecretNotFound".into())
    );
    wait_event(&client, &ns, "corp", "Warning", "SecretNotFound").await;

    // A wrong key: the Secret watch brings the server back without waiting for a resync.
    let wrong = "hskey-api-AAAAAAAAAAAA-0000000000000000000000000000000000000000000000000000000000000000";
    create_key_secret(&client, &ns, "key", wrong).await;
    wait_ready(&client, &ns, "corp", ("False", "ApiKeyRejected")).await;
    wait_event(&client, &ns, "corp", "Warning", "ApiKeyRejected").await;

    // The right key, but a URL with a path Headscale does not serve: said so, not
    // mistaken for a wrong key or an outage.
    replace_key_secret(&client, &ns, "key", &hs.api_key).await;
    let servers = Api::<HeadscaleServer>::namespaced(client.clone(), &ns);
    let set_url = |url: String| {
        let servers = servers.clone();
        async move {
            servers
                .patch(
                    "corp",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"external": {"url": url}}})),
                )
                .await
                .unwrap();
        }
    };
    set_url(format!("{}/vpn", hs.url)).await;
    let obj = wait_ready(&client, &ns, "corp", ("False", "UnexpectedResponse")).await;
    let msg = find_condition(&obj, "Ready").message.clone();
    assert!(
        msg.contains("/vpn/version answered 404") && msg.contains("server_url"),
        "{msg}"
    );
    set_url(hs.url.clone()).await;
    wait_ready(&client, &ns, "corp", ("True", "Ready")).await;

    // Headscale goes away mid-run, and comes back.
    hs.stop();
    let obj = wait_ready(&client, &ns, "corp", ("False", "ServerUnreachable")).await;
    assert_eq!(
        condition(&obj, "Stalled").0,
        "False",
        "an outage is not the user's to fix"
    );
    assert_eq!(
        obj.status.as_ref().unwrap().version.as_deref(),
        Some(version.as_str()),
        "last known version kept"
    );
    wait_event(&client, &ns, "corp", "Warning", "ServerUnreachable").await;
    hs.restart();
    wait_ready(&client, &ns, "corp", ("True", "Ready")).await;

    // The operator never restarted.
    let health = reqwest_get(&format!("{}/readyz", operator_url())).await;
    assert_eq!(health, "ready");

    let obj = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .get("corp")
        .await
        .unwrap();
    assert_no_leak(
        &client,
        &ns,
        &[serde_json::to_value(&obj).unwrap()],
        &[&hs.api_key, wrong],
    )
    .await;

    // Deleting the server needs nothing from the operator (no finalizer in external mode).
    Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .delete("corp", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn unsupported_version_is_reported() {
    // Headscale 0.26 is not built here; a stand-in that only answers /version injects
    // that fault. Everything else in this suite talks to real Headscale.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/version",
        axum::routing::get(|| async {
            (
                [("content-type", "application/json")],
                r#"{"version":"v0.26.1","commit":"x"}"#,
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = admin_client().await;
    let ns = namespace(&client, "oldver").await;
    create_key_secret(&client, &ns, "key", "hskey-api-unused").await;
    create(&client, &ns, external_server("old", &url, "key"))
        .await
        .unwrap();
    let obj = wait_ready(&client, &ns, "old", ("False", "UnsupportedVersion")).await;
    let msg = &find_condition(&obj, "Ready").message;
    assert!(msg.contains("v0.26.1") && msg.contains("0.27 to 0.30"), "{msg}");
}

#[tokio::test]
async fn a_managed_server_without_a_volume_says_so() {
    let client = admin_client().await;
    let ns = namespace(&client, "managed").await;
    let obj = json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "HeadscaleServer",
        "metadata": {"name": "m"},
        "spec": {"managed": {"version": "0.29.2", "serverUrl": "https://hs.example.com"}},
    });
    create(&client, &ns, obj).await.unwrap();
    // This cluster has no default storage class: the claim cannot bind, and status says so
    // (tests/e2e_managed.rs covers managed mode as a whole).
    let obj = wait_ready(&client, &ns, "m", ("False", "VolumePending")).await;
    assert_eq!(obj.status.unwrap().mode.as_deref(), Some("Managed"));
}

#[tokio::test]
async fn invalid_resources_are_rejected_by_the_api_server() {
    let client = admin_client().await;
    let ns = namespace(&client, "invalid").await;
    let hss = |spec: Value| {
        json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
               "metadata": {"name": "x"}, "spec": spec})
    };
    let ext = json!({"url": "http://127.0.0.1:1", "apiKeySecretRef": {"name": "k"}});
    let managed = json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "both modes",
            hss(json!({"external": ext, "managed": managed})),
            "exactly one of spec.managed or spec.external must be set",
        ),
        (
            "neither mode",
            hss(json!({})),
            "exactly one of spec.managed or spec.external must be set",
        ),
        (
            "ftp url",
            hss(json!({"external": {"url": "ftp://hs.example.com", "apiKeySecretRef": {"name": "k"}}})),
            "external.url must be an absolute http:// or https:// URL",
        ),
        (
            "plain-http decision webhook",
            hss(
                json!({"external": {"url": "https://hs.example.com", "apiKeySecretRef": {"name": "k"}},
                "enrollment": {"decisionWebhook": {"url": "http://decide.example.com"}}}),
            ),
            "decisionWebhook.url must be an absolute https:// URL",
        ),
        (
            "not a url",
            hss(json!({"external": {"url": "hs.example.com", "apiKeySecretRef": {"name": "k"}}})),
            "external.url must be an absolute http:// or https:// URL",
        ),
        (
            "no secret name",
            hss(json!({"external": {"url": "https://hs.example.com", "apiKeySecretRef": {}}})),
            "spec.external.apiKeySecretRef.name: Required value",
        ),
        (
            "empty secret name",
            hss(json!({"external": {"url": "https://hs.example.com", "apiKeySecretRef": {"name": ""}}})),
            "spec.external.apiKeySecretRef.name",
        ),
        (
            "no secret ref",
            hss(json!({"external": {"url": "https://hs.example.com"}})),
            "spec.external.apiKeySecretRef: Required value",
        ),
        (
            "unsupported managed version",
            hss(json!({"managed": {"version": "0.26.0", "serverUrl": "https://hs.example.com"}})),
            "spec.managed.version",
        ),
        (
            "approval with both forms",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}, "registration": {"authId": "hskey-authreq-x", "user": "alice"}, "preAuthKey": {"user": "alice"}}}),
            "exactly one of spec.registration or spec.preAuthKey must be set",
        ),
        (
            "approval with neither form",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}}}),
            "exactly one of spec.registration or spec.preAuthKey must be set",
        ),
        (
            "acl without policy",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "AclPolicy", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}}}),
            "exactly one of spec.policy or spec.configMapRef must be set",
        ),
        (
            "magic dns without domain",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "DnsConfig", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}, "nameservers": {"global": ["1.1.1.1"]}}}),
            "magicDns (on by default) needs spec.baseDomain",
        ),
        (
            "wildcard extra record",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "DnsConfig", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}, "magicDns": false, "overrideLocalDns": false,
                     "extraRecords": [{"name": "*.example.net", "type": "A", "value": "100.64.0.1"}]}}),
            "extra record names cannot be wildcards",
        ),
        (
            "A record with an IPv6 address",
            json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "DnsConfig", "metadata": {"name": "x"},
            "spec": {"serverRef": {"name": "s"}, "magicDns": false, "overrideLocalDns": false,
                     "extraRecords": [{"name": "a.example.net", "type": "A", "value": "fd7a::1"}]}}),
            "an A record's value must be an IPv4 address",
        ),
        (
            "url with credentials",
            hss(
                json!({"external": {"url": "https://user:pw@hs.example.com", "apiKeySecretRef": {"name": "k"}}}),
            ),
            "external.url must not carry credentials",
        ),
        (
            "url with a query",
            hss(
                json!({"external": {"url": "https://hs.example.com/?x=y", "apiKeySecretRef": {"name": "k"}}}),
            ),
            "external.url must not have a query",
        ),
        (
            "url with a port out of range",
            hss(json!({"external": {"url": "http://127.0.0.1:99999", "apiKeySecretRef": {"name": "k"}}})),
            "external.url has a port outside 1-65535",
        ),
        (
            "secret name that is not a Kubernetes name",
            hss(
                json!({"external": {"url": "https://hs.example.com", "apiKeySecretRef": {"name": "Bad_Name/../x"}}}),
            ),
            "spec.external.apiKeySecretRef.name: Invalid value",
        ),
        (
            "secret key with a space",
            hss(
                json!({"external": {"url": "https://hs.example.com", "apiKeySecretRef": {"name": "k", "key": "bad key!"}}}),
            ),
            "spec.external.apiKeySecretRef.key: Invalid value",
        ),
    ];
    let mut failures = Vec::new();
    for (what, obj, want) in cases {
        match create_raw(&client, &ns, obj).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if msg.contains(want) => {}
            Err(msg) => failures.push(format!("{what}: message {msg:?} lacks {want:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn operator_rbac_is_least_privilege() {
    let sa = "system:serviceaccount:headscale-operator-system:headscale-operator";
    let can = |verb: &str, resource: &str| {
        let out = kubectl(&["auth", "can-i", verb, resource, "--as", sa, "-A"]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource) in [
        ("watch", "headscaleservers.headscale.operator.dev"),
        ("patch", "headscaleservers.headscale.operator.dev/status"),
        ("watch", "aclpolicies.headscale.operator.dev"),
        ("patch", "aclpolicies.headscale.operator.dev/status"),
        ("watch", "nodeapprovals.headscale.operator.dev"),
        ("patch", "nodeapprovals.headscale.operator.dev/status"),
        ("get", "secrets"),
        // Pre-auth keys into Secrets owned by their NodeApproval (server-side apply).
        ("create", "secrets"),
        ("patch", "secrets"),
        ("get", "configmaps"),
        ("watch", "configmaps"),
        ("create", "events.events.k8s.io"),
        // Managed servers' children (server-side apply).
        ("create", "statefulsets.apps"),
        ("patch", "statefulsets.apps"),
        // A replace removes fields someone added to the StatefulSet (no more than patch).
        ("update", "statefulsets.apps"),
        ("patch", "services"),
        // And from the Service (externalIPs, another type).
        ("update", "services"),
        ("patch", "configmaps"),
        ("patch", "serviceaccounts"),
        ("patch", "roles.rbac.authorization.k8s.io"),
        ("patch", "rolebindings.rbac.authorization.k8s.io"),
        ("get", "pods"),
        ("get", "persistentvolumeclaims"),
        ("create", "ingresses.networking.k8s.io"),
        ("delete", "ingresses.networking.k8s.io"),
        // The NetworkPolicy in front of a managed server's pod; deleted when turned off.
        ("create", "networkpolicies.networking.k8s.io"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
    ] {
        assert!(can(verb, resource), "the operator needs {verb} {resource}");
    }
    for sub in ["exec", "attach", "portforward"] {
        let out = kubectl(&[
            "auth",
            "can-i",
            "create",
            "pods",
            "--subresource",
            sub,
            "--as",
            sa,
            "-A",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "the operator must not {sub} into pods"
        );
    }
    for (verb, resource) in [
        ("delete", "statefulsets.apps"),
        ("delete", "pods"),
        ("list", "pods"),
        ("bind", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "secrets"),
        ("update", "secrets"),
        ("deletecollection", "secrets"),
        ("update", "configmaps"),
        ("update", "serviceaccounts"),
        ("update", "networkpolicies.networking.k8s.io"),
        ("delete", "services"),
        ("update", "aclpolicies.headscale.operator.dev"),
        ("delete", "headscaleservers.headscale.operator.dev"),
        ("update", "headscaleservers.headscale.operator.dev"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("*", "*"),
    ] {
        assert!(!can(verb, resource), "the operator must not {verb} {resource}");
    }
}

#[tokio::test]
async fn only_the_lease_holder_reconciles() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = admin_client().await;
    let leases = Api::<Lease>::namespaced(client.clone(), "headscale-operator-system");
    let lease = leases
        .get("headscale-operator")
        .await
        .expect("the running operator holds a Lease");
    let pid = std::fs::read_to_string(run_dir().join("operator/operator.pid")).unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap_or_default();
    assert!(
        holder.ends_with(&format!("-{}", pid.trim())),
        "holder {holder:?} is not the operator (pid {pid})"
    );

    // A second replica with the same credentials stands by: ready, but not reconciling.
    let ns = namespace(&client, "standby").await;
    let log = run_dir().join(format!("standby-{ns}.log"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut standby = tokio::process::Command::new(env!("CARGO_BIN_EXE_headscale-operator"))
        .args(["run", "--log-format", "json", "--leader-election"])
        .args([
            "--leader-election-namespace",
            "headscale-operator-system",
            "--watch-namespace",
            &ns,
        ])
        .args(["--probe-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", run_dir().join("operator/operator.kubeconfig"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("standby replica waiting", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("another replica leads; waiting") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let readyz = reqwest_get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(readyz, "ready", "a standby replica is ready");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("became leader"),
        "the standby took the lease from a live leader:\n{text}"
    );
    standby.kill().await.unwrap();
}

/// Managed specs Headscale (or its clients) cannot run are refused by the schema and its
/// CEL rules with a readable message; a full valid spec passes every rule.
#[tokio::test]
async fn invalid_managed_specs_are_rejected_by_the_api_server() {
    let client = admin_client().await;
    let ns = namespace(&client, "managed-invalid").await;
    let hss = |name: &str, extra: Value| {
        let mut managed = json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"});
        for (k, v) in extra.as_object().unwrap() {
            managed[k] = v.clone();
        }
        json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
               "metadata": {"name": name}, "spec": {"managed": managed}})
    };
    let pg = json!({"host": "db", "database": "hs", "user": "hs"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "two replicas",
            json!({"replicas": 2}),
            "Headscale cannot share its database: replicas must be 1",
        ),
        (
            "an empty metrics peer",
            json!({"networkPolicy": {"metricsFrom": [{}]}}),
            "needs a podSelector, a namespaceSelector or an ipBlock",
        ),
        (
            "not a url",
            json!({"serverUrl": "hs.example.com"}),
            "serverUrl must be an absolute http:// or https:// URL",
        ),
        (
            "uppercase scheme",
            json!({"serverUrl": "HTTPS://hs.example.com"}),
            "serverUrl must be an absolute http:// or https:// URL",
        ),
        (
            "url with a path",
            json!({"serverUrl": "https://hs.example.com/vpn"}),
            "serverUrl must not have a path",
        ),
        (
            "url with a trailing slash",
            json!({"serverUrl": "https://hs.example.com/"}),
            "serverUrl must not have a path or a trailing slash",
        ),
        (
            "url with port 0",
            json!({"serverUrl": "https://hs.example.com:0"}),
            "serverUrl has a port outside 1-65535",
        ),
        (
            "url with port 99999",
            json!({"serverUrl": "https://hs.example.com:99999"}),
            "serverUrl has a port outside 1-65535",
        ),
        (
            "url with a unicode host",
            json!({"serverUrl": "https://bücher.example.com"}),
            "punycode (xn--) form",
        ),
        (
            "empty image",
            json!({"image": ""}),
            "image must name a repository",
        ),
        (
            "image with a digest",
            json!({"image": "repo@sha256:abc"}),
            "image must be a repository without a tag or digest",
        ),
        (
            "image with a tag",
            json!({"image": "docker.io/headscale/headscale:0.29.2"}),
            "image must be a repository without a tag or digest",
        ),
        (
            "url with credentials",
            json!({"serverUrl": "https://a:b@hs.example.com"}),
            "serverUrl must not carry credentials",
        ),
        (
            "version 0.27",
            json!({"version": "0.27.1"}),
            "managed mode runs Headscale 0.28.x or 0.29.x",
        ),
        (
            "version 0.30",
            json!({"version": "0.30.0"}),
            "managed mode runs Headscale 0.28.x or 0.29.x",
        ),
        (
            "postgres without its secret",
            json!({"database": {"type": "Postgres", "postgres": pg}}),
            "spec.managed.database.postgres.passwordSecretRef: Required value",
        ),
        (
            "postgres secret without its key",
            json!({"database": {"type": "Postgres", "postgres": {
            "host": "db", "database": "hs", "user": "hs", "passwordSecretRef": {"name": "pg"}}}}),
            "spec.managed.database.postgres.passwordSecretRef.key: Required value",
        ),
        (
            "postgres type without settings",
            json!({"database": {"type": "Postgres"}}),
            "database.postgres must be set when database.type is Postgres",
        ),
        (
            "oidc without client secret",
            json!({"oidc": {"issuer": "https://sso.example.com", "clientId": "hs"}}),
            "spec.managed.oidc.clientSecretRef: Required value",
        ),
        (
            "oidc issuer not a url",
            json!({"oidc": {"issuer": "sso.example.com", "clientId": "hs", "clientSecretRef": {"name": "o", "key": "s"}}}),
            "oidc.issuer must be an absolute http:// or https:// URL",
        ),
        (
            "derp with nothing",
            json!({"derp": {"embedded": false}}),
            "derp needs at least one relay",
        ),
        (
            "derp url",
            json!({"derp": {"urls": ["derp.example.com"]}}),
            "every derp.urls entry must be an absolute",
        ),
        (
            "v4 outside",
            json!({"prefixes": {"v4": "10.0.0.0/8"}}),
            "prefixes.v4 must be a network inside 100.64.0.0/10",
        ),
        (
            "v4 host bits",
            json!({"prefixes": {"v4": "100.64.0.1/24"}}),
            "prefixes.v4 must be a network inside 100.64.0.0/10",
        ),
        (
            "v6 outside",
            json!({"prefixes": {"v6": "fd00::/8"}}),
            "prefixes.v6 must be a network inside fd7a:115c:a1e0::/48",
        ),
        (
            "v4 /32",
            json!({"prefixes": {"v4": "100.64.0.0/32"}}),
            "prefixes.v4 must be a /30 or larger network",
        ),
        (
            "v6 /128",
            json!({"prefixes": {"v6": "fd7a:115c:a1e0::/128"}}),
            "prefixes.v6 must be a /126 or larger network",
        ),
        (
            "no prefix",
            json!({"prefixes": {"v4": "", "v6": ""}}),
            "at least one of v4 or v6 must be set",
        ),
        (
            "ipv4 relay",
            json!({"derp": {"ipv4": "2001:db8::1"}}),
            "derp.ipv4 must be an IPv4 address",
        ),
        (
            "pg user with space",
            json!({"database": {"type": "Postgres", "postgres": {
            "host": "db", "database": "hs", "user": "h s", "passwordSecretRef": {"name": "pg", "key": "password"}}}}),
            "spec.managed.database.postgres.user",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, extra, want)) in cases.into_iter().enumerate() {
        match create_raw(&client, &ns, hss(&format!("bad-{i}"), extra)).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if msg.contains(want) => {}
            Err(msg) => failures.push(format!("{what}: message {msg:?} lacks {want:?}")),
        }
    }
    // Root rules read the name: a managed server's becomes a Service's and pods' names.
    for (name, want) in [
        ("my.server".to_string(), "must be a DNS label"),
        ("a".repeat(53), "must be at most 52 characters"),
    ] {
        match create_raw(&client, &ns, hss(&name, json!({}))).await {
            Ok(()) => failures.push(format!("name {name}: accepted")),
            Err(msg) if msg.contains(want) => {}
            Err(msg) => failures.push(format!("name {name}: message {msg:?} lacks {want:?}")),
        }
    }
    let full = hss(
        "full",
        json!({
            "replicas": 1,
            "image": "registry.example.com:5000/mirror/headscale",
            "database": {"type": "Postgres", "postgres": {"host": "pg.db.svc", "database": "headscale",
                "user": "headscale", "passwordSecretRef": {"name": "pg", "key": "password"}, "sslMode": "verify-full"}},
            "prefixes": {"v4": "100.64.0.0/16", "v6": "fd7a:115c:a1e0:1::/64", "allocation": "Random"},
            "derp": {"embedded": true, "region": {"id": 950, "code": "corp", "name": "Corp"},
                     "ipv4": "203.0.113.10", "ipv6": "2001:db8::10",
                     "urls": ["https://controlplane.tailscale.com/derpmap/default"]},
            "oidc": {"issuer": "https://sso.example.com/realms/corp", "clientId": "hs",
                     "clientSecretRef": {"name": "oidc", "key": "secret"}, "allowedDomains": ["example.com"]},
            "nodeExpiry": "90d",
            "ephemeralInactivityTimeout": "1h",
        }),
    );
    if let Err(msg) = create_raw(&client, &ns, full).await {
        failures.push(format!("a full valid spec was refused: {msg}"));
    }
    if let Err(msg) = create_raw(&client, &ns, hss("single-stack", json!({"prefixes": {"v6": ""}}))).await {
        failures.push(format!("a single-stack spec was refused: {msg}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
