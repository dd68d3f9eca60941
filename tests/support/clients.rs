//! Real Tailscale clients on isolated test hosts, for any integration test.
//!
//! A [`TestNet`] is a host-side bridge on a private /24 made by `e2e/netns.sh` (unique per run,
//! so parallel runs do not collide). Each [`Client`] is a real `tailscaled` (version pinned in
//! `e2e/versions.env`) in its own network namespace on that bridge, with a TUN device inside the
//! namespace: its tailnet traffic is real kernel traffic, filtered by the client's own packet
//! filter from the policy Headscale sends. The namespaces have no default route, so nothing a
//! client sends leaves the test subnet; Headscale listens on the bridge address
//! ([`TestNet::start_headscale`]).
//!
//! Clients run with vendor logging off (`--no-logs-no-support`, `TS_NO_LOGS_NO_SUPPORT`, and
//! `TS_LOGS_DIR` in their own directory, else tailscaled writes a log config under
//! /var/lib/tailscale), no auto-update and no update check, `--accept-dns=false`,
//! `--netfilter-mode=off`, state and socket in a temporary directory, and DERP over plain HTTP
//! (`TS_DEBUG_USE_DERP_HTTP=1`: the embedded DERP server has no TLS here).
//!
//! Teardown: dropping a [`Client`] kills its daemon and removes its namespace; dropping the
//! [`TestNet`] kills whatever still runs in its namespaces and removes them, the links and the
//! bridge. A test process that dies without dropping is covered by `netns.sh`'s owner-pid
//! watchdog, and anything left after that by the sweep at the next `TestNet::up`.
//!
//! ```ignore
//! let net = TestNet::up();
//! let hs = net.start_headscale("v0.29.2", &[]);
//! let key = /* a pre-auth key from hs.client() */;
//! let a = net.client(&hs.url, "a");
//! a.join(&key).unwrap();
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headscale_operator::secret::SecretString;

use super::{Headscale, headscale_versions, repo, scratch_dir, start_retrying};

/// How long a client gets to reach `Running` after `tailscale up`.
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// What a connection attempt over the tailnet gets before it counts as refused.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What the TCP service answers to every connection.
const GREETING: &[u8] = b"hsop-hello\n";

pub fn tailscale_bin() -> PathBuf {
    tool("HSOP_TAILSCALE_BIN")
}

pub fn tailscaled_bin() -> PathBuf {
    tool("HSOP_TAILSCALED_BIN")
}

fn tool(var: &str) -> PathBuf {
    let path = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run `eval \"$(e2e/tools.sh env)\"` (make test does)"));
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{var}={} does not exist: run e2e/tools.sh ensure",
        path.display()
    );
    path
}

/// The Headscale versions the real-client tests run against, in parallel threads.
pub const VERSIONS: [&str; 2] = ["v0.28.0", "v0.29.2"];

/// Runs `test` for every version in [`VERSIONS`] at once, one thread each; fails (never skips)
/// when one is not built.
pub fn on_versions(test: impl Fn(&str) + Sync) {
    let built = headscale_versions();
    for v in VERSIONS {
        assert!(
            built.iter().any(|b| b == v),
            "Headscale {v} is not built (HSOP_HEADSCALE_BINS)"
        );
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = VERSIONS.iter().map(|v| (v, s.spawn(|| test(v)))).collect();
        let failed: Vec<_> = runs
            .into_iter()
            .filter_map(|(v, h)| h.join().is_err().then_some(*v))
            .collect();
        assert!(failed.is_empty(), "failed on {failed:?} (see the panics above)");
    });
}

/// A private test subnet: a bridge on the host and the namespaces of its clients.
pub struct TestNet {
    pub dir: PathBuf,
    /// Short run id, part of every namespace and link name (`hsop<id>...`).
    pub id: String,
    pub bridge: String,
    /// `10.213.N.0/24`
    pub subnet: String,
    /// The host's address on the bridge: where Headscale must listen.
    pub addr: Ipv4Addr,
    sockdir: PathBuf,
    next_index: AtomicU32,
}

impl TestNet {
    /// Makes a new test network (sweeping what dead runs left). Panics with netns.sh's
    /// explanation where namespaces cannot be made (never a skip).
    pub fn up() -> TestNet {
        let dir = tempfile::Builder::new()
            .prefix("net-")
            .tempdir_in(scratch_dir())
            .expect("tempdir")
            .keep();
        let out = netns(&[
            "up",
            path_str(&dir),
            "--owner-pid",
            &std::process::id().to_string(),
        ]);
        assert!(
            out.status.success(),
            "e2e/netns.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("net.env")).expect("net.env");
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing in net.env"))
                .to_string()
        };
        TestNet {
            id: var("HSOP_NET_ID"),
            bridge: var("HSOP_NET_BRIDGE"),
            subnet: var("HSOP_NET_SUBNET"),
            addr: var("HSOP_NET_ADDR").parse().expect("HSOP_NET_ADDR"),
            sockdir: PathBuf::from(var("HSOP_NET_SOCKDIR")),
            next_index: AtomicU32::new(1),
            dir,
        }
    }

    /// A real Headscale listening (HTTP, DERP, STUN) on this network's host address.
    /// `options` as for [`Headscale::start_with`], e.g. `["--ephemeral-timeout", "66s"]`.
    /// Retried like [`super::start_retrying`].
    pub fn start_headscale(&self, version: &str, options: &[&str]) -> Headscale {
        let addr = self.addr.to_string();
        let mut all = vec!["--listen", addr.as_str()];
        all.extend_from_slice(options);
        start_retrying(version, || Headscale::start_with(version, &all))
    }

    /// A new test host running `tailscaled`, not logged in. `name` is its hostname
    /// (what Headscale lists). Panics when the daemon does not come up.
    pub fn client(&self, server_url: &str, name: &str) -> Client {
        let index = self.next_index.fetch_add(1, Ordering::SeqCst);
        let out = netns(&["host", path_str(&self.dir), &index.to_string()]);
        assert!(
            out.status.success(),
            "e2e/netns.sh host failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (namespace, underlay) = line.split_once(' ').expect("netns.sh host prints NS ADDR");
        let dir = self.dir.join(format!("client-{index}-{name}"));
        std::fs::create_dir_all(&dir).expect("client dir");
        let client = Client {
            name: name.to_string(),
            namespace: namespace.to_string(),
            underlay: underlay.parse().expect("underlay address"),
            socket: self.sockdir.join(format!("{index}.sock")),
            dir,
            server_url: server_url.to_string(),
            net_dir: self.dir.clone(),
            index,
            daemon: Mutex::new(None),
        };
        client.start_daemon();
        client
    }

    /// `count` clients `{prefix}{i}` (from 1), started in parallel, each joined with
    /// `key` (a reusable pre-auth key). Panics when one fails to join.
    pub fn joined_clients(
        &self,
        server_url: &str,
        prefix: &str,
        count: usize,
        key: &SecretString,
    ) -> Vec<Client> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=count)
                .map(|i| {
                    s.spawn(move || {
                        let c = self.client(server_url, &format!("{prefix}{i}"));
                        c.join(key).unwrap_or_else(|e| panic!("{}: {e}", c.name));
                        c
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client start"))
                .collect()
        })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let out = netns(&["down", path_str(&self.dir)]);
        if !out.status.success() {
            eprintln!(
                "e2e/netns.sh down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn netns(args: &[&str]) -> Output {
    Command::new(repo().join("e2e/netns.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running e2e/netns.sh")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Whether a TCP connection over the tailnet got through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Connected and read the service's greeting.
    Allowed,
    /// Anything else within the time given: timeout, refusal, reset, no route.
    Refused(String),
}

impl Reach {
    pub fn is_allowed(&self) -> bool {
        *self == Reach::Allowed
    }
}

/// A real `tailscaled` in its own network namespace.
pub struct Client {
    /// Its hostname, as Headscale lists it.
    pub name: String,
    pub namespace: String,
    /// Its address on the test subnet (eth0 in the namespace).
    pub underlay: Ipv4Addr,
    /// State, logs (`tailscaled.log`).
    pub dir: PathBuf,
    socket: PathBuf,
    server_url: String,
    net_dir: PathBuf,
    index: u32,
    daemon: Mutex<Option<Child>>,
}

impl Client {
    /// Starts `tailscaled` in the namespace (again, after [`Client::kill_daemon`]: same state,
    /// so a registered client reconnects by itself) and waits for its socket to answer.
    pub fn start_daemon(&self) {
        let mut daemon = self.daemon.lock().unwrap();
        assert!(daemon.is_none(), "{}: tailscaled already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tailscaled.log"))
            .expect("tailscaled.log");
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .arg(tailscaled_bin())
            .args(["--no-logs-no-support", "--port=0", "--tun=tailscale0"])
            .arg(format!("--statedir={}", self.dir.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_LOGS_DIR", &self.dir)
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting tailscaled");
        *daemon = Some(child);
        drop(daemon);
        let start = Instant::now();
        loop {
            if let Ok(st) = self.try_status()
                && st.get("BackendState").is_some()
            {
                break;
            }
            if !self.daemon_alive() {
                panic!("{}: tailscaled exited at start:\n{}", self.name, self.log_tail());
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "{}: tailscaled's socket did not answer in 30 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // No automatic update and no update check (builds from source cannot update
        // themselves anyway; this keeps it so whatever a future version defaults to).
        self.cli_ok(&["set", "--auto-update=false", "--update-check=false"]);
    }

    /// SIGKILL to the daemon: the client vanishes without logging out (like a host that
    /// lost power). Its state stays; [`Client::start_daemon`] brings it back.
    pub fn kill_daemon(&self) {
        if let Some(mut child) = self.daemon.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn daemon_alive(&self) -> bool {
        match self.daemon.lock().unwrap().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last 40 lines of its tailscaled log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("tailscaled.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(tailscale_bin());
        cmd.arg(format!("--socket={}", self.socket.display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `tailscale ARGS`, killed after `timeout`.
    pub fn cli_run(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let child = self
            .cli()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running tailscale: {e}"))?;
        wait_output(child, timeout).map_err(|e| format!("tailscale {args:?}: {e}"))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self
            .cli_run(args, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert!(
            out.status.success(),
            "{}: tailscale {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The flags every `tailscale up` of a client repeats (`up` refuses to drop a non-default
    /// flag silently).
    fn up_flags(&self) -> Vec<String> {
        vec![
            format!("--login-server={}", self.server_url),
            "--accept-dns=false".into(),
            "--netfilter-mode=off".into(),
            format!("--hostname={}", self.name),
            format!("--timeout={}s", UP_TIMEOUT.as_secs()),
        ]
    }

    /// `tailscale up` with a pre-auth key (passed in a 0600 file, never on a command line),
    /// until the client is `Running`.
    pub fn join(&self, key: &SecretString) -> Result<(), String> {
        let file = self.dir.join("authkey");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| e.to_string())?;
            f.write_all(key.expose().as_bytes()).map_err(|e| e.to_string())?;
        }
        let mut args = self.up_flags();
        args.push(format!("--auth-key=file:{}", file.display()));
        let result = self.up(&args);
        let _ = std::fs::remove_file(&file);
        result
    }

    fn up(&self, flags: &[String]) -> Result<(), String> {
        let mut args = vec!["up"];
        args.extend(flags.iter().map(String::as_str));
        let out = self.cli_run(&args, UP_TIMEOUT + Duration::from_secs(10))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tailscale up failed ({}): {}{}\n--- tailscaled log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ))
        }
    }

    /// Starts an interactive `tailscale up` (no key) and returns once it printed the login URL
    /// (`<server_url>/register/<auth id>`; the id is `hskey-authreq-` + 24 characters from 0.29,
    /// 24 bare characters before). The client waits until the id is registered.
    pub fn join_interactive(&self) -> PendingLogin {
        let mut args = vec!["up".to_string()];
        args.extend(self.up_flags());
        let mut child = self
            .cli()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running tailscale up");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(url) = line.split_whitespace().find(|w| w.contains("/register/")) {
                        let _ = tx.send(url.to_string());
                    }
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: interactive tailscale up printed no /register/ URL in 30 s:\n{}\n--- tailscaled log ---\n{}",
                    self.name,
                    output.lock().unwrap(),
                    self.log_tail()
                )
            }
        };
        let auth_id = auth_id_of(&url).unwrap_or_else(|| panic!("no auth id in {url:?}"));
        PendingLogin {
            auth_id,
            url,
            child: Some(child),
            output,
        }
    }

    /// `tailscale down`: the client leaves the tailnet, stays registered. Headscale lists it
    /// offline after its disconnect grace (10 s).
    pub fn go_offline(&self) {
        self.cli_ok(&["down"]);
    }

    /// `tailscale up` again after [`Client::go_offline`] (no key needed).
    pub fn go_online(&self) -> Result<(), String> {
        self.up(&self.up_flags())
    }

    /// `tailscale status --json`.
    pub fn try_status(&self) -> Result<serde_json::Value, String> {
        let out = self.cli_run(&["status", "--json"], Duration::from_secs(10))?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "status --json ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `BackendState` (`NeedsLogin`, `Running`, `Stopped`, ...).
    pub fn backend_state(&self) -> String {
        self.try_status()
            .ok()
            .and_then(|s| s.get("BackendState").and_then(|v| v.as_str()).map(String::from))
            .unwrap_or_default()
    }

    /// Its tailnet IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        let out = self.cli_ok(&["ip", "-4"]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: tailscale ip -4 printed {out:?}: {e}", self.name))
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// A tiny TCP service inside the namespace on `0.0.0.0:port` (0: any free port) that
    /// greets every connection; stopped on drop.
    pub fn serve_tcp(&self, port: u16) -> TcpService {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let ns = self.namespace.clone();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind in namespace");
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(GREETING);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let port = rx.recv().expect("the TCP service started");
        TcpService {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// One TCP connection from this client's namespace to `to:port`, over whatever route the
    /// namespace has (the tailnet for a 100.64.0.0/10 address): [`Reach::Allowed`] when the
    /// greeting came back within `timeout`, else why not. Never takes much longer than
    /// twice `timeout`.
    pub fn reach(&self, to: Ipv4Addr, port: u16, timeout: Duration) -> Reach {
        let ns = self.namespace.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            let addr = SocketAddr::from((to, port));
            let mut conn = match TcpStream::connect_timeout(&addr, timeout) {
                Ok(c) => c,
                Err(e) => return Reach::Refused(format!("connect {addr}: {e}")),
            };
            let _ = conn.set_read_timeout(Some(timeout));
            let mut buf = Vec::new();
            match conn.read_to_end(&mut buf) {
                _ if buf == GREETING => Reach::Allowed,
                Ok(_) => Reach::Refused(format!("{addr} answered {buf:?}")),
                Err(e) => Reach::Refused(format!("reading from {addr}: {e}")),
            }
        })
        .join()
        .expect("reach thread")
    }

    /// Tries [`Client::reach`] until it gives `want` or `within` has passed (policy changes take
    /// a moment to reach the clients); returns the last outcome and the time it took.
    pub fn reach_until(
        &self,
        to: Ipv4Addr,
        port: u16,
        want_allowed: bool,
        within: Duration,
    ) -> (Reach, Duration) {
        let start = Instant::now();
        loop {
            let r = self.reach(to, port, CONNECT_TIMEOUT);
            if r.is_allowed() == want_allowed || start.elapsed() > within {
                return (r, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill_daemon();
        let _ = netns(&["unhost", path_str(&self.net_dir), &self.index.to_string()]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An interactive `tailscale up` waiting for its registration.
pub struct PendingLogin {
    /// The id the login URL ends with: what `POST /auth/register` (or a `NodeApproval`) takes.
    pub auth_id: String,
    pub url: String,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl PendingLogin {
    /// Waits for `tailscale up` to finish (the client is `Running`).
    pub fn wait(mut self, timeout: Duration) -> Result<(), String> {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "tailscale up exited {status}: {}",
                        self.output.lock().unwrap()
                    ));
                }
                Ok(None) if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "tailscale up still waiting after {timeout:?}: {}",
                        self.output.lock().unwrap()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The auth id at the end of a Headscale login URL (`.../register/<id>`).
pub fn auth_id_of(url: &str) -> Option<String> {
    let id = url.rsplit_once("/register/")?.1;
    let id: String = id
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// A TCP service in a client's namespace ([`Client::serve_tcp`]).
pub struct TcpService {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpService {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread (only it) into the network namespace `ns`.
fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a valid descriptor; CLONE_NEWNET affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Waits for `child` at most `timeout`, collecting its output; kills it after that.
fn wait_output(mut child: Child, timeout: Duration) -> Result<Output, String> {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}
