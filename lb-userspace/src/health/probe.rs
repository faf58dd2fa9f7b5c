//! Probes: one TCP connect, HTTP GET, UDP exchange or external command
//! against one backend, bounded by the check's timeout, with a typed
//! outcome ([`Passed`] or [`Failed`]) and the record kept of it ([`Probe`]).
//! A leaf: it knows the check's configuration and nothing of what the
//! result is used for.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    net::{TcpStream, UdpSocket},
    time::Instant,
};

use super::through::{self, Via};
use crate::{
    config::{CheckKind, HealthConfig},
    model::VipAddr,
};

/// One backend to check.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub vip: VipAddr,
    pub backend: IpAddr,
    pub port: u16,
    pub check: HealthConfig,
    /// Through the VIP (`through = "vip"`): addressed to the VIP, carried
    /// to the backend by `hola_probe`. `None`: to the backend's address.
    pub via: Option<Via>,
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub ok: bool,
    /// What was seen: "connected", "HTTP 200", "timeout after 500ms", ...
    pub detail: String,
    pub latency_ms: u64,
}

impl Probe {
    /// The record of an outcome that took `latency`.
    pub fn of(outcome: &Result<Passed, Failed>, latency: Duration) -> Self {
        Probe {
            ok: outcome.is_ok(),
            detail: match outcome {
                Ok(p) => p.to_string(),
                Err(f) => f.to_string(),
            },
            latency_ms: latency.as_millis() as u64,
        }
    }
}

/// What a probe that passed saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passed {
    Connected,
    Http(u16),
    Reply,
    Exit0,
    /// An agent's first line.
    Agent(String),
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passed::Connected => f.write_str("connected"),
            Passed::Http(status) => write!(f, "HTTP {status}"),
            Passed::Reply => f.write_str("reply received"),
            Passed::Exit0 => f.write_str("exit 0"),
            Passed::Agent(line) => write!(f, "agent: {line}"),
        }
    }
}

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failed {
    #[error("timeout after {}ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connect {addr}: {error}")]
    Connect { addr: SocketAddr, error: String },
    #[error("bind: {0}")]
    Bind(String),
    #[error("send: {0}")]
    Send(String),
    #[error("read: {0}")]
    Read(String),
    #[error("no reply: {0}")]
    NoReply(String),
    #[error("reply lacks {0:?}")]
    ReplyLacks(String),
    #[error("no command configured")]
    NoCommand,
    #[error("running {prog}: {error}")]
    Spawn { prog: String, error: String },
    #[error("{prog}: {status}")]
    Exit { prog: String, status: String },
    #[error("HTTP {got}, expected {want}")]
    Status { got: u16, want: u16 },
    #[error("HTTP {status} but the body lacks {want:?}")]
    BodyLacks { status: u16, want: String },
    /// The HTTP exchange itself failed (handshake, request, body).
    #[error("{0}")]
    Http(String),
    /// An agent's answer that says nothing hola can act on.
    #[error("{0}")]
    Report(String),
}

/// Runs one probe, bounded by the check's timeout. A probe through the
/// VIP runs beside the same check to the backend's own address, so that a
/// failure's reason says whether only the data path fails; side by side,
/// the result comes within the timeout either way.
pub async fn probe(t: &Target) -> Probe {
    let start = Instant::now();
    let Some(via) = t.via else {
        let outcome = bounded(t).await;
        return Probe::of(&outcome, start.elapsed());
    };
    let own = Target {
        via: None,
        ..t.clone()
    };
    let (outcome, direct) = tokio::join!(
        async {
            let o = bounded(t).await;
            (o, start.elapsed())
        },
        bounded(&own)
    );
    let (outcome, latency) = outcome;
    let Err(failed) = &outcome else {
        return Probe::of(&outcome, latency);
    };
    Probe {
        ok: false,
        detail: through::failure_detail(
            SocketAddr::new(t.vip.addr, t.port),
            t.backend,
            via.tunnel,
            &failed.to_string(),
            Some(direct.map(|p| p.to_string()).map_err(|f| f.to_string())),
        ),
        latency_ms: latency.as_millis() as u64,
    }
}

async fn bounded(t: &Target) -> Result<Passed, Failed> {
    let timeout = t.check.timeout;
    match tokio::time::timeout(timeout, run_probe(t)).await {
        Ok(r) => r,
        Err(_) => Err(Failed::Timeout(timeout)),
    }
}

/// A TCP connection to `addr`, through the VIP when `via` says so.
async fn connect(addr: SocketAddr, via: Option<(Via, IpAddr)>) -> Result<TcpStream, Failed> {
    let Some((via, backend)) = via else {
        return TcpStream::connect(addr)
            .await
            .map_err(|e| connect_failed(addr, &e));
    };
    let s = through::socket(socket2::Type::STREAM, via, backend)
        .map_err(|e| Failed::Bind(e.to_string()))?;
    tokio::net::TcpSocket::from_std_stream(s.into())
        .connect(addr)
        .await
        .map_err(|e| connect_failed(addr, &e))
}

async fn run_probe(t: &Target) -> Result<Passed, Failed> {
    let to = if t.via.is_some() {
        t.vip.addr
    } else {
        t.backend
    };
    let addr = SocketAddr::new(to, t.port);
    let via = t.via.map(|v| (v, t.backend));
    match t.check.kind {
        CheckKind::Tcp => {
            connect(addr, via).await?;
            Ok(Passed::Connected)
        }
        CheckKind::Http => http_probe(t, addr, via).await,
        CheckKind::Udp => {
            let s = match via {
                Some((via, backend)) => {
                    let s = through::socket(socket2::Type::DGRAM, via, backend)
                        .map_err(|e| Failed::Bind(e.to_string()))?;
                    UdpSocket::from_std(s.into()).map_err(|e| Failed::Bind(e.to_string()))?
                }
                None => {
                    let bind: SocketAddr = if t.backend.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    }
                    .parse()
                    .expect("literal");
                    UdpSocket::bind(bind)
                        .await
                        .map_err(|e| Failed::Bind(e.to_string()))?
                }
            };
            s.connect(addr)
                .await
                .map_err(|e| connect_failed(addr, &e))?;
            s.send(t.check.send.as_bytes())
                .await
                .map_err(|e| Failed::Send(e.to_string()))?;
            let mut buf = [0u8; 2048];
            let n = s
                .recv(&mut buf)
                .await
                .map_err(|e| Failed::NoReply(e.to_string()))?;
            let reply = String::from_utf8_lossy(&buf[..n]);
            if let Some(want) = &t.check.expect
                && !reply.contains(want.as_str())
            {
                return Err(Failed::ReplyLacks(want.clone()));
            }
            Ok(Passed::Reply)
        }
        CheckKind::Exec => {
            let (prog, args) = t.check.command.split_first().ok_or(Failed::NoCommand)?;
            let status = tokio::process::Command::new(prog)
                .args(args)
                .env("HOLA_BACKEND_ADDRESS", t.backend.to_string())
                .env("HOLA_BACKEND_PORT", t.port.to_string())
                .env("HOLA_VIP", t.vip.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| Failed::Spawn {
                    prog: prog.clone(),
                    error: e.to_string(),
                })?;
            if status.success() {
                Ok(Passed::Exit0)
            } else {
                Err(Failed::Exit {
                    prog: prog.clone(),
                    status: status.to_string(),
                })
            }
        }
    }
}

fn connect_failed(addr: SocketAddr, e: &std::io::Error) -> Failed {
    Failed::Connect {
        addr,
        error: e.to_string(),
    }
}

/// Largest response body an HTTP check reads (to find `expect_body`).
const HTTP_BODY_LIMIT: usize = 64 * 1024;

/// HTTP/1.1 GET of the check's path with its Host header; the status must
/// be the expected one, and the body (when asked) contain a substring.
async fn http_probe(
    t: &Target,
    addr: SocketAddr,
    via: Option<(Via, IpAddr)>,
) -> Result<Passed, Failed> {
    let want = t.check.expect_body.as_deref();
    let stream = connect(addr, via).await?;
    let (status, body) = http_exchange(&t.check, addr, stream, want.is_some()).await?;
    if status != t.check.expect_status {
        return Err(Failed::Status {
            got: status,
            want: t.check.expect_status,
        });
    }
    if let Some(want) = want
        && !body.contains(want)
    {
        return Err(Failed::BodyLacks {
            status,
            want: want.to_string(),
        });
    }
    Ok(Passed::Http(status))
}

/// GET `check.path` from `addr` with the check's Host header (default: the
/// address): the status, and the body (at most 64 KiB) when `read_body`.
/// Any framing the server uses (length, chunked, close) is understood.
pub async fn http_get(
    check: &HealthConfig,
    addr: SocketAddr,
    read_body: bool,
) -> Result<(u16, String), Failed> {
    let stream = connect(addr, None).await?;
    http_exchange(check, addr, stream, read_body).await
}

/// The GET of [`http_get`] on a connection already made to `addr`.
async fn http_exchange(
    check: &HealthConfig,
    addr: SocketAddr,
    stream: TcpStream,
    read_body: bool,
) -> Result<(u16, String), Failed> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper::body::Bytes;

    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Failed::Http(format!("HTTP handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let req = hyper::Request::get(check.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "hola-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failed::Http(format!("building the request: {e}")))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failed::Http(format!("HTTP request: {e}")))?;
        let status = resp.status().as_u16();
        if !read_body {
            return Ok((status, String::new()));
        }
        let body = Limited::new(resp.into_body(), HTTP_BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| Failed::Http(format!("HTTP {status}, reading the body: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A target on 127.0.0.1:`port` for VIP 198.18.1.1:80/tcp.
    pub(crate) fn local_target(port: u16, check: HealthConfig) -> Target {
        Target {
            vip: VipAddr {
                addr: "198.18.1.1".parse().expect("ip"),
                port: 80,
                proto: crate::model::Proto::Tcp,
            },
            backend: "127.0.0.1".parse().expect("ip"),
            port,
            check,
            via: None,
        }
    }

    pub(crate) fn check(kind: CheckKind, interval_ms: u64, timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            kind,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise: 2,
            fall: 3,
            port: None,
            path: "/".into(),
            host: None,
            expect_status: 200,
            expect_body: None,
            send: "hola-health".into(),
            expect: None,
            command: Vec::new(),
            slow_start: None,
            initial: crate::config::Initial::Up,
            through: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_fails_at_its_timeout() {
        // A listener that accepts nothing back: TCP connect succeeds (the
        // kernel completes the handshake), so use HTTP, which waits for an
        // answer that never comes.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = local_target(port, check(CheckKind::Http, 1000, 500));
        let p = probe(&t).await;
        assert!(!p.ok);
        assert_eq!(p.detail, "timeout after 500ms");
        drop(l);
    }

    #[tokio::test]
    async fn http_probe_checks_status_and_body() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // Keep-alive server: answers and keeps every connection open,
            // so the probe must stop at Content-Length, not at EOF.
            let mut held = Vec::new();
            for status in ["200 OK", "200 OK", "503 Unavailable"] {
                let (mut c, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf).await;
                let body = "all good";
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).await.expect("write");
                held.push(c);
            }
            std::future::pending::<()>().await;
        });
        let mut t = local_target(port, check(CheckKind::Http, 1000, 1000));
        assert_eq!(probe(&t).await.detail, "HTTP 200");
        t.check.expect_body = Some("missing".into());
        let p = probe(&t).await;
        assert!(!p.ok && p.detail.contains("lacks"), "{p:?}");
        t.check.expect_body = None;
        let p = probe(&t).await;
        assert!(!p.ok && p.detail == "HTTP 503, expected 200", "{p:?}");
    }

    #[tokio::test]
    async fn tcp_and_exec_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut t = local_target(port, check(CheckKind::Tcp, 1000, 1000));
        assert!(probe(&t).await.ok);
        drop(l);
        assert!(!probe(&t).await.ok, "nothing listens any more");
        t.check.kind = CheckKind::Exec;
        t.check.command = vec![
            "sh".into(),
            "-c".into(),
            "test \"$HOLA_BACKEND_ADDRESS\" = 127.0.0.1".into(),
        ];
        assert!(
            probe(&t).await.ok,
            "exit 0 with the backend in the environment"
        );
        t.check.command = vec!["false".into()];
        assert!(!probe(&t).await.ok);
    }
}
