//! The objects a managed HeadscaleServer consists of. Pure: from the server, its
//! rendered config and the hashes of what the pod mounts, to the JSON the operator
//! applies with server-side apply.
//!
//! One server `NAME` in namespace `NS` owns (all with a controller owner reference,
//! so the garbage collector removes them with the server):
//!
//! | object | name | what |
//! |---|---|---|
//! | ConfigMap | `NAME-config` | `config.yaml`, the rendered config (no secret in it) |
//! | ConfigMap | `NAME-dns-records` | `extra-records.json`, the DnsConfig's extra records (`[]` for none); not in the config hash |
//! | Secret | `NAME-keys` | `noise.key`, `derp.key`: generated once, never overwritten |
//! | Secret | `NAME-api-key` | the operator's API key, written by the keyholder sidecar |
//! | ServiceAccount | `NAME-headscale` | the pod's identity; its token is mounted in the keyholder only |
//! | Role, RoleBinding | `NAME-keyholder` | get/watch/patch of `NAME-api-key`, nothing else |
//! | Service | `NAME` | `http` 8080 (control protocol and API), `metrics` 9090, `stun` 3478/UDP |
//! | NetworkPolicy | `NAME` | ingress to `http` and `stun` from anywhere, to `metrics` only from `metricsFrom` |
//! | StatefulSet | `NAME` | one replica: `headscale` and `keyholder` containers |
//! | PersistentVolumeClaim | `data-NAME-0` | SQLite volume, from the StatefulSet's claim template |

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::HeadscaleServer;
use crate::api::server::{DatabaseType, ManagedSpec};
use crate::keyholder;

pub const HTTP_PORT: u16 = 8080;
pub const METRICS_PORT: u16 = 9090;
pub const STUN_PORT: u16 = 3478;

/// Where the pod mounts what (the rendered config names the same paths).
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/headscale/config";
    pub const CONFIG_FILE: &str = "/etc/headscale/config/config.yaml";
    pub const KEYS_DIR: &str = "/etc/headscale/keys";
    pub const OIDC_DIR: &str = "/etc/headscale/oidc";
    pub const DNS_DIR: &str = "/etc/headscale/dns";
    pub const DATA_DIR: &str = "/var/lib/headscale";
    pub const SOCKET_DIR: &str = crate::keyholder::SOCKET_DIR;
    pub const SOCKET: &str = crate::keyholder::SOCKET_PATH;
    pub const SA_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
}

/// Keys of the generated keys Secret.
pub const NOISE_KEY: &str = "noise.key";
pub const DERP_KEY: &str = "derp.key";
/// Key of the OIDC client secret file in its mount.
pub const OIDC_SECRET_FILE: &str = "client_secret";
/// Key of the config in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Key of the records file in the records ConfigMap (the file Headscale watches).
pub const RECORDS_KEY: &str = "extra-records.json";
/// Pod template annotation: hash of everything the pod reads at start. A change of it
/// is the one and only reason the pod is rolled.
pub const CONFIG_HASH_ANNOTATION: &str = "headscale.operator.dev/config-hash";
/// Annotation on every applied child: hash of the desired object. Equal means the
/// apply would change nothing, so it is skipped (an idle resync writes nothing).
pub const APPLIED_HASH_ANNOTATION: &str = "headscale.operator.dev/applied-hash";

/// `Parallel`, not `OrderedReady`: with `OrderedReady` the StatefulSet controller
/// waits for a pod that is not Running and Ready before it rolls it, so a Headscale
/// that crash-loops at start (a bad OIDC issuer, an unreachable database) would never
/// be replaced by the fixed spec (kubernetes/kubernetes#67250). With one replica it is
/// as safe: the new pod has the old one's name, so it is created only once the old is
/// gone. The field is immutable, so an existing StatefulSet keeps its own
/// ([`existing_pod_management_policy`]).
pub const POD_MANAGEMENT_POLICY: &str = "Parallel";

/// The longest server name: a StatefulSet's name plus the controller-revision-hash
/// label suffix must fit in 63 characters.
pub const MAX_NAME_LEN: usize = 52;

/// The names of a server's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub statefulset: String,
    pub service: String,
    pub config_map: String,
    pub dns_records: String,
    pub keys_secret: String,
    pub api_key_secret: String,
    pub service_account: String,
    pub role: String,
    pub network_policy: String,
    pub pvc: String,
}

impl Names {
    pub fn of(server: &str) -> Self {
        Self {
            statefulset: server.to_string(),
            service: server.to_string(),
            config_map: format!("{server}-config"),
            dns_records: format!("{server}-dns-records"),
            keys_secret: format!("{server}-keys"),
            api_key_secret: format!("{server}-api-key"),
            service_account: format!("{server}-headscale"),
            role: format!("{server}-keyholder"),
            network_policy: server.to_string(),
            pvc: format!("data-{server}-0"),
        }
    }
}

/// Settings of the operator that shape the pod.
#[derive(Clone, Debug)]
pub struct PodSettings {
    /// Image of the keyholder sidecar (the operator's own image).
    pub keyholder_image: String,
}

/// What the build needs besides the server.
pub struct Inputs<'a> {
    pub config_yaml: &'a str,
    /// SHA-256 over the config and every Secret value the pod reads at start.
    pub config_hash: &'a str,
    /// The claim templates of the existing StatefulSet: they are immutable, so an
    /// existing StatefulSet keeps its own.
    pub existing_claims: Option<Value>,
    /// The `podManagementPolicy` of the existing StatefulSet (immutable too).
    pub existing_pod_management_policy: Option<String>,
    pub settings: &'a PodSettings,
}

/// The labels every child carries; the selector uses the first two.
pub fn selector_labels(hs: &HeadscaleServer) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "headscale".to_string()),
        ("app.kubernetes.io/instance".to_string(), hs.name_any()),
    ])
}

fn labels(hs: &HeadscaleServer, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(hs);
    l.insert("app.kubernetes.io/managed-by".into(), "headscale-operator".into());
    l.insert("app.kubernetes.io/component".into(), component.into());
    l
}

fn owner(hs: &HeadscaleServer) -> Value {
    json!([{
        "apiVersion": HeadscaleServer::api_version(&()),
        "kind": HeadscaleServer::kind(&()),
        "name": hs.name_any(),
        "uid": hs.uid().unwrap_or_default(),
        "controller": true,
    }])
}

fn metadata(hs: &HeadscaleServer, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": hs.namespace(),
        "labels": labels(hs, component),
        "ownerReferences": owner(hs),
    })
}

/// The container image for the spec's version (`v0.29.2` and `0.29.2` alike give
/// the tag `0.29.2`, as Headscale publishes them).
pub fn image(spec: &ManagedSpec) -> String {
    format!("{}:{}", spec.image, spec.version.trim_start_matches('v'))
}

pub fn config_map(hs: &HeadscaleServer, names: &Names, config_yaml: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(hs, &names.config_map, "config"),
        "data": { CONFIG_KEY: config_yaml },
    })
}

/// The extra-records file Headscale watches. Mounted as a directory (a `subPath` mount
/// never sees an update), so the kubelet's atomic swap of the volume reaches Headscale,
/// which re-reads the file: a change needs no restart, and its content is not part of
/// the config hash.
pub fn records_config_map(hs: &HeadscaleServer, names: &Names, records_json: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(hs, &names.dns_records, "dns-records"),
        "data": { RECORDS_KEY: records_json },
    })
}

/// Whether the keys Secret is owned by the server (deleted with it). The keys belong
/// with the state: kept with the volume (and with a Postgres database, which outlives
/// the server), deleted with it only when the spec deletes the volume too.
pub fn keys_owned(spec: &ManagedSpec) -> bool {
    spec.database.type_ == DatabaseType::Sqlite && spec.database.sqlite.delete_on_server_deletion
}

/// The patch (metadata only: the keys are never rewritten) that makes an existing keys
/// Secret's owner references follow [`keys_owned`], or `None` when they do. Other
/// owners are kept; the write is conditional on the resourceVersion read.
pub fn keys_owner_patch(meta: &kube::api::ObjectMeta, hs: &HeadscaleServer, owned: bool) -> Option<Value> {
    let uid = hs.uid()?;
    let refs = meta.owner_references.clone().unwrap_or_default();
    if refs.iter().any(|r| r.uid == uid) == owned {
        return None;
    }
    let mut keep: Vec<Value> = refs
        .iter()
        .filter(|r| r.uid != uid)
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    if owned && let Value::Array(ours) = owner(hs) {
        keep.extend(ours);
    }
    Some(json!({"metadata": {
        "resourceVersion": meta.resource_version,
        "ownerReferences": keep,
    }}))
}

/// The generated keys Secret, created once and never overwritten. Owned by the
/// server (deleted with it) only when `owned`; otherwise it stays with the state.
pub fn keys_secret(hs: &HeadscaleServer, names: &Names, noise: &str, derp: &str, owned: bool) -> Value {
    let mut meta = metadata(hs, &names.keys_secret, "keys");
    if !owned && let Some(m) = meta.as_object_mut() {
        m.remove("ownerReferences");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": { NOISE_KEY: noise, DERP_KEY: derp },
    })
}

/// The API key Secret, created empty; the keyholder fills it.
pub fn api_key_secret(hs: &HeadscaleServer, names: &Names) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(hs, &names.api_key_secret, "api-key"),
        "type": "Opaque",
    })
}

pub fn service_account(hs: &HeadscaleServer, names: &Names) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(hs, &names.service_account, "headscale"),
        // Only the keyholder container gets a token (a projected volume below).
        "automountServiceAccountToken": false,
    })
}

/// The keyholder may read and patch the one Secret it fills; nothing else.
pub fn role(hs: &HeadscaleServer, names: &Names) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(hs, &names.role, "keyholder"),
        "rules": keyholder::role_rules(&names.api_key_secret),
    })
}

pub fn role_binding(hs: &HeadscaleServer, names: &Names) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(hs, &names.role, "keyholder"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names.role,
        },
        "subjects": [{
            "kind": "ServiceAccount",
            "name": names.service_account,
            "namespace": hs.namespace(),
        }],
    })
}

pub fn service(hs: &HeadscaleServer, names: &Names, spec: &ManagedSpec) -> Value {
    let mut ports = vec![
        json!({"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}),
        json!({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}),
    ];
    if spec.derp.embedded {
        ports.push(json!({"name": "stun", "port": STUN_PORT, "targetPort": "stun", "protocol": "UDP"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(hs, &names.service, "headscale"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(hs),
            "ports": ports,
        },
    })
}

/// The Ingress for the `http` port, when the spec asks for one.
pub fn ingress(hs: &HeadscaleServer, names: &Names, spec: &ManagedSpec) -> Option<Value> {
    let ing = spec.ingress.as_ref()?;
    let mut meta = metadata(hs, &names.service, "headscale");
    if !ing.annotations.is_empty() {
        meta["annotations"] = json!(ing.annotations);
    }
    let mut ingress_spec = json!({
        "rules": [{
            "host": ing.host,
            "http": {"paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": names.service, "port": {"name": "http"}}},
            }]},
        }],
    });
    if let Some(class) = &ing.class_name {
        ingress_spec["ingressClassName"] = json!(class);
    }
    if let Some(tls) = &ing.tls_secret_name {
        ingress_spec["tls"] = json!([{"hosts": [ing.host], "secretName": tls}]);
    }
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": ingress_spec,
    }))
}

/// The NetworkPolicy in front of the pod, unless the spec turns it off. The metrics
/// listener also serves Headscale's `/debug` pages (nodes, map responses, pending
/// registrations) to any private source address, so it is reachable only from the
/// peers in `metricsFrom`: with none, no rule names it, and a policy that selects the
/// pod refuses what no rule allows. (A rule with ports and no `from` would allow every
/// source, so the metrics rule is left out rather than written with an empty list.)
/// `http` and `stun` are open to all: clients, the Ingress controller and the operator
/// reach Headscale there. The kubelet's probes come from the pod's node, which a
/// NetworkPolicy does not block. Egress is not restricted (OIDC, Postgres, DERP maps).
pub fn network_policy(hs: &HeadscaleServer, names: &Names, spec: &ManagedSpec) -> Option<Value> {
    let np = &spec.network_policy;
    if !np.enabled {
        return None;
    }
    let mut open = vec![json!({"port": HTTP_PORT, "protocol": "TCP"})];
    if spec.derp.embedded {
        open.push(json!({"port": STUN_PORT, "protocol": "UDP"}));
    }
    let mut rules = vec![json!({"ports": open})];
    if !np.metrics_from.is_empty() {
        rules.push(json!({
            "from": np.metrics_from,
            "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
        }));
    }
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(hs, &names.network_policy, "headscale"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(hs)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }))
}

/// The claim template for SQLite, or none for Postgres.
fn claim_templates(spec: &ManagedSpec) -> Value {
    if spec.database.type_ != DatabaseType::Sqlite {
        return json!([]);
    }
    let sqlite = &spec.database.sqlite;
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": sqlite.storage_size}},
    });
    if let Some(class) = &sqlite.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    json!([{
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": claim_spec,
    }])
}

pub fn statefulset(hs: &HeadscaleServer, names: &Names, spec: &ManagedSpec, input: &Inputs) -> Value {
    let sqlite = spec.database.type_ == DatabaseType::Sqlite;
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });

    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": names.config_map}}),
        json!({"name": "dns-records", "configMap": {"name": names.dns_records}}),
        // 0400: with fsGroup the kubelet adds group read for the non-root user.
        json!({"name": "keys", "secret": {"secretName": names.keys_secret, "defaultMode": 0o400}}),
        json!({"name": keyholder::SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": "keyholder-token", "projected": {"defaultMode": 0o400, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}}),
    ];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": paths::CONFIG_DIR, "readOnly": true}),
        // A directory mount, never a subPath: the kubelet swaps the directory's
        // contents on a change and Headscale's file watch follows it.
        json!({"name": "dns-records", "mountPath": paths::DNS_DIR, "readOnly": true}),
        json!({"name": "keys", "mountPath": paths::KEYS_DIR, "readOnly": true}),
        json!({"name": keyholder::SOCKET_VOLUME, "mountPath": paths::SOCKET_DIR}),
        json!({"name": "data", "mountPath": paths::DATA_DIR}),
    ];
    if !sqlite {
        // Postgres keeps the state; Headscale still wants a writable data directory.
        volumes.push(json!({"name": "data", "emptyDir": {}}));
    }
    if let Some(oidc) = &spec.oidc {
        volumes.push(json!({"name": "oidc", "secret": {
            "secretName": oidc.client_secret_ref.name,
            "defaultMode": 0o400,
            "items": [{"key": oidc.client_secret_ref.key, "path": OIDC_SECRET_FILE}],
        }}));
        mounts.push(json!({"name": "oidc", "mountPath": paths::OIDC_DIR, "readOnly": true}));
    }
    let mut env = vec![];
    if let (false, Some(pg)) = (sqlite, &spec.database.postgres) {
        env.push(
            json!({"name": crate::render::POSTGRES_PASSWORD_ENV, "valueFrom": {"secretKeyRef": {
                "name": pg.password_secret_ref.name, "key": pg.password_secret_ref.key,
            }}}),
        );
    }

    let mut ports = vec![
        json!({"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}),
        json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}),
    ];
    if spec.derp.embedded {
        ports.push(json!({"name": "stun", "containerPort": STUN_PORT, "protocol": "UDP"}));
    }
    let probe = |period: u32, failures: u32| {
        json!({
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        })
    };
    let mut headscale = json!({
        "name": "headscale",
        "image": image(spec),
        "args": ["serve", "--config", paths::CONFIG_FILE],
        "ports": ports,
        "env": env,
        "volumeMounts": mounts,
        "startupProbe": probe(2, 60),
        "readinessProbe": probe(5, 3),
        "livenessProbe": probe(10, 6),
        "securityContext": restricted,
        // A fatal start shows its last log lines in the container status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(resources) = &spec.pod.resources {
        headscale["resources"] = json!(resources);
    }
    let keyholder = json!({
        "name": keyholder::CONTAINER_NAME,
        "image": input.settings.keyholder_image,
        "args": keyholder_args(names, spec),
        "env": keyholder::container_env(),
        "ports": [{"name": "keyholder", "containerPort": keyholder::PROBE_PORT, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": keyholder::SOCKET_VOLUME, "mountPath": paths::SOCKET_DIR},
            {"name": "keyholder-token", "mountPath": paths::SA_TOKEN_DIR, "readOnly": true},
        ],
        // Liveness only: a readiness probe would take Headscale out of its Service
        // whenever the operator's key is missing.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": keyholder::PROBE_PORT},
            "periodSeconds": 30,
            "failureThreshold": 4,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": restricted,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });

    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), input.config_hash.to_string());
    let mut pod_spec = json!({
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 30,
        "containers": [headscale, keyholder],
        "volumes": volumes,
    });
    if !spec.pod.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(spec.pod.node_selector);
    }
    if !spec.pod.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(spec.pod.tolerations);
    }

    let claims = input
        .existing_claims
        .clone()
        .unwrap_or_else(|| claim_templates(spec));
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(hs, &names.statefulset, "headscale"),
        "spec": {
            // Exactly one: Headscale keeps nodes, sessions and registrations in memory
            // and cannot share its database. A StatefulSet's rolling update deletes the
            // old pod before it starts the new one, so two never run on one database.
            "replicas": 1,
            "serviceName": names.service,
            "podManagementPolicy": input
                .existing_pod_management_policy
                .as_deref()
                .unwrap_or(POD_MANAGEMENT_POLICY),
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": if spec.database.sqlite.delete_on_server_deletion { "Delete" } else { "Retain" },
                "whenScaled": "Retain",
            },
            "selector": {"matchLabels": selector_labels(hs)},
            "template": {
                "metadata": {"labels": labels(hs, "headscale"), "annotations": annotations},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": claims,
        },
    })
}

/// The keyholder's command line (see `keyholder --help`).
pub fn keyholder_args(names: &Names, spec: &ManagedSpec) -> Vec<String> {
    keyholder::container_args(&keyholder::SidecarArgs {
        secret_name: &names.api_key_secret,
        headscale_version: spec.version.trim_start_matches('v'),
        key_lifetime: &spec.api_key.lifetime,
        rotate_before: &spec.api_key.rotate_before,
    })
}

/// The `podManagementPolicy` of an existing StatefulSet, to keep it: the field is
/// immutable, and applying another would be refused (a StatefulSet made before the
/// policy was `Parallel` keeps `OrderedReady` until a person recreates it). Absent is
/// the API server's default, `OrderedReady`.
pub fn existing_pod_management_policy(sts: &StatefulSet) -> String {
    sts.spec
        .pod_management_policy
        .clone()
        .unwrap_or_else(|| "OrderedReady".to_string())
}

/// The claim templates of an existing StatefulSet, to keep them (they are immutable).
pub fn existing_claims(sts: &StatefulSet) -> Option<Value> {
    let templates = sts.spec.volume_claim_templates.as_ref()?;
    let mut out = vec![];
    for t in templates {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": t.metadata.name},
            "spec": {
                "accessModes": t.spec.as_ref().and_then(|s| s.access_modes.clone()),
                "resources": t.spec.as_ref().and_then(|s| s.resources.clone()),
                "storageClassName": t.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
            },
        }));
    }
    Some(Value::Array(out))
}

/// Adds the applied-hash annotation (the hash of the object without it) and returns it.
pub fn stamp(mut obj: Value) -> (Value, String) {
    let hash = crate::controller::managed::sha256_hex(obj.to_string().as_bytes());
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[APPLIED_HASH_ANNOTATION] = json!(hash);
    }
    (obj, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HeadscaleServerSpec;

    fn server(managed: Value) -> HeadscaleServer {
        let spec: HeadscaleServerSpec = serde_json::from_value(json!({ "managed": managed })).unwrap();
        let mut hs = HeadscaleServer::new("corp", spec);
        hs.metadata.namespace = Some("vpn".into());
        hs.metadata.uid = Some("u-1".into());
        hs
    }

    fn sts(hs: &HeadscaleServer, hash: &str) -> Value {
        let spec = hs.spec.managed.as_ref().unwrap();
        let settings = PodSettings {
            keyholder_image: "op:1".into(),
        };
        statefulset(
            hs,
            &Names::of("corp"),
            spec,
            &Inputs {
                config_yaml: "x",
                config_hash: hash,
                existing_claims: None,
                existing_pod_management_policy: None,
                settings: &settings,
            },
        )
    }

    #[test]
    fn one_replica_restricted_pod_and_the_keyholder_alone_has_a_token() {
        let hs = server(json!({"version": "v0.29.2", "serverUrl": "https://hs.example.com"}));
        let s = sts(&hs, "h1");
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["updateStrategy"]["type"], "RollingUpdate");
        // Parallel: a pod that is not Ready (crash-looping) is still rolled.
        assert_eq!(s["spec"]["podManagementPolicy"], "Parallel");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let pod = &s["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let hs_c = &pod["containers"][0];
        assert_eq!(hs_c["image"], "docker.io/headscale/headscale:0.29.2");
        assert_eq!(hs_c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(hs_c["readinessProbe"]["httpGet"]["path"], "/health");
        let mounts = |c: &Value| -> Vec<String> {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(!mounts(hs_c).contains(&"keyholder-token".to_string()));
        let kh = &pod["containers"][1];
        assert_eq!(mounts(kh), [keyholder::SOCKET_VOLUME, "keyholder-token"]);
        assert_eq!(kh["image"], "op:1");
        let args: Vec<&str> = kh["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            &args[..5],
            ["keyholder", "--socket", paths::SOCKET, "--secret", "corp-api-key"]
        );
        // Keys are mounted 0400 from the generated Secret, never from the ConfigMap.
        let keys = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "keys")
            .unwrap();
        assert_eq!(keys["secret"]["defaultMode"], 0o400);
        assert_eq!(
            s["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
            "h1"
        );
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        assert_eq!(
            s["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1Gi"
        );
    }

    #[test]
    fn a_new_statefulset_is_parallel_and_an_existing_one_keeps_its_immutable_policy() {
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}));
        assert_eq!(sts(&hs, "h")["spec"]["podManagementPolicy"], "Parallel");
        let live = |policy: Value| -> StatefulSet {
            serde_json::from_value(json!({"metadata": {"name": "corp"}, "spec": {
                "selector": {}, "serviceName": "corp", "template": {},
                "podManagementPolicy": policy,
            }}))
            .unwrap()
        };
        assert_eq!(
            existing_pod_management_policy(&live(json!("Parallel"))),
            "Parallel"
        );
        assert_eq!(
            existing_pod_management_policy(&live(json!("OrderedReady"))),
            "OrderedReady"
        );
        // Absent is the API server's default.
        assert_eq!(existing_pod_management_policy(&live(Value::Null)), "OrderedReady");
        let settings = PodSettings {
            keyholder_image: "op:1".into(),
        };
        let spec = hs.spec.managed.as_ref().unwrap();
        let kept = statefulset(
            &hs,
            &Names::of("corp"),
            spec,
            &Inputs {
                config_yaml: "x",
                config_hash: "h",
                existing_claims: None,
                existing_pod_management_policy: Some("OrderedReady".into()),
                settings: &settings,
            },
        );
        assert_eq!(kept["spec"]["podManagementPolicy"], "OrderedReady");
    }

    #[test]
    fn postgres_password_and_oidc_secret_come_from_the_users_secrets() {
        let hs = server(json!({
            "version": "0.28.0", "serverUrl": "https://hs.example.com",
            "database": {"type": "Postgres", "postgres": {"host": "db", "database": "hs", "user": "hs",
                "passwordSecretRef": {"name": "pg", "key": "password"}}},
            "oidc": {"issuer": "https://idp", "clientId": "c", "clientSecretRef": {"name": "o", "key": "s"}},
        }));
        let s = sts(&hs, "h");
        let pod = &s["spec"]["template"]["spec"];
        let env = &pod["containers"][0]["env"][0];
        assert_eq!(env["name"], crate::render::POSTGRES_PASSWORD_ENV);
        assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "pg");
        assert_eq!(s["spec"]["volumeClaimTemplates"], json!([]));
        let oidc = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "oidc")
            .unwrap();
        assert_eq!(
            oidc["secret"]["items"][0],
            json!({"key": "s", "path": OIDC_SECRET_FILE})
        );
    }

    #[test]
    fn the_hash_decides_alone_whether_the_pod_template_changes() {
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}));
        assert_eq!(stamp(sts(&hs, "a")).1, stamp(sts(&hs, "a")).1);
        assert_ne!(stamp(sts(&hs, "a")).1, stamp(sts(&hs, "b")).1);
        let (obj, hash) = stamp(config_map(&hs, &Names::of("corp"), "x: 1\n"));
        assert_eq!(
            obj["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
            hash.as_str()
        );
    }

    #[test]
    fn mounts_are_where_the_rendered_config_looks() {
        let l = crate::render::Layout::pod();
        let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
        assert_eq!(p(&l.config_file), paths::CONFIG_FILE);
        assert_eq!(p(l.config_dir()), paths::CONFIG_DIR);
        assert_eq!(p(&l.keys_dir), paths::KEYS_DIR);
        assert_eq!(p(&l.noise_key), format!("{}/{NOISE_KEY}", paths::KEYS_DIR));
        assert_eq!(p(&l.derp_key), format!("{}/{DERP_KEY}", paths::KEYS_DIR));
        assert_eq!(
            p(&l.oidc_client_secret),
            format!("{}/{OIDC_SECRET_FILE}", paths::OIDC_DIR)
        );
        assert_eq!(p(&l.data_dir), paths::DATA_DIR);
        assert_eq!(p(&l.dns_dir), paths::DNS_DIR);
        assert_eq!(p(&l.extra_records), format!("{}/{RECORDS_KEY}", paths::DNS_DIR));
        assert_eq!(p(&l.socket_dir), paths::SOCKET_DIR);
        assert_eq!(p(&l.socket), paths::SOCKET);
        assert_eq!(
            (l.http_port, l.metrics_port, l.stun_port),
            (HTTP_PORT, METRICS_PORT, STUN_PORT)
        );
    }

    #[test]
    fn the_records_file_is_a_directory_mount_of_its_own_config_map() {
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}));
        let s = sts(&hs, "h");
        let pod = &s["spec"]["template"]["spec"];
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "dns-records")
            .unwrap();
        assert_eq!(mount["mountPath"], paths::DNS_DIR);
        assert!(mount.get("subPath").is_none(), "a subPath mount never updates");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "dns-records")
            .unwrap();
        assert_eq!(volume["configMap"]["name"], "corp-dns-records");
        let cm = records_config_map(&hs, &Names::of("corp"), "[]\n");
        assert_eq!(cm["data"][RECORDS_KEY], "[]\n");
        assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "u-1");
    }

    #[test]
    fn the_keys_secret_is_owned_only_while_the_volume_is_deleted_with_the_server() {
        let sqlite = |delete: bool| {
            server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com",
                "database": {"sqlite": {"deleteOnServerDeletion": delete}}}))
        };
        let postgres = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com",
            "database": {"type": "Postgres", "postgres": {"host": "db", "database": "hs", "user": "hs",
                "passwordSecretRef": {"name": "pg", "key": "password"}}, "sqlite": {"deleteOnServerDeletion": true}}}));
        let spec = |hs: &HeadscaleServer| hs.spec.managed.clone().unwrap();
        assert!(keys_owned(&spec(&sqlite(true))));
        assert!(!keys_owned(&spec(&sqlite(false))));
        assert!(
            !keys_owned(&spec(&postgres)),
            "a Postgres database outlives the server"
        );

        let hs = sqlite(false);
        let meta = |refs: Value| -> kube::api::ObjectMeta {
            serde_json::from_value(
                json!({"name": "corp-keys", "resourceVersion": "7", "ownerReferences": refs}),
            )
            .unwrap()
        };
        let ours = json!({"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
            "name": "corp", "uid": "u-1", "controller": true});
        let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "backup", "uid": "b-1"});
        // Already as the spec says: no write.
        assert_eq!(keys_owner_patch(&meta(json!([])), &hs, false), None);
        assert_eq!(keys_owner_patch(&meta(json!([ours])), &hs, true), None);
        // deleteOnServerDeletion true -> false: the server's reference goes, others stay;
        // only metadata, conditional on the version read.
        let p = keys_owner_patch(&meta(json!([ours, theirs])), &hs, false).unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"resourceVersion": "7", "ownerReferences": [theirs]}})
        );
        // false -> true: the server's reference is added.
        let p = keys_owner_patch(&meta(json!([theirs])), &hs, true).unwrap();
        assert_eq!(p["metadata"]["ownerReferences"], json!([theirs, ours]));
        assert!(p.get("data").is_none() && p.get("stringData").is_none());
    }

    #[test]
    fn the_network_policy_opens_http_and_stun_and_metrics_only_to_the_listed_peers() {
        let names = Names::of("corp");
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}));
        let np = network_policy(&hs, &names, hs.spec.managed.as_ref().unwrap()).expect("on by default");
        assert_eq!(np["kind"], "NetworkPolicy");
        assert_eq!(np["metadata"]["name"], "corp");
        assert_eq!(np["metadata"]["namespace"], "vpn");
        assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(np["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            np["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "headscale-operator"
        );
        // It selects exactly the pod the StatefulSet makes.
        let s = sts(&hs, "h");
        let pod_labels = &s["spec"]["template"]["metadata"]["labels"];
        let selector = np["spec"]["podSelector"]["matchLabels"].as_object().unwrap();
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(&pod_labels[k], v, "{k}");
        }
        assert_eq!(
            np["spec"]["policyTypes"],
            json!(["Ingress"]),
            "egress is not restricted"
        );
        assert!(np["spec"].get("egress").is_none());
        // Default: http and STUN from anywhere; no rule names the metrics port, so nobody
        // reaches it (a rule with ports and without `from` would open it to all).
        assert_eq!(
            np["spec"]["ingress"],
            json!([{"ports": [
                {"port": HTTP_PORT, "protocol": "TCP"},
                {"port": STUN_PORT, "protocol": "UDP"},
            ]}])
        );
        assert!(!np.to_string().contains(&METRICS_PORT.to_string()));

        // Without the embedded relay, no STUN; the listed peers reach the metrics port.
        let peers = json!([
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
            {"ipBlock": {"cidr": "10.1.2.0/24"}},
        ]);
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com",
            "derp": {"embedded": false, "urls": ["https://derp.example.com/map.json"]},
            "networkPolicy": {"metricsFrom": peers}}));
        let np = network_policy(&hs, &names, hs.spec.managed.as_ref().unwrap()).unwrap();
        assert_eq!(
            np["spec"]["ingress"],
            json!([
                {"ports": [{"port": HTTP_PORT, "protocol": "TCP"}]},
                {"from": peers, "ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ])
        );
        for rule in np["spec"]["ingress"].as_array().unwrap() {
            let metrics = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"] == METRICS_PORT);
            let from = rule.get("from").and_then(Value::as_array).map_or(0, Vec::len);
            assert!(
                !metrics || from > 0,
                "the metrics port open to every source: {rule}"
            );
        }

        // Turned off: none (the operator deletes one it made).
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com",
            "networkPolicy": {"enabled": false, "metricsFrom": peers}}));
        assert_eq!(
            network_policy(&hs, &names, hs.spec.managed.as_ref().unwrap()),
            None
        );
    }

    #[test]
    fn the_keyholder_role_names_one_secret() {
        let hs = server(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}));
        let r = role(&hs, &Names::of("corp"));
        assert_eq!(r["rules"].as_array().unwrap().len(), 1);
        assert_eq!(r["rules"][0]["resourceNames"], json!(["corp-api-key"]));
        assert_eq!(r["rules"][0]["verbs"], json!(["get", "watch", "patch"]));
    }
}
