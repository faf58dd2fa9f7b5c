//! `hola-backend`: the lab's backend. A small HTTP/1.1 server that answers
//! every `GET` with its own name, a UDP responder that answers every
//! datagram with it, and a QUIC echo server whose connection IDs carry its
//! server ID, so that a client can see which backend the balancer chose.
//!
//! Servers take their socket and a shutdown future (mini-redis); the binary
//! only parses arguments, binds and waits for SIGTERM/SIGINT.

mod quic;
mod udp;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

pub use quic::{ALPN, bind_quic, serve_quic};
pub use udp::{bind_udp, serve_udp};

/// Whether to log one line per TCP connection (and UDP datagram) to stderr.
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Turns the per-connection log lines on or off (`--verbose`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Binds a TCP listener; an IPv6 wildcard is IPv6 only, so that `0.0.0.0:80`
/// and `[::]:80` can both be bound. Must be called inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // A restarted backend rebinds at once, whatever TIME_WAIT is left.
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// The longest request head (request line and headers) we read.
const MAX_HEAD: usize = 16 * 1024;

/// Serves HTTP/1.1 on `listener` until `shutdown` completes. Every `GET`
/// (and `HEAD`) is answered `200 OK` with the body `"{name}\n"`; connections
/// stay open between requests unless the client asks otherwise.
pub async fn serve(
    listener: TcpListener,
    name: &str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let name: Arc<str> = Arc::from(name);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    // A connection that died before we accepted it, or a
                    // momentary fd shortage: neither stops the server.
                    Err(e) => {
                        eprintln!("{name}: accept: {e}");
                        continue;
                    }
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let local = stream.local_addr().ok();
                    let result = connection(stream, &name).await;
                    if verbose() {
                        log_connection(&name, peer, local, &result);
                    }
                });
            }
        }
    }
}

fn log_connection(
    name: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    result: &io::Result<u64>,
) {
    let local = local.map_or_else(|| "?".to_string(), |l| l.to_string());
    match result {
        Ok(n) => eprintln!("{name}: tcp {peer} -> {local}: {n} request(s)"),
        Err(e) => eprintln!("{name}: tcp {peer} -> {local}: {e}"),
    }
}

/// One request head, as far as we care.
struct Request {
    method: String,
    keep_alive: bool,
    /// Body bytes that follow the head (Content-Length).
    body_len: usize,
    chunked: bool,
}

/// Handles one connection; returns how many requests it answered.
async fn connection(mut stream: TcpStream, name: &str) -> io::Result<u64> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut answered = 0;
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                let r = response(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                    false,
                );
                stream.write_all(&r).await?;
                return Ok(answered);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                // The client closed: between requests is normal, inside one is not.
                if buf.is_empty() {
                    return Ok(answered);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a request head",
                ));
            }
        };
        let Some(req) = parse_head(&buf[..head_end]) else {
            stream
                .write_all(&response("400 Bad Request", "bad request\n", false))
                .await?;
            return Ok(answered);
        };
        if req.chunked {
            let r = response(
                "501 Not Implemented",
                "chunked request bodies are not supported\n",
                false,
            );
            stream.write_all(&r).await?;
            return Ok(answered);
        }
        // Drop the head and any body; what remains is the next request.
        let total = head_end + req.body_len;
        while buf.len() < total {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a request body",
                ));
            }
        }
        buf.drain(..total);

        let body = format!("{name}\n");
        let mut out = match req.method.as_str() {
            "GET" | "HEAD" => response("200 OK", &body, req.keep_alive),
            _ => method_not_allowed(req.keep_alive),
        };
        if req.method == "HEAD" {
            out.truncate(out.len() - body.len());
        }
        stream.write_all(&out).await?;
        answered += 1;
        if !req.keep_alive {
            stream.shutdown().await?;
            return Ok(answered);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a request head (ending in an empty line); `None` if it is not
/// HTTP/1.x.
fn parse_head(head: &[u8]) -> Option<Request> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, _target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() {
        return None;
    }
    // HTTP/1.1 keeps the connection open unless told otherwise; HTTP/1.0
    // closes it unless told otherwise.
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let mut body_len = 0;
    let mut chunked = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok()?;
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            chunked = !value.eq_ignore_ascii_case("identity");
        }
    }
    Some(Request {
        method: method.to_string(),
        keep_alive,
        body_len,
        chunked,
    })
}

/// A complete response with a `text/plain` body.
fn response(status: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    response_with(status, "", body, keep_alive)
}

fn method_not_allowed(keep_alive: bool) -> Vec<u8> {
    response_with(
        "405 Method Not Allowed",
        "Allow: GET, HEAD\r\n",
        "only GET and HEAD are served\n",
        keep_alive,
    )
}

fn response_with(status: &str, extra: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream, UdpSocket},
        sync::oneshot,
        task::JoinHandle,
        time::{Duration, timeout},
    };

    use super::*;

    const OK_B1: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nb1\n";
    const OK_B1_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nb1\n";

    /// A server named b1 on 127.0.0.1:0: its address, its stop switch and its task.
    async fn start() -> (SocketAddr, oneshot::Sender<()>, JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, "b1", async {
                let _ = stopped.await;
            })
            .await
        });
        (addr, stop, task)
    }

    async fn read_exact_len(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("response within 5 s")
            .expect("read response");
        got
    }

    async fn stop(stop: oneshot::Sender<()>, task: JoinHandle<io::Result<()>>) {
        stop.send(()).expect("server still running");
        timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops within 5 s of shutdown")
            .expect("server task")
            .expect("server result");
    }

    #[tokio::test]
    async fn get_with_connection_close_gets_exact_response_then_eof() {
        let (addr, s, task) = start().await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .expect("server closes within 5 s")
            .expect("read");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(OK_B1_CLOSE)
        );
        stop(s, task).await;
    }

    #[tokio::test]
    async fn keep_alive_answers_two_requests_on_one_connection() {
        let (addr, s, task) = start().await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            .await
            .expect("first request");
        assert_eq!(read_exact_len(&mut c, OK_B1.len()).await, OK_B1);
        c.write_all(b"GET /again HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            .await
            .expect("second request on the same connection");
        assert_eq!(read_exact_len(&mut c, OK_B1_CLOSE.len()).await, OK_B1_CLOSE);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty(), "nothing after the last response: {rest:?}");
        stop(s, task).await;
    }

    #[tokio::test]
    async fn pipelined_requests_and_http10_and_other_methods() {
        let (addr, s, task) = start().await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // Two pipelined requests, the first with a body; HEAD has no body.
        c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdHEAD / HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let not_allowed = method_not_allowed(true);
        assert_eq!(read_exact_len(&mut c, not_allowed.len()).await, not_allowed);
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(read_exact_len(&mut c, head.len()).await, head);
        // HTTP/1.0 closes by default.
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("send");
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, OK_B1_CLOSE);
        // Not HTTP at all.
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"hello\r\n\r\n").await.expect("send");
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("read");
        assert!(got.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
        stop(s, task).await;
    }

    #[tokio::test]
    async fn udp_answers_with_the_name() {
        let sock = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind udp");
        let addr = sock.local_addr().expect("local addr");
        let (stop_tx, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_udp(sock, "b1", async {
                let _ = stopped.await;
            })
            .await
        });
        let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        c.connect(addr).await.expect("connect");
        c.send(b"hi").await.expect("send");
        let mut buf = [0u8; 64];
        let n = timeout(Duration::from_secs(5), c.recv(&mut buf))
            .await
            .expect("answer within 5 s")
            .expect("recv");
        assert_eq!(&buf[..n], b"b1\n");
        stop_tx.send(()).expect("running");
        timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("task")
            .expect("result");
    }
}
