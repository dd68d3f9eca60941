//! Managed servers in the integration tests: creating and waiting on them, and
//! `RealPod`, which plays a managed server's pod with real parts (KWOK runs no
//! containers): a real Headscale started with exactly the config, keys and records the
//! operator wrote, and the keyholder as the StatefulSet describes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{KubeletDir, headscale_bin, kubeconfig, kubectl, operator_url, run_dir, wait_for};
use headscale_operator::api::HeadscaleServer;

pub const WAIT: Duration = Duration::from_secs(60);

/// A hostPath volume of a storage class only this test uses, so the claim binds.
pub async fn volume_for(client: &Client, ns: &str) -> String {
    let class = format!("hsop-{ns}");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": class, "labels": {"hsop-test": "managed"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": format!("/tmp/{class}")},
        },
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create PV");
    class
}

pub fn managed(name: &str, ns: &str, version: &str, class: &str, extra: Value) -> Value {
    let mut spec = json!({
        "version": version,
        "serverUrl": format!("https://{name}.{ns}.example.test"),
        "database": {"type": "Sqlite", "sqlite": {"storageClassName": class}},
    });
    merge(&mut spec, extra);
    json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "HeadscaleServer",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"managed": spec},
    })
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub async fn create_server(client: &Client, obj: Value) -> HeadscaleServer {
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
    let hs: HeadscaleServer = serde_json::from_value(obj).unwrap();
    Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &hs)
        .await
        .expect("create HeadscaleServer")
}

pub async fn patch_server(client: &Client, ns: &str, name: &str, patch: Value) {
    Api::<HeadscaleServer>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch HeadscaleServer");
}

/// The server's Ready condition as (status, reason, message).
pub async fn ready(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let hs = Api::<HeadscaleServer>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    let c = hs.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

pub async fn wait_reason(client: &Client, ns: &str, name: &str, want: &str) -> String {
    wait_for(&format!("{ns}/{name} Ready reason {want}"), WAIT, || async {
        match ready(client, ns, name).await {
            Some((_, reason, message)) if reason == want => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

pub async fn wait_pod_ready(client: &Client, ns: &str, pod: &str) -> Pod {
    wait_for(&format!("pod {ns}/{pod} Ready"), WAIT, || async {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(pod)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no pod")?;
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            Ok(p)
        } else {
            Err(format!("{:?}", p.status))
        }
    })
    .await
}

/// The pod `pod` once it is another one than the pod with `old_uid` (a rollout).
pub async fn wait_new_pod(client: &Client, ns: &str, pod: &str, old_uid: Option<String>) -> Pod {
    wait_for(&format!("a new pod {ns}/{pod}"), WAIT, || async {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(pod)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no pod")?;
        if p.metadata.uid != old_uid {
            Ok(p)
        } else {
            Err("the same pod".to_string())
        }
    })
    .await
}

pub fn owned_by(meta: &kube::api::ObjectMeta, hs: &HeadscaleServer) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == hs.uid().as_ref() && o.kind == "HeadscaleServer" && o.controller == Some(true)
    })
}

/// `headscale_operator_kube_writes_total` summed over the kinds, for one namespace.
pub fn writes_in(ns: &str) -> u64 {
    let text = reqwest_blocking_get(&format!("{}/metrics", operator_url()));
    text.lines()
        .filter(|l| {
            l.starts_with("headscale_operator_kube_writes_total{")
                && l.contains(&format!("namespace=\"{ns}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn reqwest_blocking_get(url: &str) -> String {
    let out = Command::new("curl").args(["-fsS", url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The resourceVersions of every child of server `name`; for the StatefulSet its
/// generation (its status, which its controller and the pod's rollout keep updating,
/// also moves the resourceVersion).
pub async fn child_versions(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("StatefulSet");
    out.insert(
        format!("StatefulSet/{name} generation"),
        sts.metadata.generation.unwrap_or_default().to_string(),
    );
    macro_rules! rv {
        ($t:ty, $n:expr) => {
            let o = Api::<$t>::namespaced(client.clone(), ns)
                .get(&$n)
                .await
                .expect($n.as_str());
            out.insert(
                format!("{}/{}", stringify!($t), $n),
                o.resource_version().unwrap(),
            );
        };
    }
    let own = name.to_string();
    rv!(Service, own);
    rv!(ConfigMap, format!("{name}-config"));
    rv!(ConfigMap, format!("{name}-dns-records"));
    rv!(Secret, format!("{name}-keys"));
    rv!(ServiceAccount, format!("{name}-headscale"));
    rv!(Role, format!("{name}-keyholder"));
    rv!(RoleBinding, format!("{name}-keyholder"));
    rv!(NetworkPolicy, own);
    out
}

/// The pod's containers played by real parts: Headscale started with exactly the
/// config and keys the operator wrote (paths and listen addresses moved into a
/// local directory), and the operator's API key minted over its unix socket into
/// the Secret, as the keyholder does.
pub struct RealPod {
    pub dir: PathBuf,
    pub child: Child,
    keyholder: Option<Child>,
    pub url: String,
    /// The metrics listener: `/metrics` and (loopback only) `/debug/`.
    pub metrics_url: String,
    /// The records directory, projected as the kubelet projects the ConfigMap.
    records: KubeletDir,
}

impl Drop for RealPod {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.child).chain(self.keyholder.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Moves every in-pod path and listener of the rendered config into `dir`/127.0.0.1.
pub fn localize(config: &str, dir: &Path) -> (String, String, String) {
    let (http, metrics, stun) = (free_port(), free_port(), free_port());
    let mut v: serde_yaml::Value = serde_yaml::from_str(config).expect("the rendered config is YAML");
    fn walk(v: &mut serde_yaml::Value, dir: &Path) {
        match v {
            serde_yaml::Value::String(s) => {
                for (from, to) in [
                    ("/etc/headscale/", "etc/"),
                    ("/var/lib/headscale", "data"),
                    ("/var/run/headscale", "run"),
                ] {
                    if let Some(rest) = s.strip_prefix(from) {
                        *s = format!("{}/{to}{rest}", dir.display());
                    }
                }
            }
            serde_yaml::Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| walk(v, dir)),
            serde_yaml::Value::Sequence(q) => q.iter_mut().for_each(|v| walk(v, dir)),
            _ => {}
        }
    }
    walk(&mut v, dir);
    v["listen_addr"] = format!("127.0.0.1:{http}").into();
    v["metrics_listen_addr"] = format!("127.0.0.1:{metrics}").into();
    if v["derp"]["server"]["enabled"].as_bool() == Some(true) {
        v["derp"]["server"]["stun_listen_addr"] = format!("127.0.0.1:{stun}").into();
    }
    (
        serde_yaml::to_string(&v).unwrap(),
        format!("http://127.0.0.1:{http}"),
        format!("http://127.0.0.1:{metrics}"),
    )
}

impl RealPod {
    pub async fn start(client: &Client, ns: &str, name: &str, version: &str) -> RealPod {
        let dir = tempfile::Builder::new()
            .prefix("pod-")
            .tempdir_in(run_dir())
            .unwrap()
            .keep();
        for d in ["etc/config", "etc/keys", "etc/dns", "data", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&format!("{name}-config"))
            .await
            .unwrap();
        let (config, url, metrics_url) = localize(&cm.data.unwrap()["config.yaml"], &dir);
        std::fs::write(dir.join("etc/config/config.yaml"), config).unwrap();
        // The records ConfigMap, mounted as a directory like the kubelet does.
        let mut records = KubeletDir::new(&dir.join("etc/dns"));
        records.write(
            &dir.join("etc/dns/extra-records.json"),
            &records_file(client, ns, name).await,
        );
        let keys = Api::<Secret>::namespaced(client.clone(), ns)
            .get(&format!("{name}-keys"))
            .await
            .unwrap();
        for (k, v) in keys.data.unwrap() {
            let path = dir.join("etc/keys").join(k);
            std::fs::write(&path, v.0).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let log = std::fs::File::create(dir.join("headscale.log")).unwrap();
        let child = Command::new(headscale_bin(version))
            .args(["serve", "-c"])
            .arg(dir.join("etc/config/config.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start headscale");
        let pod = RealPod {
            dir,
            child,
            keyholder: None,
            url,
            metrics_url,
            records,
        };
        let health = format!("{}/health", pod.url);
        wait_for("real headscale healthy", WAIT, || async {
            let out = Command::new("curl").args(["-fsS", &health]).output().unwrap();
            if out.status.success() {
                Ok(())
            } else {
                Err(std::fs::read_to_string(pod.dir.join("headscale.log")).unwrap_or_default())
            }
        })
        .await;
        pod
    }

    /// Runs the keyholder container as the StatefulSet describes it (its args, with
    /// the socket and probe address moved here) under a token of the server's own
    /// ServiceAccount, so the operator's Role for it is what is tested.
    pub async fn start_keyholder(&mut self, client: &Client, ns: &str, name: &str) {
        let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap();
        let pod = sts.spec.template.spec.unwrap();
        let container = pod.containers.iter().find(|c| c.name == "keyholder").unwrap();
        let mut args = container.args.clone().unwrap();
        let socket = self.dir.join("run/headscale.sock");
        for i in 0..args.len() {
            if args[i] == "--socket" {
                args[i + 1] = socket.display().to_string();
            }
            if args[i] == "--probe-addr" {
                args[i + 1] = format!("127.0.0.1:{}", free_port());
            }
        }
        let sa = pod.service_account_name.unwrap();
        let out = kubectl(&["-n", ns, "create", "token", &sa, "--duration", "1h"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
        config["users"][0]["user"] = serde_yaml::to_value(json!({"token": token})).unwrap();
        let kubeconfig = self.dir.join("keyholder.kubeconfig");
        std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
        let log = std::fs::File::create(self.dir.join("keyholder.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_headscale-operator"))
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", ns)
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the keyholder");
        self.keyholder = Some(child);
    }

    pub fn keyholder_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keyholder.log")).unwrap_or_default()
    }
}

impl RealPod {
    /// Does what the kubelet does when the records ConfigMap changes: projects its
    /// current content into the mounted directory with an atomic swap. The running
    /// Headscale is not touched.
    pub async fn sync_records(&mut self, client: &Client, ns: &str, name: &str) {
        let text = records_file(client, ns, name).await;
        let file = self.dir.join("etc/dns/extra-records.json");
        self.records.write(&file, &text);
    }

    /// The extra records this Headscale serves now (`name type value`, sorted), from
    /// `/debug/config` on its metrics listener: the DNS config every client's map is
    /// cloned from.
    pub fn served_records(&self) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-fsS", &format!("{}/debug/config", self.metrics_url)])
            .output()
            .expect("curl");
        let config: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut records: Vec<String> = config["TailcfgDNSConfig"]["ExtraRecords"]
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
        records.sort();
        records
    }

    /// Headscale is still the process `RealPod::start` started.
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("headscale.log")).unwrap_or_default()
    }
}

/// The records file the operator wrote for server `name`.
pub async fn records_file(client: &Client, ns: &str, name: &str) -> String {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-dns-records"))
        .await
        .expect("the records ConfigMap");
    cm.data
        .unwrap_or_default()
        .remove("extra-records.json")
        .expect("extra-records.json")
}
