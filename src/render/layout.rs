//! Where things are inside the Headscale pod: every path and listen address the
//! rendered configuration names, in one place the controller mounts from.

use std::path::{Path, PathBuf};

/// Every path and listen address the configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `config.yaml` (ConfigMap, directory mount of its own directory, read-only).
    pub config_file: PathBuf,
    /// Directory of the key files (Secret `<server>-keys`, mode 0400).
    pub keys_dir: PathBuf,
    /// The noise private key (Secret key `noise.key`).
    pub noise_key: PathBuf,
    /// The embedded DERP server's private key (Secret key `derp.key`).
    pub derp_key: PathBuf,
    /// Directory the user's OIDC client secret is mounted in.
    pub oidc_dir: PathBuf,
    /// The OIDC client secret file (`client_secret_path`).
    pub oidc_client_secret: PathBuf,
    /// Directory reserved for the DNS extra-records file (issue 7).
    pub dns_dir: PathBuf,
    /// The extra-records file Headscale would watch (`dns.extra_records_path`).
    pub extra_records: PathBuf,
    /// Data volume: the SQLite database.
    pub data_dir: PathBuf,
    /// The SQLite database file.
    pub sqlite: PathBuf,
    /// Directory of the unix socket (emptyDir shared with the keyholder sidecar).
    pub socket_dir: PathBuf,
    /// Headscale's unix socket (`unix_socket`, mode 0770).
    pub socket: PathBuf,
    /// Control protocol, `/api/v1`, `/health`, `/version` (`listen_addr`).
    pub listen_addr: String,
    /// `/metrics` and `/debug/` (`metrics_listen_addr`).
    pub metrics_listen_addr: String,
    /// UDP STUN listener of the embedded DERP server (`derp.server.stun_listen_addr`).
    pub stun_listen_addr: String,
    /// The ports of the three listeners, for the Service and the probes.
    pub http_port: u16,
    pub metrics_port: u16,
    pub stun_port: u16,
}

impl Layout {
    /// Port of the HTTP listener in the pod.
    pub const HTTP_PORT: u16 = 8080;
    /// Port of the metrics listener in the pod.
    pub const METRICS_PORT: u16 = 9090;
    /// UDP port of STUN in the pod.
    pub const STUN_PORT: u16 = 3478;
    /// File name of the noise key in the keys Secret and directory.
    pub const NOISE_KEY_FILE: &'static str = "noise.key";
    /// File name of the DERP key in the keys Secret and directory.
    pub const DERP_KEY_FILE: &'static str = "derp.key";

    /// The in-pod layout the controller mounts:
    ///  /etc/headscale/config/config.yaml     (ConfigMap, directory mount, read-only; its own
    ///                                         directory, so no other mount nests inside a
    ///                                         read-only ConfigMap volume)
    ///  /etc/headscale/keys/noise.key, derp.key (Secret `<server>-keys`, mode 0400, directory mount)
    ///  /etc/headscale/oidc/client_secret      (user's Secret key, if OIDC)
    ///  /etc/headscale/dns/                    (reserved for the DNS extra-records file, next issue)
    ///  /var/lib/headscale                     (data volume: SQLite db)
    ///  /var/run/headscale/headscale.sock      (emptyDir shared with the keyholder sidecar)
    ///  listen 0.0.0.0:8080 (control protocol + API), metrics 0.0.0.0:9090, STUN udp 3478
    pub fn pod() -> Self {
        Self::rooted(
            Path::new("/"),
            "0.0.0.0",
            Self::HTTP_PORT,
            Self::METRICS_PORT,
            Self::STUN_PORT,
        )
    }

    /// Same shape rooted in a local directory with 127.0.0.1 ports, for tests.
    /// Keep `dir` short: the socket path (`dir` + 34 bytes) must stay under ~108 bytes.
    pub fn local(dir: &Path, http_port: u16, metrics_port: u16, stun_port: u16) -> Self {
        Self::rooted(dir, "127.0.0.1", http_port, metrics_port, stun_port)
    }

    fn rooted(root: &Path, host: &str, http_port: u16, metrics_port: u16, stun_port: u16) -> Self {
        let at = |p: &str| root.join(p);
        let keys_dir = at("etc/headscale/keys");
        let oidc_dir = at("etc/headscale/oidc");
        let dns_dir = at("etc/headscale/dns");
        let data_dir = at("var/lib/headscale");
        let socket_dir = at("var/run/headscale");
        Self {
            config_file: at("etc/headscale/config/config.yaml"),
            noise_key: keys_dir.join(Self::NOISE_KEY_FILE),
            derp_key: keys_dir.join(Self::DERP_KEY_FILE),
            keys_dir,
            oidc_client_secret: oidc_dir.join("client_secret"),
            oidc_dir,
            extra_records: dns_dir.join("extra-records.json"),
            dns_dir,
            sqlite: data_dir.join("db.sqlite"),
            data_dir,
            socket: socket_dir.join("headscale.sock"),
            socket_dir,
            listen_addr: format!("{host}:{http_port}"),
            metrics_listen_addr: format!("{host}:{metrics_port}"),
            stun_listen_addr: format!("{host}:{stun_port}"),
            http_port,
            metrics_port,
            stun_port,
        }
    }

    /// Directory of `config.yaml` (the ConfigMap's mount point).
    pub fn config_dir(&self) -> &Path {
        self.config_file.parent().unwrap_or(Path::new("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_layout_is_the_documented_one() {
        let l = Layout::pod();
        assert_eq!(l.config_file, Path::new("/etc/headscale/config/config.yaml"));
        assert_eq!(l.config_dir(), Path::new("/etc/headscale/config"));
        assert_eq!(l.noise_key, Path::new("/etc/headscale/keys/noise.key"));
        assert_eq!(l.derp_key, Path::new("/etc/headscale/keys/derp.key"));
        assert_eq!(
            l.oidc_client_secret,
            Path::new("/etc/headscale/oidc/client_secret")
        );
        assert_eq!(l.dns_dir, Path::new("/etc/headscale/dns"));
        assert_eq!(l.sqlite, Path::new("/var/lib/headscale/db.sqlite"));
        assert_eq!(l.socket, Path::new("/var/run/headscale/headscale.sock"));
        assert_eq!(l.listen_addr, "0.0.0.0:8080");
        assert_eq!(l.metrics_listen_addr, "0.0.0.0:9090");
        assert_eq!(l.stun_listen_addr, "0.0.0.0:3478");
    }

    #[test]
    fn local_layout_has_the_same_shape_under_its_root() {
        let l = Layout::local(Path::new("/tmp/x"), 1, 2, 3);
        assert_eq!(l.noise_key, Path::new("/tmp/x/etc/headscale/keys/noise.key"));
        assert_eq!(l.socket, Path::new("/tmp/x/var/run/headscale/headscale.sock"));
        assert_eq!(l.listen_addr, "127.0.0.1:1");
        assert_eq!(l.metrics_listen_addr, "127.0.0.1:2");
        assert_eq!(l.stun_listen_addr, "127.0.0.1:3");
    }
}
