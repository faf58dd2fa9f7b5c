//! The control API under bad input and the state file under crashes: a real
//! daemon in the lab, real requests on its Unix socket (raw bytes where the
//! CLI cannot send what is tested), SIGKILL at random moments, corrupt
//! state files. Every refusal must name the thing and the fix, change
//! nothing (configuration, state file, forwarding) and leave the daemon
//! serving.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL, hola_bin},
    fixture::{Rng, require_root},
    netns::{Topology, in_ns},
    topo::{DSR_VIP, Lab, Servers, http_get},
};
use lb_userspace::{
    api::{BODY_LIMIT, ErrorBody, READ_TIMEOUT},
    config::{self, Config, VipConfig},
    state::prev_path,
};

const VIP: &str = "198.18.1.1:80/tcp";
/// The VIP as the API names it in bodies.
const VIP_JSON: &str = r#"{"address":"198.18.1.1","port":80,"protocol":"tcp"}"#;

/// A DSR VIP on the lab's first backends.
fn config(backends: &[usize]) -> String {
    let mut c = format!(
        r#"{GLOBAL}
[[vip]]
address = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "dsr"
"#,
    );
    for i in backends {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.0.{}\"\n", 10 + i);
    }
    c
}

/// Removes a test daemon's directory (`/tmp/hola-test-NAME`) when the test
/// passes; a failed test keeps it for the daemon's log. Made before the
/// daemon, so dropped after it.
struct RemoveOnSuccess(PathBuf);

impl RemoveOnSuccess {
    fn new(daemon_name: &str) -> Self {
        RemoveOnSuccess(PathBuf::from(format!("/tmp/hola-test-{daemon_name}")))
    }
}

impl Drop for RemoveOnSuccess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP on the control socket

/// Reads a response until the server closes: (status, body). A reset after
/// the response (the server closed with our body unread) still yields it.
fn read_response(s: &mut UnixStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("write timeout");
    s
}

/// One request with `Connection: close`: (status, body).
fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hola\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // The server may answer (413) and close before taking the whole body:
    // its answer is still there to read.
    match s.write_all(body) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    read_response(&mut s)
}

/// The `error` of an error body.
fn error_of(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("error body is not {{\"error\": ...}} ({e}): {body:?}"))
        .error
}

/// What must not change when a request is refused: the daemon's view of
/// the configuration and the bytes of its state file.
#[derive(PartialEq)]
struct Snapshot {
    config: String,
    state: Vec<u8>,
}

fn snapshot(d: &Daemon) -> Snapshot {
    let (status, config) = http(&d.socket, "GET", "/v1/config", b"").expect("GET /v1/config");
    assert_eq!(status, 200, "GET /v1/config: {config}");
    let state = std::fs::read(d.dir.join("state.toml")).expect("reading the state file");
    Snapshot { config, state }
}

/// `n` new connections to the VIP from the client, one GET each; how many
/// failed.
fn failed_requests(lab: &Lab, n: usize) -> usize {
    in_ns(&lab.t.ns("cl"), move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut failed = 0;
        for _ in 0..n {
            assert!(Instant::now() < deadline, "request loop ran out of time");
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            });
            if r.is_err() {
                failed += 1;
            }
        }
        failed
    })
}

// ---------------------------------------------------------------------------
// Item 3: control input

/// A request the API must refuse: what is sent, the status and what the
/// message must mention (lower case).
struct Case {
    method: &'static str,
    path: &'static str,
    body: String,
    status: u16,
    needles: &'static [&'static str],
}

fn case(
    method: &'static str,
    path: &'static str,
    body: impl Into<String>,
    status: u16,
    needles: &'static [&'static str],
) -> Case {
    Case {
        method,
        path,
        body: body.into(),
        status,
        needles,
    }
}

fn backend_add(backend: &str) -> String {
    format!(r#"{{"vip":{VIP_JSON},"backend":{backend}}}"#)
}

fn api_cases() -> Vec<Case> {
    let vip = |rest: &str| format!(r#"{{"address":"198.18.1.9","port":80{rest}}}"#);
    let mut c = vec![
        // Malformed JSON, wrong shapes and types, on every POST endpoint.
        case(
            "POST",
            "/v1/vips",
            "{",
            400,
            &["post /v1/vips", "eof", "send json such as"],
        ),
        case(
            "POST",
            "/v1/vips",
            "",
            400,
            &["body is empty", "send json such as"],
        ),
        case(
            "POST",
            "/v1/vips",
            "[]",
            400,
            &["a json array", "send one json object such as"],
        ),
        case(
            "POST",
            "/v1/vips",
            "\u{fffd}\u{0}garbage",
            400,
            &["expected value"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip("} trailing"),
            400,
            &["trailing characters"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"port":80}"#,
            400,
            &["missing field `address`"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","colour":"red""#),
            400,
            &["unknown field `colour`"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"198.18.1.9","port":"80"}"#,
            400,
            &["field port", "expected u16"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"198.18.1.9","port":70000}"#,
            400,
            &["field port", "70000", "u16"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"198.18.1.300","port":80}"#,
            400,
            &["field address", "ip address"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","protocol":"sctp""#),
            400,
            &["field protocol", "sctp"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"magic""#),
            400,
            &["field mode", "magic"],
        ),
        // Out of range and inconsistent values, found by the config checks.
        case(
            "POST",
            "/v1/vips",
            vip(r#","table_size":1000"#),
            400,
            &[
                "vip 198.18.1.9:80/tcp",
                "table_size = 1000",
                "not prime",
                "65537",
            ],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","table_size":4"#),
            400,
            &["table_size = 4", "must be a prime in"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"224.0.0.9","port":80}"#,
            400,
            &["multicast", "unicast address"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"fullnat""#),
            400,
            &["fullnat_source_v4", "add it"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"dsr","backend":[{"address":"2001:db8::11"}]"#),
            400,
            &[
                "backend 2001:db8::11",
                "ipv6 but the vip 198.18.1.9 is ipv4",
            ],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"nat","backend":[{"address":"2001:db8::11"}]"#),
            400,
            &["ipv6 but the vip 198.18.1.9 is ipv4"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"tunnel","backend":[{"address":"2001:db8::11"}]"#),
            400,
            &["ipv6 but the vip 198.18.1.9 is ipv4"],
        ),
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"2001:db8:1::9","port":80,"backend":[{"address":"198.18.0.11"}]}"#,
            400,
            &["ipv4 but the vip 2001:db8:1::9 is ipv6"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","backend":[{"address":"198.18.0.11","port":8080}]"#),
            400,
            &["port = 8080", "only for mode = \"nat\""],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","mode":"nat","backend":[{"address":"198.18.0.11","port":0}]"#),
            400,
            &["backend 198.18.0.11", "port = 0", "1..=65535"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","backend":[{"address":"198.18.0.11","weight":10001}]"#),
            400,
            &["weight = 10001", "0..=10000"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","backend":[{"address":"198.18.0.11"},{"address":"198.18.0.11"}]"#),
            400,
            &["198.18.0.11", "already", "remove one"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","health":{"type":"tcp","interval":"2 parsecs"}"#),
            400,
            &["field health", "parsecs"],
        ),
        case(
            "POST",
            "/v1/vips",
            vip(r#","outlier":{"failures":3}"#),
            400,
            &["outlier", "only for mode = \"nat\""],
        ),
        // Duplicates and missing objects.
        case(
            "POST",
            "/v1/vips",
            r#"{"address":"198.18.1.1","port":80,"protocol":"tcp"}"#,
            409,
            &["vip 198.18.1.1:80/tcp already exists"],
        ),
        case(
            "POST",
            "/v1/vips/delete",
            r#"{"address":"198.18.1.1","port":81,"protocol":"tcp"}"#,
            404,
            &["vip 198.18.1.1:81/tcp does not exist"],
        ),
        case(
            "POST",
            "/v1/vips/delete",
            r#"{"address":"198.18.1.1"}"#,
            400,
            &[
                "post /v1/vips/delete",
                "missing field `port`",
                "send json such as",
            ],
        ),
        case("POST", "/v1/vips/delete", "delete it", 400, &["expected"]),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.11"}"#),
            409,
            &["backend 198.18.0.11 is already in vip 198.18.1.1:80/tcp"],
        ),
        case(
            "POST",
            "/v1/backends",
            r#"{"vip":{"address":"198.18.9.9","port":80,"protocol":"tcp"},"backend":{"address":"198.18.0.13"}}"#,
            404,
            &["vip 198.18.9.9:80/tcp does not exist"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"2001:db8::13"}"#),
            400,
            &[
                "vip 198.18.1.1:80/tcp, backend 2001:db8::13",
                "must be ipv4",
            ],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","weight":70000}"#),
            400,
            &[
                "vip 198.18.1.1:80/tcp, backend 198.18.0.13",
                "weight = 70000",
                "0..=10000",
            ],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","weight":-1}"#),
            400,
            &["field backend.weight", "-1"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","weight":"heavy"}"#),
            400,
            &["field backend.weight", "heavy"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","port":0}"#),
            400,
            &["port = 0"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","port":70000}"#),
            400,
            &["field backend.port", "70000"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","port":8080}"#),
            400,
            &["only for mode = \"nat\""],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"255.255.255.255"}"#),
            400,
            &["not a unicast address"],
        ),
        case(
            "POST",
            "/v1/backends",
            backend_add(r#"{"address":"198.18.0.13","interface":"a/b"}"#),
            400,
            &["interface", "not an interface name"],
        ),
        case(
            "POST",
            "/v1/backends",
            format!(r#"{{"vip":{VIP_JSON}}}"#),
            400,
            &["missing field `backend`"],
        ),
        case(
            "POST",
            "/v1/backends/delete",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.99"}}"#),
            404,
            &["backend 198.18.0.99 is not in vip 198.18.1.1:80/tcp"],
        ),
        case(
            "POST",
            "/v1/backends/delete",
            r#"{"vip":{"address":"198.18.9.9","port":80,"protocol":"tcp"},"address":"198.18.0.11"}"#,
            404,
            &["vip 198.18.9.9:80/tcp does not exist"],
        ),
        case(
            "POST",
            "/v1/backends/delete",
            format!(r#"{{"vip":{VIP_JSON},"address":12}}"#),
            400,
            &["field address"],
        ),
        case(
            "POST",
            "/v1/backends/weight",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.11","weight":10001}}"#),
            400,
            &["backend 198.18.0.11", "weight = 10001", "0..=10000"],
        ),
        case(
            "POST",
            "/v1/backends/weight",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.11","weight":4294967296}}"#),
            400,
            &["field weight", "u32"],
        ),
        case(
            "POST",
            "/v1/backends/weight",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.99","weight":5}}"#),
            404,
            &["backend 198.18.0.99 is not in vip"],
        ),
        case(
            "POST",
            "/v1/backends/weight",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.11"}}"#),
            400,
            &["missing field `weight`"],
        ),
        case(
            "POST",
            "/v1/backends/drain",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.11","drain":"yes"}}"#),
            400,
            &["field drain", "expected a boolean"],
        ),
        case(
            "POST",
            "/v1/backends/drain",
            format!(r#"{{"vip":{VIP_JSON},"address":"198.18.0.99","drain":true}}"#),
            404,
            &["backend 198.18.0.99 is not in vip"],
        ),
        // Queries, unknown paths, wrong methods.
        case(
            "GET",
            "/v1/flow?src=nonsense&dst=198.18.1.1:80",
            "",
            400,
            &["src", "expected ?src=addr:port"],
        ),
        case(
            "GET",
            "/v1/flow?src=198.18.0.1:4000&dst=%5B2001:db8::1%5D:80",
            "",
            400,
            &["different address families"],
        ),
        case(
            "GET",
            "/v1/flow?src=198.18.0.1:4000&dst=198.18.1.9:80",
            "",
            404,
            &["no vip for 198.18.1.9:80/tcp"],
        ),
        case(
            "GET",
            "/v1/nothing",
            "",
            404,
            &["get /v1/nothing", "no such endpoint", "docs/operations.md"],
        ),
        case(
            "GET",
            "/v1/backends",
            "",
            405,
            &["get /v1/backends", "use post"],
        ),
        case(
            "DELETE",
            "/v1/vips",
            "",
            405,
            &["delete /v1/vips", "post adds"],
        ),
        case(
            "POST",
            "/v1/config",
            "{}",
            405,
            &["post /v1/config", "use get"],
        ),
    ];
    // Every POST endpoint: the body not JSON at all.
    for path in [
        "/v1/vips",
        "/v1/vips/delete",
        "/v1/backends",
        "/v1/backends/delete",
        "/v1/backends/weight",
        "/v1/backends/drain",
    ] {
        c.push(case(
            "POST",
            path,
            "weight=5",
            400,
            &["invalid request body", "send json such as"],
        ));
    }
    c
}

/// A CLI command the daemon or the CLI must refuse, and what its message
/// must mention (lower case).
fn cli_cases() -> Vec<(Vec<&'static str>, &'static [&'static str])> {
    vec![
        (
            vec!["vip", "add", "198.18.1.9:70000/tcp", "--mode", "dsr"],
            &["198.18.1.9:70000", "address:port/proto"],
        ),
        (
            vec!["vip", "add", "198.18.1.9:80/sctp", "--mode", "dsr"],
            &["\"sctp\" is not tcp or udp"],
        ),
        (
            vec!["vip", "add", "198.18.1.9:80/tcp", "--mode", "magic"],
            &["'magic'", "possible values"],
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.1.9:80/tcp",
                "--mode",
                "dsr",
                "--table-size",
                "1000",
            ],
            &["table_size = 1000", "not prime"],
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.1.9:80/tcp",
                "--mode",
                "dsr",
                "--table-size",
                "-7",
            ],
            &["invalid value '-7' for '--table-size"],
        ),
        (
            vec!["vip", "add", VIP, "--mode", "dsr"],
            &["vip 198.18.1.1:80/tcp already exists"],
        ),
        (
            vec!["vip", "add", "[2001:db8:1::9]:80/tcp", "--mode", "fullnat"],
            &["fullnat_source_v6"],
        ),
        (vec!["vip", "del", "198.18.1.1:81/tcp"], &["does not exist"]),
        (
            vec!["backend", "add", VIP, "198.18.0.11"],
            &["already in vip"],
        ),
        (
            vec!["backend", "add", VIP, "2001:db8::13"],
            &["must be ipv4"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.300"],
            &["198.18.0.300", "invalid"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.13", "--weight", "70000"],
            &["backend 198.18.0.13", "weight = 70000", "0..=10000"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.13", "--weight", "-1"],
            &["invalid value '-1' for '--weight"],
        ),
        (
            vec!["backend", "set-weight", VIP, "198.18.0.11", "-1"],
            &["invalid value '-1' for '<weight>'"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.13", "--port", "0"],
            &["port = 0"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.13", "--port", "70000"],
            &["70000", "65535"],
        ),
        (
            vec!["backend", "add", VIP, "198.18.0.13", "--port", "8080"],
            &["only for mode = \"nat\""],
        ),
        (
            vec!["backend", "add", "198.18.9.9:80/tcp", "198.18.0.13"],
            &["vip 198.18.9.9:80/tcp does not exist"],
        ),
        (
            vec!["backend", "del", VIP, "198.18.0.99"],
            &["backend 198.18.0.99 is not in vip 198.18.1.1:80/tcp"],
        ),
        (
            vec!["backend", "set-weight", VIP, "198.18.0.11", "10001"],
            &["weight = 10001"],
        ),
        (
            vec!["backend", "set-weight", VIP, "198.18.0.11", "heavy"],
            &["'heavy'", "invalid"],
        ),
        (
            vec!["backend", "drain", VIP, "198.18.0.99"],
            &["not in vip"],
        ),
        (
            vec!["backend", "undrain", "198.18.9.9:80/tcp", "198.18.0.11"],
            &["does not exist"],
        ),
        (
            vec!["flow", "198.18.0.1:40000", "[2001:db8::1]:80"],
            &["different address families"],
        ),
        (
            vec!["flow", "nonsense", "198.18.1.1:80"],
            &["'nonsense'", "invalid"],
        ),
    ]
}

/// Slow and half-open clients, opened first and checked last: they must
/// hold up nobody while open, and be cut off after [`READ_TIMEOUT`].
struct SlowClients {
    opened: Instant,
    idle: Vec<UnixStream>,
    half_head: UnixStream,
    half_body: UnixStream,
    half_closed: UnixStream,
}

impl SlowClients {
    fn open(socket: &Path) -> Self {
        let idle = (0..50).map(|_| connect(socket)).collect();
        let mut half_head = connect(socket);
        half_head
            .write_all(b"POST /v1/backends HTTP/1.1\r\nHost: hola\r\nContent-Le")
            .expect("half a header");
        let mut half_body = connect(socket);
        half_body
            .write_all(
                b"POST /v1/backends HTTP/1.1\r\nHost: hola\r\nContent-Length: 100\r\n\r\n{\"vip\":",
            )
            .expect("half a body");
        // Half a body, then the client closes its sending side.
        let mut half_closed = connect(socket);
        half_closed
            .write_all(
                b"POST /v1/backends HTTP/1.1\r\nHost: hola\r\nContent-Length: 100\r\n\r\n{\"vip\":",
            )
            .expect("half a body");
        half_closed
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        SlowClients {
            opened: Instant::now(),
            idle,
            half_head,
            half_body,
            half_closed,
        }
    }

    /// Waits out the read timeout, then checks each was dealt with.
    fn check(mut self) {
        // The half-closed one is answered at once: its body cannot come.
        let (status, body) = read_response(&mut self.half_closed).expect("half-closed client");
        println!("half-closed body: {status} {body}");
        assert_eq!(status, 400, "a body cut short: {body}");
        assert!(
            error_of(&body).contains("reading the request body failed"),
            "{body}"
        );
        let wait = (READ_TIMEOUT + Duration::from_secs(2)).saturating_sub(self.opened.elapsed());
        std::thread::sleep(wait);
        let (status, body) = read_response(&mut self.half_body).expect("half-body client");
        println!("half a body: {status} {body}");
        assert_eq!(status, 408, "a body that never completes: {body}");
        let msg = error_of(&body);
        assert!(
            msg.contains("did not arrive within 10 s") && msg.contains("Content-Length is 100"),
            "{msg}"
        );
        // Half a header: hyper answers 408 without a body, or just closes.
        let r = read_response(&mut self.half_head);
        println!("half a header: {r:?}");
        assert!(
            matches!(r, Ok((408, _))) || r.is_err(),
            "half a header should be cut off with 408 or a close: {r:?}"
        );
        for (i, s) in self.idle.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => {}
                other => panic!(
                    "idle connection {i} still open {:?} after it was opened: {other:?}",
                    self.opened.elapsed()
                ),
            }
        }
    }
}

#[test]
fn bad_control_input_is_refused_clearly_and_changes_nothing() {
    require_root();
    let started = Instant::now();
    let lab = Lab::new("hctin", 3);
    let servers = Servers::start(&lab);
    let _dir = RemoveOnSuccess::new("hct-input");
    let d = Daemon::start("hct-input", &lab.t.ns("lb"), &config(&[1, 2]));
    assert_eq!(failed_requests(&lab, 50), 0, "forwarding before the test");

    let slow = SlowClients::open(&d.socket);
    // Other clients are served while the slow ones hold their connections.
    let t = Instant::now();
    let before = snapshot(&d);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a request took {:?} while slow clients were connected",
        t.elapsed()
    );

    let cases = api_cases();
    for c in &cases {
        let what = format!("{} {} {}", c.method, c.path, c.body);
        let (status, body) = http(&d.socket, c.method, c.path, c.body.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let msg = error_of(&body);
        println!("{what}\n  -> {status} {msg}");
        assert_eq!(status, c.status, "{what}: {msg}");
        let lower = msg.to_lowercase();
        for n in c.needles {
            assert!(lower.contains(n), "{what}: {msg:?} should mention {n:?}");
        }
        assert!(
            snapshot(&d) == before,
            "{what} changed the configuration or the state file"
        );
    }

    // Oversize bodies: announced by Content-Length, and chunked.
    let big = vec![b' '; BODY_LIMIT + 1];
    let (status, body) = http(&d.socket, "POST", "/v1/vips", &big).expect("oversize body");
    println!("oversize (Content-Length): {status} {body}");
    assert_eq!(status, 413, "{body}");
    let msg = error_of(&body);
    assert!(
        msg.contains("(1048577 bytes) is over the limit of 1048576 bytes"),
        "{msg}"
    );
    let mut s = connect(&d.socket);
    let writer = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = w.write_all(
                b"POST /v1/backends HTTP/1.1\r\nHost: hola\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let chunk = format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536));
            for _ in 0..40 {
                if w.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        })
    };
    let (status, body) = read_response(&mut s).expect("oversize chunked body");
    let _ = writer.join();
    println!("oversize (chunked): {status} {body}");
    assert_eq!(status, 413, "{body}");
    assert!(error_of(&body).contains("over the limit"), "{body}");

    // Not HTTP at all.
    let mut s = connect(&d.socket);
    s.write_all(b"\x16\x03\x01 hello, is this TLS?\r\n\r\n")
        .expect("garbage");
    let r = read_response(&mut s);
    println!("not HTTP: {r:?}");
    assert!(matches!(r, Ok((400, _))) || r.is_err(), "{r:?}");
    assert!(
        snapshot(&d) == before,
        "oversize or garbage changed the state"
    );

    for (args, needles) in cli_cases() {
        let o = d.cli(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        println!("hola {}\n  -> {}", args.join(" "), err.trim());
        assert!(
            !o.status.success(),
            "hola {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        let lower = err.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(n),
                "hola {}: {err:?} should mention {n:?}",
                args.join(" ")
            );
        }
        assert!(
            snapshot(&d) == before,
            "hola {} changed the configuration or the state file",
            args.join(" ")
        );
    }

    slow.check();
    assert!(snapshot(&d) == before, "slow clients changed the state");

    // A change that cannot be saved is not made: not in the configuration,
    // not in the kernel (backend 3 gets no connection).
    let prev = prev_path(&d.dir.join("state.toml"));
    std::fs::create_dir_all(prev.join("in-the-way")).expect("a directory in the way");
    let o = d.cli(&["backend", "add", VIP, "198.18.0.13"]);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("unsavable change: {err}");
    assert!(
        !o.status.success(),
        "a change that could not be saved succeeded"
    );
    assert!(
        err.contains("saving the state file") && err.contains("the change is not made"),
        "{err}"
    );
    assert!(snapshot(&d) == before, "an unsaved change stayed");
    assert_eq!(
        failed_requests(&lab, 100),
        0,
        "forwarding after an unsaved change"
    );
    let b3: u64 = servers
        .counts()
        .iter()
        .filter(|((name, _), _)| name == "b3")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        b3, 0,
        "backend 3 took connections: the unsaved change reached the kernel"
    );
    std::fs::remove_dir_all(&prev).expect("remove the directory in the way");
    // Still serving, still forwarding, and a good change still goes through.
    assert_eq!(failed_requests(&lab, 50), 0, "forwarding after the test");
    d.ok(&["backend", "add", VIP, "198.18.0.13"]);
    assert!(d.ok(&["config", "dump"]).contains("198.18.0.13"));
    println!(
        "{} API cases, {} CLI cases; took {:?}",
        cases.len(),
        cli_cases().len(),
        started.elapsed()
    );
}

/// `hola ARGS` as the unprivileged user nobody (uid and gid 65534).
fn as_nobody(socket: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(hola_bin())
        .uid(65534)
        .gid(65534)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running hola as nobody");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_control_socket_refuses_users_other_than_root() {
    require_root();
    let t = Topology::new("hctso", &["lb", "peer"]);
    t.link("lb", "eth0", "peer", "eth0");
    let _dir = RemoveOnSuccess::new("hct-sock");
    let d = Daemon::start("hct-sock", &t.ns("lb"), &config(&[1]));
    // nobody may look up the socket's directory, not use the socket.
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the control socket's mode");
    let before = snapshot(&d);

    // The file mode stops nobody first.
    let (ok, err) = as_nobody(&d.socket, &["stats"]);
    println!("nobody, socket mode 0600: {err}");
    assert!(!ok, "nobody read the stats");
    assert!(
        err.contains("permission denied") && err.contains("accepts only root"),
        "{err}"
    );

    // With the file mode opened by mistake, the daemon's peer check stops it.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    for args in [
        &["stats"][..],
        &["backend", "add", VIP, "198.18.0.12"],
        &["vip", "del", VIP],
    ] {
        let (ok, err) = as_nobody(&d.socket, args);
        println!("nobody, socket mode 0666, hola {}: {err}", args.join(" "));
        assert!(!ok, "nobody ran hola {}", args.join(" "));
        assert!(
            err.contains("accepts only root (uid 0)") && err.contains("uid 65534"),
            "{err}"
        );
    }
    assert!(snapshot(&d) == before, "nobody changed the state");
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Root still gets in.
    d.ok(&["stats", "--json"]);
    assert!(
        d.log().contains("refused a control connection"),
        "{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// Item 4: the state file under crashes and corruption

fn parse_state(path: &Path) -> Config {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    config::parse(&text, &path.display().to_string())
        .unwrap_or_else(|e| panic!("{} does not parse:\n{e}\n---\n{text}", path.display()))
}

/// What the changes thread saw: every acknowledged state in order (the
/// first is where it started), and the state a change in flight when the
/// daemon died would have made.
struct Changes {
    acked: Vec<Vec<VipConfig>>,
    in_flight: Option<Vec<VipConfig>>,
}

/// Adds, removes and re-weights backends 198.18.0.12 and .13 (the lab's
/// backends 2 and 3; .11 always stays) through the API, one after another,
/// until the daemon stops answering or 500 changes are done.
fn fire_changes(
    socket: PathBuf,
    start: Vec<VipConfig>,
    seed: u64,
    sending: std::sync::mpsc::Sender<()>,
) -> Changes {
    let mut rng = Rng(seed | 1);
    let mut acked = vec![start];
    for _ in 0..500 {
        let mut next = acked.last().expect("a state").clone();
        let backends = &mut next[0].backends;
        let addr = if rng.below(2) == 0 {
            "198.18.0.12"
        } else {
            "198.18.0.13"
        };
        let ip: std::net::IpAddr = addr.parse().expect("ip");
        let present = backends.iter().position(|b| b.address == ip);
        let (path, body) = match (present, rng.below(3)) {
            (None, _) => {
                let weight = 1 + rng.below(100) as u32;
                backends.push(config::BackendConfig {
                    address: ip,
                    weight,
                    backup: false,
                    interface: None,
                    port: None,
                    server_id: None,
                    drain: false,
                    health: None,
                    agent: None,
                });
                (
                    "/v1/backends",
                    backend_add(&format!(r#"{{"address":"{addr}","weight":{weight}}}"#)),
                )
            }
            (Some(i), 0) => {
                backends.remove(i);
                (
                    "/v1/backends/delete",
                    format!(r#"{{"vip":{VIP_JSON},"address":"{addr}"}}"#),
                )
            }
            (Some(i), _) => {
                let weight = loop {
                    let w = 1 + rng.below(100) as u32;
                    if w != backends[i].weight {
                        break w;
                    }
                };
                backends[i].weight = weight;
                (
                    "/v1/backends/weight",
                    format!(r#"{{"vip":{VIP_JSON},"address":"{addr}","weight":{weight}}}"#),
                )
            }
        };
        let _ = sending.send(());
        match http(&socket, "POST", path, body.as_bytes()) {
            Ok((200, _)) => acked.push(next),
            Ok((status, body)) => panic!("POST {path} {body} refused: {status}"),
            Err(_) => {
                return Changes {
                    acked,
                    in_flight: Some(next),
                };
            }
        }
    }
    Changes {
        acked,
        in_flight: None,
    }
}

/// Events on the files of one directory (inotify), to kill the daemon at a
/// chosen step of writing its state file.
struct Watch {
    fd: std::os::fd::OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> Self {
        // SAFETY: inotify_init1 takes flags only; the fd is checked below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL");
        let mask = libc::IN_CREATE | libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), mask)
        };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Watch { fd }
    }

    /// Waits for the `n`-th event `mask` on the file `name`; false after
    /// `limit`.
    fn wait(&self, name: &str, mask: u32, mut n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: reading into a buffer we own, of the length given.
            let len = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
            if len <= 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let mut off = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while off + head <= len as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes
                // with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                let name_bytes = &buf[off + head..off + head + ev.len as usize];
                let ev_name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
                if ev.mask & mask != 0 && ev_name == name.as_bytes() {
                    n -= 1;
                    if n == 0 {
                        return true;
                    }
                }
                off += head + ev.len as usize;
            }
        }
        false
    }
}

/// The steps of writing the state file a kill can be aimed at.
const STEPS: [(&str, u32, &str); 5] = [
    (
        "while the new state is written",
        libc::IN_CREATE,
        ".state.toml.tmp",
    ),
    (
        "once the new state is written",
        libc::IN_CLOSE_WRITE,
        ".state.toml.tmp",
    ),
    (
        "while the old state is linked",
        libc::IN_CREATE,
        ".state.toml.prev.tmp",
    ),
    (
        "once the old state is state.toml.prev",
        libc::IN_MOVED_TO,
        "state.toml.prev",
    ),
    (
        "once the new state is in place, before the answer",
        libc::IN_MOVED_TO,
        "state.toml",
    ),
];

#[test]
fn sigkill_during_changes_leaves_the_old_or_the_new_state() {
    require_root();
    const ITERATIONS: usize = 40;
    let started = Instant::now();
    let lab = Lab::new("hctkl", 3);
    let _dir = RemoveOnSuccess::new("hct-kill");
    let mut d = Daemon::start("hct-kill", &lab.t.ns("lb"), &config(&[1]));
    let state = d.dir.join("state.toml");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed | 1);
    // Every state the file may legitimately hold, for the .prev check.
    let mut seen: Vec<Vec<VipConfig>> = vec![parse_state(&state).vips];
    let (mut acked_total, mut killed_in_flight, mut new_in_file) = (0, 0, 0);
    let mut at_step = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        if i > 0 {
            d.spawn();
        }
        // A restarted daemon serves what the file holds.
        let file = parse_state(&state);
        let (status, served) = http(&d.socket, "GET", "/v1/config", b"").expect("GET /v1/config");
        assert_eq!(status, 200);
        let served = config::parse(&served, "GET /v1/config").expect("config parses");
        assert_eq!(
            served.vips, file.vips,
            "iteration {i}: served vs state file"
        );

        let watch = Watch::new(&d.dir);
        let (socket, start, s) = (d.socket.clone(), file.vips.clone(), rng.next_u64());
        let (sending, sent) = std::sync::mpsc::channel();
        let changes = std::thread::spawn(move || fire_changes(socket, start, s, sending));
        let k = 1 + rng.below(5);
        if i % 2 == 0 {
            // During the k-th change, a random time after it was sent (a
            // change takes tens of milliseconds: validation, Maglev tables,
            // map writes, the state file, the answer).
            for _ in 0..k {
                sent.recv_timeout(Duration::from_secs(10))
                    .expect("the changes thread sends changes");
            }
            std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        } else {
            // At each step of writing the state file in turn, for the k-th
            // change.
            let (step, mask, name) = STEPS[(i / 2) % STEPS.len()];
            assert!(
                watch.wait(name, mask, k, Duration::from_secs(10)),
                "iteration {i}: no change reached the step {step:?} within 10 s"
            );
            *at_step.entry(step).or_insert(0) += 1;
        }
        d.kill(libc::SIGKILL);
        let c = changes.join().expect("changes thread");
        let got = parse_state(&state).vips;
        let old = c.acked.last().expect("a state");
        let is_old = got == *old;
        let is_new = c.in_flight.as_ref() == Some(&got);
        assert!(
            is_old || is_new,
            "iteration {i} (seed {seed}): the state file holds neither the last acknowledged \
             state nor the one in flight:\nfile: {got:#?}\nacknowledged: {old:#?}\nin flight: {:#?}",
            c.in_flight
        );
        acked_total += c.acked.len() - 1;
        killed_in_flight += usize::from(c.in_flight.is_some());
        new_in_file += usize::from(is_new && !is_old);
        seen.extend(c.acked);
        seen.extend(c.in_flight);
        let prev = prev_path(&state);
        if prev.exists() {
            let p = parse_state(&prev).vips;
            assert!(
                seen.contains(&p),
                "iteration {i} (seed {seed}): {} holds a state that never was: {p:#?}",
                prev.display()
            );
        }
    }
    d.spawn();
    assert_eq!(
        config::parse(&d.ok(&["config", "dump"]), "dump")
            .expect("dump")
            .vips,
        parse_state(&state).vips,
        "the last restart serves the state file"
    );
    println!(
        "{ITERATIONS} kills: {acked_total} changes acknowledged, {killed_in_flight} kills with a \
         change in flight, {new_in_file} of those had reached the file; kills aimed at steps of \
         the write: {at_step:?}; took {:?}",
        started.elapsed()
    );
    assert!(
        new_in_file > 0,
        "no kill landed after the new state was in place and before the answer: the test \
         did not exercise that window"
    );
    assert!(
        acked_total >= ITERATIONS,
        "too few changes were made between kills to test anything: {acked_total}"
    );
}

/// `hola run` that must refuse to start: its exit status and output.
fn refused_start(d: &Daemon) -> String {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.ns))
        .arg(hola_bin())
        .arg("run")
        .arg("--config")
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hola run");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for hola run") {
            let mut out = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut out);
            }
            assert!(!status.success(), "hola run exited with success: {out}");
            return out;
        }
        if Instant::now() > deadline {
            // SAFETY: kill on the PID of the child we started, not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            panic!("hola run started on a corrupt state file (killed after 30 s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_corrupt_state_file_is_refused_and_the_previous_state_kept() {
    require_root();
    let lab = Lab::new("hctcs", 3);
    let _servers = Servers::start(&lab);
    let _dir = RemoveOnSuccess::new("hct-corrupt");
    let mut d = Daemon::start("hct-corrupt", &lab.t.ns("lb"), &config(&[1]));
    let state = d.dir.join("state.toml");
    let prev = prev_path(&state);
    d.ok(&["backend", "add", VIP, "198.18.0.12"]);
    d.ok(&["backend", "add", VIP, "198.18.0.13", "--weight", "3"]);
    let good = std::fs::read(&state).expect("state");
    let good_prev = std::fs::read(&prev).expect("the state before the last change");
    let prev_vips = config::parse(&String::from_utf8_lossy(&good_prev), "prev")
        .expect("prev parses")
        .vips;
    assert_eq!(
        prev_vips[0].backends.len(),
        2,
        "prev is the state before the add"
    );
    d.kill(libc::SIGTERM);
    // The data plane stays attached while no daemon runs.
    assert_eq!(
        failed_requests(&lab, 20),
        0,
        "forwarding with the daemon stopped"
    );

    let text = String::from_utf8(good.clone()).expect("utf-8");
    let corruptions: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "garbage bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            &["not utf-8 text", "corrupt"],
        ),
        (
            "truncated TOML",
            text.as_bytes()[..text.len() * 2 / 3].to_vec(),
            &["syntax error"],
        ),
        ("an empty file", Vec::new(), &["global"]),
        (
            "valid TOML with an invalid weight",
            text.replace("weight = 3", "weight = 99999").into_bytes(),
            &["weight = 99999", "0..=10000"],
        ),
        (
            "valid TOML with an unknown key",
            text.replace("weight = 3", "weight = 3\nwieght = 4")
                .into_bytes(),
            &["wieght"],
        ),
    ];
    for (what, bytes, needles) in &corruptions {
        std::fs::write(&state, bytes).expect("write corrupt state");
        let out = refused_start(&d);
        println!("{what}:\n{out}");
        let lower = out.to_lowercase();
        let (s, p, c) = (
            state.display().to_string(),
            prev.display().to_string(),
            d.config.display().to_string(),
        );
        for n in [
            format!("the state file {s} cannot be used").as_str(),
            &format!("kept at {p} and is valid (1 vips, 2 backends)"),
            &format!("mv {p} {s}"),
            &format!("move {s} away to start from the vips in {c}"),
            "does not choose",
        ]
        .into_iter()
        .chain(needles.iter().copied())
        {
            assert!(
                lower.contains(&n.to_lowercase()),
                "{what}: {out:?} should say {n:?}"
            );
        }
        assert_eq!(
            std::fs::read(&state).expect("state"),
            *bytes,
            "{what}: the refused start changed the state file"
        );
        assert_eq!(
            std::fs::read(&prev).expect("prev"),
            good_prev,
            "{what}: the refused start changed {}",
            prev.display()
        );
        assert_eq!(
            failed_requests(&lab, 20),
            0,
            "{what}: forwarding after a refused start"
        );
    }

    // The operator follows the advice: the previous state goes into place.
    std::fs::rename(&prev, &state).expect("mv prev state");
    d.spawn();
    let served = config::parse(&d.ok(&["config", "dump"]), "dump").expect("dump");
    assert_eq!(served.vips, prev_vips, "started from the previous state");
    assert_eq!(failed_requests(&lab, 20), 0, "forwarding after the restart");
}
