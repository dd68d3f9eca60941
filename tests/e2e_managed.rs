//! Managed mode on the real control plane: the operator builds a managed server's
//! StatefulSet, Service, ConfigMap, Secrets and RBAC; KWOK plays the kubelet, so the
//! pod becomes Ready without running. To prove the whole path, `RealPod`
//! (`tests/support/managed.rs`) then plays the pod's containers with real parts: a real
//! Headscale started with the very config and keys the operator wrote, and the
//! operator's API key minted over Headscale's unix socket into the Secret the
//! keyholder fills.
//!
//! Run by `make test` (e2e/test.sh), which starts the operator with
//! `--allow-endpoint-annotation` so it can reach the local Headscale.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::managed::*;
use support::*;

use headscale_operator::api::HeadscaleServer;

#[tokio::test]
async fn a_managed_server_gets_its_children_and_a_ready_pod() {
    let client = admin_client().await;
    let ns = namespace(&client, "managed").await;
    let class = volume_for(&client, &ns).await;
    let hs = create_server(&client, managed("hs", &ns, "0.29.2", &class, json!({}))).await;

    let sts: StatefulSet = wait_for("StatefulSet", WAIT, || async {
        Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get_opt("hs")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    // Everything is owned by the server (garbage-collected with it).
    assert!(owned_by(&sts.metadata, &hs));
    let spec = &sts.spec;
    assert_eq!(spec.replicas, Some(1));
    let pod_spec = spec.template.spec.as_ref().unwrap();
    let names: Vec<_> = pod_spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["headscale", "keyholder"]);
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    assert_eq!(
        pod_spec.containers[0].image.as_deref(),
        Some("docker.io/headscale/headscale:0.29.2")
    );
    let keys_volume = pod_spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "keys")
        .unwrap();
    assert_eq!(keys_volume.secret.as_ref().unwrap().default_mode, Some(0o400));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("hs-config")
        .await
        .unwrap();
    assert!(owned_by(&cm.metadata, &hs));
    let config = cm.data.as_ref().unwrap()["config.yaml"].clone();
    let keys = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("hs-keys")
        .await
        .unwrap();
    // The keys belong with the state: kept with the volume, not owned by the server.
    assert!(!owned_by(&keys.metadata, &hs));
    let noise = String::from_utf8(keys.data.as_ref().unwrap()["noise.key"].0.clone()).unwrap();
    assert!(
        noise.starts_with("privkey:") && noise.len() == 72,
        "noise key format"
    );
    assert!(!config.contains("privkey:"), "no key in the ConfigMap");
    for (kind, owned) in [
        (
            "Service",
            Api::<Service>::namespaced(client.clone(), &ns)
                .get("hs")
                .await
                .unwrap()
                .metadata,
        ),
        (
            "ServiceAccount",
            Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                .get("hs-headscale")
                .await
                .unwrap()
                .metadata,
        ),
        (
            "Role",
            Api::<Role>::namespaced(client.clone(), &ns)
                .get("hs-keyholder")
                .await
                .unwrap()
                .metadata,
        ),
        (
            "RoleBinding",
            Api::<RoleBinding>::namespaced(client.clone(), &ns)
                .get("hs-keyholder")
                .await
                .unwrap()
                .metadata,
        ),
        (
            "NetworkPolicy",
            Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), &ns)
                .get("hs")
                .await
                .unwrap()
                .metadata,
        ),
        (
            "Secret hs-api-key",
            Api::<Secret>::namespaced(client.clone(), &ns)
                .get("hs-api-key")
                .await
                .unwrap()
                .metadata,
        ),
    ] {
        assert!(owned_by(&owned, &hs), "{kind} is owned by the server");
    }
    let role = Api::<Role>::namespaced(client.clone(), &ns)
        .get("hs-keyholder")
        .await
        .unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["hs-api-key".to_string()][..])
    );

    // KWOK runs the pod; without a keyholder there is no key yet, and status says so.
    wait_pod_ready(&client, &ns, "hs-0").await;
    let msg = wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    assert!(msg.contains("hs-api-key"), "{msg}");

    // The volume claim is bound and kept when the server is deleted.
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("data-hs-0")
        .await
        .unwrap();
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));

    // The keys follow the volume's fate on every change of deleteOnServerDeletion, not
    // only when they are created; the keys themselves are never rewritten.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for (delete, owned) in [(true, true), (false, false)] {
        patch_server(
            &client,
            &ns,
            "hs",
            json!({"spec": {"managed": {"database": {"sqlite": {"deleteOnServerDeletion": delete}}}}}),
        )
        .await;
        wait_for(
            &format!("keys Secret owned by the server: {owned}"),
            WAIT,
            || async {
                let s = secrets.get("hs-keys").await.map_err(|e| e.to_string())?;
                if owned_by(&s.metadata, &hs) == owned {
                    Ok(())
                } else {
                    Err(format!("{:?}", s.metadata.owner_references))
                }
            },
        )
        .await;
        let now = secrets.get("hs-keys").await.unwrap();
        assert_eq!(now.data, keys.data, "the keys were rewritten");
    }
    // The StatefulSet controller drops the claim's owner reference (set while
    // whenDeleted was Delete) on its own time; deleting the server before that would
    // let the garbage collector take the volume.
    wait_for("the volume no longer owned by the StatefulSet", WAIT, || async {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get("data-hs-0")
            .await
            .map_err(|e| e.to_string())?;
        match pvc.metadata.owner_references {
            Some(refs) if !refs.is_empty() => Err(format!("{refs:?}")),
            _ => Ok(()),
        }
    })
    .await;
    Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .delete("hs", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for("children garbage-collected", WAIT, || async {
        let left = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("hs-config")
            .await
            .unwrap()
            .is_some()
            || Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get_opt("hs")
                .await
                .unwrap()
                .is_some();
        if left {
            Err("children remain".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("data-hs-0")
            .await
            .unwrap()
            .is_some(),
        "the data volume is kept unless spec says delete"
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("hs-keys")
            .await
            .unwrap()
            .is_some(),
        "the keys are kept with the volume"
    );
}

#[tokio::test]
async fn a_spec_change_rolls_the_pod_once_and_an_idle_resync_writes_nothing() {
    let client = admin_client().await;
    let ns = namespace(&client, "roll").await;
    let class = volume_for(&client, &ns).await;
    create_server(&client, managed("hs", &ns, "0.29.2", &class, json!({}))).await;
    let first = wait_pod_ready(&client, &ns, "hs-0").await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;

    // Idle: the operator resyncs every 2 s; nothing is written.
    let before = child_versions(&client, &ns, "hs").await;
    let writes = writes_in(&ns);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        child_versions(&client, &ns, "hs").await,
        before,
        "an idle resync changed an object"
    );
    assert_eq!(writes_in(&ns), writes, "an idle resync wrote to the API server");
    println!("writes for a new managed server: {writes}; idle resyncs over 7 s: 0");

    // A change of the rendered config rolls the pod exactly once.
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let gen_before = sts_api.get("hs").await.unwrap().metadata.generation.unwrap();
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"logging": {"level": "debug"}}}}),
    )
    .await;
    let second = wait_new_pod(&client, &ns, "hs-0", first.uid()).await;
    wait_pod_ready(&client, &ns, "hs-0").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sts = sts_api.get("hs").await.unwrap();
    assert_eq!(
        sts.metadata.generation.unwrap(),
        gen_before + 1,
        "one template change"
    );
    let now = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("hs-0")
        .await
        .unwrap();
    assert_eq!(now.uid(), second.uid(), "the pod was rolled more than once");
    // A change that does not touch the config (pod annotations are the pod's) rolls
    // once too; a change of nothing rolls nothing.
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"logging": {"level": "debug"}}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sts_api.get("hs").await.unwrap().metadata.generation.unwrap(),
        gen_before + 1
    );
}

#[tokio::test]
async fn a_crash_looping_pod_is_still_replaced_when_the_spec_is_fixed() {
    let client = admin_client().await;
    let ns = namespace(&client, "crashloop").await;
    let class = volume_for(&client, &ns).await;
    create_server(&client, managed("hs", &ns, "0.29.2", &class, json!({}))).await;
    let first = wait_pod_ready(&client, &ns, "hs-0").await;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("hs")
        .await
        .unwrap();
    assert_eq!(sts.spec.pod_management_policy.as_deref(), Some("Parallel"));

    // KWOK runs no containers, so the test writes what the kubelet would (kwok's stages
    // only act on Pending pods): the headscale container in `headscale`, the pod not Ready.
    let set_headscale = |headscale: serde_json::Value| {
        let statuses: Vec<_> = first
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| {
                let mut s = json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                    "restartCount": 4, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}});
                if c.name == "headscale"
                    && let Some(fields) = headscale.as_object()
                {
                    for (k, v) in fields {
                        s[k] = v.clone();
                    }
                }
                s
            })
            .collect();
        let client = client.clone();
        let ns = ns.clone();
        async move {
            Api::<Pod>::namespaced(client, &ns)
                .patch_status(
                    "hs-0",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": {
                        "conditions": [
                            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                            {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                        ],
                        "containerStatuses": statuses,
                    }})),
                )
                .await
                .unwrap();
        }
    };
    // An image that cannot be pulled needs a person, and status says which and why.
    set_headscale(json!({"state": {"waiting": {"reason": "ImagePullBackOff",
        "message": "Back-off pulling image \"docker.io/headscale/headscale:0.29.2\""}}}))
    .await;
    let msg = wait_reason(&client, &ns, "hs", "PodFailing").await;
    assert!(
        msg.contains("\"headscale\"")
            && msg.contains("ImagePullBackOff")
            && msg.contains("docker.io/headscale/headscale:0.29.2"),
        "{msg}"
    );
    // Headscale exits at start (as with an OIDC issuer it cannot reach).
    set_headscale(
        json!({"state": {"waiting": {"reason": "CrashLoopBackOff", "message": null}},
        "lastState": {"terminated": {"exitCode": 1,
            "message": "{\"level\":\"fatal\",\"message\":\"creating OIDC provider\"}"}}}),
    )
    .await;
    let msg = wait_reason(&client, &ns, "hs", "HeadscaleFailed").await;
    assert!(msg.contains("creating OIDC provider"), "{msg}");

    // The fix (any change of the rendered config): the StatefulSet replaces the pod
    // that is not Ready (with OrderedReady it would wait for it forever).
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"logging": {"level": "debug"}}}}),
    )
    .await;
    // (the not-Ready pod replaced)
    wait_new_pod(&client, &ns, "hs-0", first.uid()).await;
    wait_pod_ready(&client, &ns, "hs-0").await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
}

#[tokio::test]
async fn a_statefulset_from_before_parallel_keeps_working_and_is_made_parallel_when_recreated() {
    let client = admin_client().await;
    let ns = namespace(&client, "legacy").await;
    let class = volume_for(&client, &ns).await;
    // Refused at first (nothing applied), so the test can put an OrderedReady StatefulSet
    // of the server's in place, as an earlier build made it. Its claim makes the server
    // one that has run, hence the permission for new keys.
    let hs = create_server(
        &client,
        managed(
            "hs",
            &ns,
            "0.29.2",
            &class,
            json!({"ephemeralInactivityTimeout": "10s"}),
        ),
    )
    .await;
    wait_reason(&client, &ns, "hs", "InvalidDuration").await;
    let labels = json!({"app.kubernetes.io/name": "headscale", "app.kubernetes.io/instance": "hs"});
    let legacy: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "hs", "labels": labels, "ownerReferences": [{
            "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer", "name": "hs",
            "uid": hs.uid(), "controller": true}]},
        "spec": {
            "replicas": 1, "serviceName": "hs", "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "headscale", "image": "old:1"}]}},
            "volumeClaimTemplates": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": class}}],
        },
    }))
    .unwrap();
    let stss = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    stss.create(&PostParams::default(), &legacy).await.unwrap();
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"metadata": {"annotations": {"headscale.operator.dev/regenerate-keys": "true"}},
            "spec": {"managed": {"ephemeralInactivityTimeout": "30m"}}}),
    )
    .await;
    // The policy is immutable: the StatefulSet keeps it and gets everything else, instead
    // of every apply being refused.
    wait_for("the legacy StatefulSet updated", WAIT, || async {
        let s = stss.get("hs").await.map_err(|e| e.to_string())?;
        let image = s.spec.template.spec.as_ref().unwrap().containers[0].image.clone();
        match (s.spec.pod_management_policy.as_deref(), image.as_deref()) {
            (Some("OrderedReady"), Some("docker.io/headscale/headscale:0.29.2")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The legacy pod (old:1) is Ready at once under KWOK: wait for the rolled one.
    let pod = wait_for("the rolled pod Ready", WAIT, || async {
        let p = wait_pod_ready(&client, &ns, "hs-0").await;
        let image = p.spec.as_ref().unwrap().containers[0].image.clone();
        if image.as_deref() == Some("docker.io/headscale/headscale:0.29.2") {
            Ok(p)
        } else {
            Err(format!("{image:?}"))
        }
    })
    .await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;

    // The README's way to the current policy: delete it, orphaning the pod.
    let old_uid = stss.get("hs").await.unwrap().uid();
    stss.delete(
        "hs",
        &DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    wait_for("the StatefulSet made again, Parallel", WAIT, || async {
        let s = stss
            .get_opt("hs")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("gone")?;
        if s.uid() != old_uid && s.spec.pod_management_policy.as_deref() == Some("Parallel") {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", s.uid(), s.spec.pod_management_policy))
        }
    })
    .await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    let now = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("hs-0")
        .await
        .unwrap();
    assert_eq!(now.uid(), pod.uid(), "the running pod was adopted, not replaced");
}

#[tokio::test]
async fn servers_with_one_name_in_two_namespaces_and_two_in_one_do_not_collide() {
    let client = admin_client().await;
    let ns1 = namespace(&client, "multi").await;
    let ns2 = namespace(&client, "multi").await;
    let c1 = volume_for(&client, &ns1).await;
    let c2 = volume_for(&client, &ns2).await;
    create_server(&client, managed("a", &ns1, "0.29.2", &c1, json!({}))).await;
    create_server(
        &client,
        managed(
            "b",
            &ns1,
            "0.28.0",
            &c1,
            json!({"database": {"sqlite": {"storageClassName": "none-such"}}}),
        ),
    )
    .await;
    create_server(&client, managed("a", &ns2, "0.28.0", &c2, json!({}))).await;
    for (ns, name, version) in [
        (&ns1, "a", "0.29.2"),
        (&ns1, "b", "0.28.0"),
        (&ns2, "a", "0.28.0"),
    ] {
        let sts: StatefulSet = wait_for(&format!("{ns}/{name}"), WAIT, || async {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_string())
        })
        .await;
        let image = sts.spec.template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap();
        assert!(image.ends_with(version), "{ns}/{name}: {image}");
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&format!("{name}-config"))
            .await
            .unwrap();
        assert!(cm.data.unwrap()["config.yaml"].contains(&format!("{name}.{ns}.example.test")));
    }
    // Two servers' keys are their own.
    let key = |ns: String, name: &'static str| {
        let client = client.clone();
        async move {
            let s = Api::<Secret>::namespaced(client, &ns)
                .get(&format!("{name}-keys"))
                .await
                .unwrap();
            s.data.unwrap()["noise.key"].0.clone()
        }
    };
    let (k1, k2, k3) = (
        key(ns1.clone(), "a").await,
        key(ns1.clone(), "b").await,
        key(ns2.clone(), "a").await,
    );
    assert!(
        k1 != k2 && k1 != k3 && k2 != k3,
        "every server has its own noise key"
    );
    // b's claim names a storage class nobody serves: its volume stays pending, and
    // status says so, while a in the same namespace runs.
    let msg = wait_reason(&client, &ns1, "b", "VolumePending").await;
    assert!(msg.contains("data-b-0") && msg.contains("none-such"), "{msg}");
    wait_reason(&client, &ns1, "a", "ApiKeyPending").await;
    wait_reason(&client, &ns2, "a", "ApiKeyPending").await;
}

/// The API server's refusal of creating `obj` in `ns`, as text.
async fn refused_at_create(client: &kube::Client, ns: &str, obj: serde_json::Value) -> String {
    let hs: HeadscaleServer = serde_json::from_value(obj).unwrap();
    Api::<HeadscaleServer>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &hs)
        .await
        .expect_err("refused")
        .to_string()
}

#[tokio::test]
async fn bad_managed_specs_are_refused_and_change_nothing() {
    let client = admin_client().await;
    let ns = namespace(&client, "badmanaged").await;
    let class = volume_for(&client, &ns).await;

    // A version managed mode does not run: refused by the API server.
    let err = refused_at_create(&client, &ns, managed("old", &ns, "0.27.1", &class, json!({}))).await;
    assert!(err.contains("0.28") && err.contains("0.29"), "{err}");
    // Two replicas: refused with the reason.
    let err = refused_at_create(
        &client,
        &ns,
        managed("two", &ns, "0.29.2", &class, json!({"replicas": 2})),
    )
    .await;
    assert!(err.contains("replicas must be 1"), "{err}");

    // Postgres whose password Secret does not exist: reported, nothing created.
    create_server(
        &client,
        managed(
            "pg",
            &ns,
            "0.29.2",
            &class,
            json!({"database": {"type": "Postgres", "postgres": {"host": "db", "database": "hs", "user": "hs",
                "passwordSecretRef": {"name": "pg-password", "key": "password"}}}}),
        ),
    )
    .await;
    let msg = wait_reason(&client, &ns, "pg", "SecretNotFound").await;
    assert!(
        msg.contains("pg-password") && msg.contains("passwordSecretRef"),
        "{msg}"
    );
    // A password Headscale would hand the driver broken (it is not quoted): refused,
    // naming the field and never the value.
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "pg-password"}, "stringData": {"password": "o'brien-pw"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let msg = wait_reason(&client, &ns, "pg", "SecretKeyInvalid").await;
    assert!(
        msg.contains("passwordSecretRef") && msg.contains("quotes") && !msg.contains("brien"),
        "{msg}"
    );

    // OIDC whose client secret key is missing.
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "oidc"}, "stringData": {"other": "x"}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    create_server(
        &client,
        managed(
            "oidc",
            &ns,
            "0.29.2",
            &class,
            json!({"oidc": {"issuer": "https://idp.example.test", "clientId": "hs",
                "clientSecretRef": {"name": "oidc", "key": "client-secret"}}}),
        ),
    )
    .await;
    let msg = wait_reason(&client, &ns, "oidc", "SecretKeyMissing").await;
    assert!(
        msg.contains("client-secret") && msg.contains("clientSecretRef"),
        "{msg}"
    );

    for name in ["pg", "oidc"] {
        let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .unwrap();
        assert!(
            sts.is_none(),
            "{name}: nothing may be deployed from a refused spec"
        );
    }

    // A running server whose spec turns invalid keeps what it runs.
    create_server(&client, managed("good", &ns, "0.29.2", &class, json!({}))).await;
    wait_reason(&client, &ns, "good", "ApiKeyPending").await;
    let before = child_versions(&client, &ns, "good").await;
    // (Headscale refuses an ephemeral timeout of 65 s or less at start; the schema
    // cannot tell, validation does.)
    patch_server(
        &client,
        &ns,
        "good",
        json!({"spec": {"managed": {"ephemeralInactivityTimeout": "60s"}}}),
    )
    .await;
    let msg = wait_reason(&client, &ns, "good", "InvalidDuration").await;
    assert!(
        msg.contains("65s") && msg.contains("nothing was changed"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        child_versions(&client, &ns, "good").await,
        before,
        "a refused spec changed the running server"
    );

    // A name that cannot be a Service name: refused by the schema, nothing is created
    // (the other cases the schema refuses are in e2e.rs).
    let err = refused_at_create(
        &client,
        &ns,
        managed("my.server", &ns, "0.29.2", &class, json!({})),
    )
    .await;
    assert!(err.contains("DNS label"), "{err}");

    // A resource quantity the API server cannot decode (it would answer 500, forever):
    // refused by validation, naming the field.
    create_server(
        &client,
        managed(
            "lots",
            &ns,
            "0.29.2",
            &class,
            json!({"pod": {"resources": {"limits": {"cpu": "lots"}}}}),
        ),
    )
    .await;
    let msg = wait_reason(&client, &ns, "lots", "InvalidSpec").await;
    assert!(msg.contains("spec.managed.pod.resources.limits.cpu"), "{msg}");

    // A key that would need rotating as soon as it is minted: the keyholder would refuse
    // to start; the operator says so first.
    create_server(
        &client,
        managed(
            "keys",
            &ns,
            "0.29.2",
            &class,
            json!({"apiKey": {"lifetime": "1d"}}),
        ),
    )
    .await;
    let msg = wait_reason(&client, &ns, "keys", "InvalidSpec").await;
    assert!(msg.contains("rotateBefore"), "{msg}");
    // A lifetime beyond any rotation schedule (the keyholder once exited on it).
    create_server(
        &client,
        managed(
            "forever",
            &ns,
            "0.29.2",
            &class,
            json!({"apiKey": {"lifetime": "5000000000s"}}),
        ),
    )
    .await;
    let msg = wait_reason(&client, &ns, "forever", "InvalidSpec").await;
    assert!(msg.contains("at most 3650d"), "{msg}");

    // A node selector the API server refuses (validation does not check label keys): the
    // whole change is refused by the dry run, so the running server's ConfigMap is not
    // rewritten either.
    let cm_before = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("good-config")
        .await
        .unwrap();
    patch_server(
        &client,
        &ns,
        "good",
        json!({"spec": {"managed": {"ephemeralInactivityTimeout": "30m", "logging": {"level": "debug"},
            "pod": {"nodeSelector": {"not a label key!": "x"}}}}}),
    )
    .await;
    let msg = wait_reason(&client, &ns, "good", "ApplyRejected").await;
    assert!(
        msg.contains("StatefulSet") && msg.contains("nothing was changed"),
        "{msg}"
    );
    let cm_after = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("good-config")
        .await
        .unwrap();
    assert_eq!(
        cm_after.data, cm_before.data,
        "half of a refused change was applied"
    );

    // A new server whose first change is refused has not run: once fixed it gets its keys
    // (a refused apply once recorded a config hash, and the server then counted as one
    // that had lost its keys).
    create_server(
        &client,
        managed(
            "fresh",
            &ns,
            "0.29.2",
            &class,
            json!({"pod": {"nodeSelector": {"not a label key!": "x"}}}),
        ),
    )
    .await;
    wait_reason(&client, &ns, "fresh", "ApplyRejected").await;
    let status = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .get("fresh")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.config_hash, None, "nothing was applied");
    patch_server(
        &client,
        &ns,
        "fresh",
        json!({"spec": {"managed": {"pod": {"nodeSelector": null}}}}),
    )
    .await;
    // (The namespace's one volume is taken, so it waits for one, with its keys made.)
    wait_reason(&client, &ns, "fresh", "VolumePending").await;
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("fresh-keys")
            .await
            .unwrap()
            .is_some()
    );

    // Names another object already has are not taken over.
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "taken-config"}, "data": {"x": "y"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    create_server(&client, managed("taken", &ns, "0.29.2", &class, json!({}))).await;
    let msg = wait_reason(&client, &ns, "taken", "NameConflict").await;
    assert!(msg.contains("taken-config"), "{msg}");
    // Nothing of it was created (the conflict is found before anything is written).
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("taken-keys")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt("taken")
            .await
            .unwrap()
            .is_none()
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("taken-config")
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap().get("x").map(String::as_str),
        Some("y"),
        "someone else's ConfigMap was changed"
    );
}

/// The Postgres password and the OIDC client secret reach the pod only by reference
/// (an env `secretKeyRef`, a Secret volume), never the ConfigMap, the StatefulSet, the
/// server's status, an Event or the operator's log; a new value of either rolls the pod
/// exactly once (their hash is on the pod template).
#[tokio::test]
async fn referenced_secrets_never_leak_and_a_new_value_rolls_the_pod_once() {
    const PASSWORD: &str = "pgpass-Xq7Vw2Lr9Tz4";
    const CLIENT_SECRET: &str = "oidc-Hk3Np8Ys5Jm1";
    const NEW_CLIENT_SECRET: &str = "oidc-Bd6Rf0Wc2Gq9";
    let client = admin_client().await;
    let ns = namespace(&client, "refsecrets").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for (name, key, value) in [
        ("pg", "password", PASSWORD),
        ("idp", "client-secret", CLIENT_SECRET),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}})).unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    create_server(
        &client,
        managed(
            "hs",
            &ns,
            "0.29.2",
            "unused",
            json!({
                "database": {"type": "Postgres", "postgres": {"host": "db", "database": "hs", "user": "hs",
                    "passwordSecretRef": {"name": "pg", "key": "password"}}},
                "oidc": {"issuer": "https://idp.example.test", "clientId": "hs",
                    "clientSecretRef": {"name": "idp", "key": "client-secret"}},
            }),
        ),
    )
    .await;
    let first = wait_pod_ready(&client, &ns, "hs-0").await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let hash = |s: &StatefulSet| {
        s.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("headscale.operator.dev/config-hash").cloned())
            .expect("config hash on the pod template")
    };
    let before = sts_api.get("hs").await.unwrap();
    let gen_before = before.metadata.generation.unwrap();

    // A new client secret: the pod rolls once.
    secrets
        .patch(
            "idp",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"client-secret": NEW_CLIENT_SECRET}})),
        )
        .await
        .unwrap();
    let rolled = wait_for("the hash follows the new client secret", WAIT, || async {
        let s = sts_api.get("hs").await.map_err(|e| e.to_string())?;
        if hash(&s) != hash(&before) {
            Ok(s)
        } else {
            Err("same hash".to_string())
        }
    })
    .await;
    assert_eq!(rolled.metadata.generation.unwrap(), gen_before + 1);
    let second = wait_new_pod(&client, &ns, "hs-0", first.uid()).await;
    wait_pod_ready(&client, &ns, "hs-0").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sts_api.get("hs").await.unwrap().metadata.generation.unwrap(),
        gen_before + 1,
        "one template change for one new secret value"
    );
    let now = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("hs-0")
        .await
        .unwrap();
    assert_eq!(now.uid(), second.uid(), "the pod was rolled more than once");

    // Nothing shows the values.
    let mut objects = vec![
        serde_json::to_value(
            Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
                .get("hs")
                .await
                .unwrap(),
        )
        .unwrap(),
        serde_json::to_value(sts_api.get("hs").await.unwrap()).unwrap(),
        serde_json::to_value(now).unwrap(),
    ];
    for cm in Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
    {
        objects.push(serde_json::to_value(cm).unwrap());
    }
    assert_no_leak(
        &client,
        &ns,
        &objects,
        &[PASSWORD, CLIENT_SECRET, NEW_CLIENT_SECRET],
    )
    .await;
}

async fn becomes_ready_with_real_headscale(version: &str) {
    let client = admin_client().await;
    let ns = namespace(&client, "realpod").await;
    let class = volume_for(&client, &ns).await;
    create_server(&client, managed("hs", &ns, version, &class, json!({}))).await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    let mut pod = RealPod::start(&client, &ns, "hs", version).await;
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"metadata": {"annotations": {"headscale.operator.dev/endpoint": pod.url}}}),
    )
    .await;
    pod.start_keyholder(&client, &ns, "hs").await;
    let msg = wait_reason(&client, &ns, "hs", "Ready").await;
    assert!(msg.contains(version), "{msg}");
    let hs = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .get("hs")
        .await
        .unwrap();
    let status = hs.status.clone().unwrap();
    assert_eq!(status.endpoint.as_deref(), Some(pod.url.as_str()));
    let key_id = status
        .api_key
        .clone()
        .and_then(|k| k.id)
        .expect("status names the key id");
    assert!(status.api_key.unwrap().expiration.is_some());
    assert!(status.config_hash.is_some());
    // The operator confirms the key it used, so the keyholder may retire older ones.
    let secret = wait_for("the key confirmed", WAIT, || async {
        let s = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("hs-api-key")
            .await
            .unwrap();
        match s.annotations().get("headscale.operator.dev/api-key-confirmed-id") {
            Some(id) if *id == key_id => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let key = String::from_utf8(secret.data.unwrap()["apiKey"].0.clone()).unwrap();

    // A rejected key heals itself: expire it behind the operator's back; the operator
    // sees 401, marks it, the keyholder mints a new one, the server is Ready again.
    let admin = headscale_operator::headscale::Client::new(
        &pod.url,
        headscale_operator::secret::SecretString::new(key.clone()),
    )
    .unwrap();
    let id: headscale_operator::headscale::ApiKeyId = key_id.parse().unwrap();
    admin
        .expire_api_key(&headscale_operator::headscale::ApiKeyRef::Id(id))
        .await
        .unwrap();
    wait_for("a new key and Ready", WAIT, || async {
        let hs = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .get("hs")
            .await
            .unwrap();
        let s = hs.status.unwrap();
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let new_id = s.api_key.and_then(|k| k.id);
        if ready && new_id.as_deref() != Some(key_id.as_str()) {
            Ok(())
        } else {
            Err(format!("ready {ready}, key {new_id:?}"))
        }
    })
    .await;
    let reasons: Vec<String> = events(&client, &ns)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "ApiKeyRejected"), "{reasons:?}");

    // No key in the ConfigMap, the server's status and spec, Events or the log.
    let keys = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("hs-keys")
        .await
        .unwrap();
    let noise = String::from_utf8(keys.data.as_ref().unwrap()["noise.key"].0.clone()).unwrap();
    let derp = String::from_utf8(keys.data.as_ref().unwrap()["derp.key"].0.clone()).unwrap();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("hs-config")
        .await
        .unwrap();
    let noise_hex = noise.trim_start_matches("privkey:").to_string();
    assert_no_leak(
        &client,
        &ns,
        &[
            serde_json::to_value(&hs).unwrap(),
            serde_json::to_value(&cm).unwrap(),
        ],
        &[&key, &noise_hex, derp.trim_start_matches("privkey:")],
    )
    .await;
    assert!(
        !pod.keyholder_log().contains(&key),
        "the keyholder logged the key"
    );
}

#[tokio::test]
async fn a_managed_server_becomes_ready_with_real_headscale_0_29() {
    becomes_ready_with_real_headscale("0.29.2").await;
}

#[tokio::test]
async fn a_managed_server_becomes_ready_with_real_headscale_0_28() {
    becomes_ready_with_real_headscale("0.28.0").await;
}

#[tokio::test]
async fn edits_behind_the_operators_back_are_repaired_and_lost_keys_are_never_silently_replaced() {
    let client = admin_client().await;
    let ns = namespace(&client, "drift").await;
    let class = volume_for(&client, &ns).await;
    create_server(&client, managed("hs", &ns, "0.29.2", &class, json!({}))).await;
    wait_pod_ready(&client, &ns, "hs-0").await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let stss = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let roles = Api::<Role>::namespaced(client.clone(), &ns);
    let config = cms.get("hs-config").await.unwrap().data.unwrap()["config.yaml"].clone();

    // Someone edits the config, swaps the image and deletes the keyholder's Role.
    cms.patch(
        "hs-config",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"config.yaml": "server_url: https://evil.example.net\n"}})),
    )
    .await
    .unwrap();
    stss.patch(
        "hs",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "replace",
                "path": "/spec/template/spec/containers/0/image", "value": "docker.io/evil/headscale:latest"}]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    roles
        .delete("hs-keyholder", &DeleteParams::default())
        .await
        .unwrap();
    // And adds what the operator never set: the host's network and an environment
    // variable that would switch Headscale's policy to a file.
    stss.patch(
        "hs",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": true},
                {"op": "add", "path": "/spec/template/spec/containers/0/env",
                 "value": [{"name": "HEADSCALE_POLICY_MODE", "value": "file"}]},
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    wait_for("the additions removed", WAIT, || async {
        let pod = stss.get("hs").await.unwrap().spec.template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap_or_default();
        if pod.host_network != Some(true) && env.iter().all(|e| e.name != "HEADSCALE_POLICY_MODE") {
            Ok(())
        } else {
            Err(format!("hostNetwork {:?}, env {env:?}", pod.host_network))
        }
    })
    .await;
    wait_for("the edits repaired", WAIT, || async {
        let cm = cms.get("hs-config").await.unwrap().data.unwrap()["config.yaml"].clone();
        let image = stss
            .get("hs")
            .await
            .unwrap()
            .spec
            .template
            .spec
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap();
        let role = roles.get_opt("hs-keyholder").await.unwrap().is_some();
        if cm == config && image == "docker.io/headscale/headscale:0.29.2" && role {
            Ok(())
        } else {
            Err(format!(
                "config restored {}, image {image}, role {role}",
                cm == config
            ))
        }
    })
    .await;
    let log = operator_log();
    assert!(
        log.contains("repairing a change made outside the operator"),
        "no repair logged"
    );

    // The keys Secret is deleted: the server has run (its volume exists), so new keys
    // would disconnect every client; the operator refuses until a person says yes.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let old = secrets.get("hs-keys").await.unwrap().data.unwrap()["noise.key"].clone();
    secrets.delete("hs-keys", &DeleteParams::default()).await.unwrap();
    let msg = wait_reason(&client, &ns, "hs", "KeysSecretMissing").await;
    assert!(
        msg.contains("regenerate-keys") && msg.contains("data-hs-0"),
        "{msg}"
    );
    assert!(
        secrets.get_opt("hs-keys").await.unwrap().is_none(),
        "keys were regenerated without asking"
    );
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"metadata": {"annotations": {"headscale.operator.dev/regenerate-keys": "true"}}}),
    )
    .await;
    let new = wait_for("new keys", WAIT, || async {
        match secrets.get_opt("hs-keys").await.unwrap() {
            Some(s) => Ok(s.data.unwrap()["noise.key"].clone()),
            None => Err("none".to_string()),
        }
    })
    .await;
    assert_ne!(new, old);
    // The permission was for this once: the annotation is removed.
    wait_for("the regenerate-keys annotation removed", WAIT, || async {
        let hs = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .get("hs")
            .await
            .unwrap();
        match hs.annotations().get("headscale.operator.dev/regenerate-keys") {
            None => Ok(()),
            Some(v) => Err(v.clone()),
        }
    })
    .await;
    // Given while the keys exist, the annotation is no standing order: it is removed
    // unused, the keys stay, and a later loss asks again.
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"metadata": {"annotations": {"headscale.operator.dev/regenerate-keys": "true"}}}),
    )
    .await;
    wait_for("the unused regenerate-keys annotation removed", WAIT, || async {
        let hs = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .get("hs")
            .await
            .unwrap();
        match hs.annotations().get("headscale.operator.dev/regenerate-keys") {
            None => Ok(()),
            Some(v) => Err(v.clone()),
        }
    })
    .await;
    assert_eq!(
        secrets.get("hs-keys").await.unwrap().data.unwrap()["noise.key"],
        new,
        "the keys were kept"
    );
    // The keys stay with the state: not owned by the server, so deleting the server
    // (the volume is kept) keeps them too.
    let keys = secrets.get("hs-keys").await.unwrap();
    assert!(keys.metadata.owner_references.unwrap_or_default().is_empty());

    // A server cannot flip to external mode (its workload and state would be orphaned).
    let err = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .patch(
            "hs",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"managed": null,
                "external": {"url": "https://hs.example.com", "apiKeySecretRef": {"name": "k"}}}})),
        )
        .await
        .expect_err("switching modes is refused");
    assert!(
        err.to_string()
            .contains("cannot switch between managed and external"),
        "{err}"
    );
    // Nor switch databases (it would start on an empty one).
    let err = Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .patch(
            "hs",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"managed": {"database": {"type": "Postgres",
                "postgres": {"host": "db", "database": "hs", "user": "hs",
                    "passwordSecretRef": {"name": "pg", "key": "password"}}}}}})),
        )
        .await
        .expect_err("switching databases is refused");
    assert!(err.to_string().contains("database.type cannot change"), "{err}");
}

#[tokio::test]
async fn an_ingress_is_made_for_the_http_port_and_removed_with_the_spec() {
    use k8s_openapi::api::networking::v1::Ingress;
    let client = admin_client().await;
    let ns = namespace(&client, "ingress").await;
    let class = volume_for(&client, &ns).await;
    let ingress = json!({"ingress": {"host": "hs.example.test", "className": "nginx",
        "tlsSecretName": "hs-tls", "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"}}});
    let hs = create_server(&client, managed("hs", &ns, "0.29.2", &class, ingress)).await;
    let api = Api::<Ingress>::namespaced(client.clone(), &ns);
    let ing = wait_for("the Ingress", WAIT, || async {
        api.get_opt("hs")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("none".to_string())
    })
    .await;
    assert!(owned_by(&ing.metadata, &hs));
    let spec = ing.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("hs.example.test"));
    let backend = rule.http.as_ref().unwrap().paths[0]
        .backend
        .service
        .clone()
        .unwrap();
    assert_eq!(backend.name, "hs");
    assert_eq!(
        backend.port.unwrap().name.as_deref(),
        Some("http"),
        "never the metrics port"
    );
    assert_eq!(spec.tls.unwrap()[0].secret_name.as_deref(), Some("hs-tls"));
    assert_eq!(
        ing.metadata
            .annotations
            .unwrap()
            .get("nginx.ingress.kubernetes.io/proxy-buffering")
            .map(String::as_str),
        Some("off")
    );

    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"ingress": null}}}),
    )
    .await;
    wait_for("the Ingress removed", WAIT, || async {
        match api.get_opt("hs").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn the_metrics_port_is_closed_by_a_network_policy_and_additions_to_the_service_are_removed() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let client = admin_client().await;
    let ns = namespace(&client, "netpol").await;
    let class = volume_for(&client, &ns).await;
    let prometheus = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    });
    let hs = create_server(
        &client,
        managed(
            "hs",
            &ns,
            "0.29.2",
            &class,
            json!({"networkPolicy": {"metricsFrom": [prometheus]}}),
        ),
    )
    .await;
    let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
    let np = wait_for("the NetworkPolicy", WAIT, || async {
        nps.get_opt("hs")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("none".to_string())
    })
    .await;
    assert!(owned_by(&np.metadata, &hs), "the NetworkPolicy is the server's");
    let spec = serde_json::to_value(np.spec.unwrap()).unwrap();
    assert_eq!(
        spec["podSelector"],
        json!({"matchLabels": {"app.kubernetes.io/instance": "hs", "app.kubernetes.io/name": "headscale"}})
    );
    assert_eq!(
        spec["policyTypes"],
        json!(["Ingress"]),
        "egress is not restricted"
    );
    // http and STUN from anywhere; the metrics port (and Headscale's /debug pages) only
    // from the listed peers.
    assert_eq!(
        spec["ingress"],
        json!([
            {"ports": [{"port": 8080, "protocol": "TCP"}, {"port": 3478, "protocol": "UDP"}]},
            {"from": [prometheus], "ports": [{"port": 9090, "protocol": "TCP"}]},
        ])
    );
    // Selects the pod the StatefulSet makes.
    let pod = wait_pod_ready(&client, &ns, "hs-0").await;
    for (k, v) in np_selector(&spec) {
        assert_eq!(pod.labels().get(&k), Some(&v), "pod label {k}");
    }

    // Someone opens the metrics port to every source (drops `from`): repaired.
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "networkpolicy",
        "hs",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/ingress/1/from"}]"#,
    ]);
    wait_for("the metrics rule repaired", WAIT, || async {
        let live = serde_json::to_value(nps.get("hs").await.unwrap().spec.unwrap()).unwrap();
        if live["ingress"][1]["from"] == json!([prometheus]) {
            Ok(())
        } else {
            Err(live["ingress"].to_string())
        }
    })
    .await;

    // Someone gives the Service an external IP and makes it a NodePort: both go, the
    // cluster IP stays.
    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    let before = svcs.get("hs").await.unwrap().spec.unwrap();
    let cluster_ip = before.cluster_ip.clone().expect("a cluster IP");
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "svc",
        "hs",
        "--type=merge",
        "-p",
        r#"{"spec": {"externalIPs": ["203.0.113.7"], "type": "NodePort"}}"#,
    ]);
    let patched = svcs.get("hs").await.unwrap().spec.unwrap();
    assert_eq!(
        patched.external_ips.as_deref(),
        Some(&["203.0.113.7".to_string()][..])
    );
    let repaired = wait_for("the Service's additions removed", WAIT, || async {
        let s = svcs.get("hs").await.unwrap().spec.unwrap();
        if s.external_ips.is_none() && s.type_.as_deref() == Some("ClusterIP") {
            Ok(s)
        } else {
            Err(format!("externalIPs {:?}, type {:?}", s.external_ips, s.type_))
        }
    })
    .await;
    assert_eq!(
        repaired.cluster_ip.as_deref(),
        Some(cluster_ip.as_str()),
        "the cluster IP changed"
    );
    assert_eq!(repaired.cluster_ips, before.cluster_ips);
    assert!(
        repaired.ports.iter().flatten().all(|p| p.node_port.is_none()),
        "node ports kept: {:?}",
        repaired.ports
    );
    assert_eq!(repaired.ports, before.ports);
    assert!(
        operator_log().contains("replacing the Service"),
        "no repair of the Service logged"
    );
    // And nothing more is written once it is repaired (no replace loop).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = child_versions(&client, &ns, "hs").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        child_versions(&client, &ns, "hs").await,
        versions,
        "children rewritten while idle"
    );

    // Turned off: the NetworkPolicy goes.
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"networkPolicy": {"enabled": false}}}}),
    )
    .await;
    wait_for("the NetworkPolicy removed", WAIT, || async {
        match nps.get_opt("hs").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
}

/// The `matchLabels` of a NetworkPolicy's pod selector.
fn np_selector(spec: &serde_json::Value) -> Vec<(String, String)> {
    spec["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn kubectl_ok(args: &[&str]) {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
