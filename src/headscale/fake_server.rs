//! A scripted HTTP/1.1 server on 127.0.0.1 for what a real Headscale cannot do on
//! demand: hang, reset a connection, answer 500 mid-call. Also records what the
//! client put on the wire. Everything a real server can do is tested against real
//! servers in `tests/headscale_client.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: Option<String>,
    pub body: String,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// What to do with a request.
pub enum Reply {
    Json(u16, String),
    Text(u16, &'static str),
    /// Wait this long, then answer 200 `{}`.
    Delay(Duration, String),
    /// Close the connection with a TCP reset, no answer.
    Reset,
    /// `302 Found` to this location.
    Redirect(String),
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

pub struct FakeServer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Serves `/version` as `version`; every other request goes to `script` with
    /// its index among those requests.
    pub async fn start(
        version: &str,
        script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            version: version.to_string(),
            script: Box::new(script),
            seen: seen.clone(),
            count: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            peak: peak.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, state.clone()));
            }
        });
        FakeServer {
            url,
            seen,
            peak,
            task,
        }
    }

    /// Every request except `/version`.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Most requests (except `/version`) being handled at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

struct State {
    version: String,
    script: Box<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: AtomicUsize,
    active: AtomicUsize,
    peak: Arc<AtomicUsize>,
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        if seen.path() == "/version" {
            let body = format!(r#"{{"version":"{}","commit":"fake"}}"#, state.version);
            if write(&mut stream, 200, "application/json", &body).await.is_err() {
                return;
            }
            continue;
        }
        let index = state.count.fetch_add(1, Ordering::SeqCst);
        state.seen.lock().unwrap().push(seen.clone());
        let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        let reply = (state.script)(&seen, index);
        let result = match reply {
            Reply::Json(status, body) => write(&mut stream, status, "application/json", &body).await,
            Reply::Text(status, body) => write(&mut stream, status, "text/plain", body).await,
            Reply::Delay(wait, body) => {
                tokio::time::sleep(wait).await;
                write(&mut stream, 200, "application/json", &body).await
            }
            Reply::Redirect(location) => {
                let text = format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
                stream.write_all(text.as_bytes()).await
            }
            Reply::Reset => {
                let _ = stream.set_zero_linger();
                Err(std::io::Error::other("reset"))
            }
        };
        state.active.fetch_sub(1, Ordering::SeqCst);
        if result.is_err() {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let mut length = 0;
    let mut authorization = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().ok()?,
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    while buf.len() < header_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).to_string();
    buf.drain(..header_end + length);
    Some(Seen {
        method,
        target,
        authorization,
        body,
    })
}

async fn write(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await
}
