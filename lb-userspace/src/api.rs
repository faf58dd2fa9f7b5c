//! The control API: HTTP/JSON on a Unix socket (mode 0600), served with
//! axum. Every handler turns the request into a message for the owner
//! thread; nothing here touches the kernel. Only root may use it: the
//! socket file is root's alone, and [`serve`] checks every connection's
//! peer credentials besides.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, Query, State},
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Command, ErrorKind, OwnerError, Request},
    config::{BackendConfig, Protocol, VipConfig},
    model::VipAddr,
};

/// The control API's paths, shared by the router and the CLI.
pub mod paths {
    pub const CONFIG: &str = "/v1/config";
    pub const VIPS: &str = "/v1/vips";
    pub const VIPS_DELETE: &str = "/v1/vips/delete";
    pub const BACKENDS: &str = "/v1/backends";
    pub const BACKENDS_DELETE: &str = "/v1/backends/delete";
    pub const BACKENDS_WEIGHT: &str = "/v1/backends/weight";
    pub const BACKENDS_DRAIN: &str = "/v1/backends/drain";
    pub const STATS: &str = "/v1/stats";
    pub const FLOW: &str = "/v1/flow";
    pub const EVENTS: &str = "/v1/events";
    /// POST an [`ApplyRequest`](super::ApplyRequest): its VIPs become the
    /// desired state (or, with `dry_run`, only the preview); answers an
    /// `ApplyReport`.
    pub const APPLY: &str = "/v1/apply";
    pub const NODE_DRAIN: &str = "/v1/node/drain";
    /// POST a [`TraceSpec`](crate::trace::TraceSpec): answers a stream of
    /// `TraceLine`s, one JSON object a line, while the trace runs; closing
    /// the connection ends the trace.
    pub const TRACE: &str = "/v1/trace";
}

/// `hola node drain` (`drained: true`) and `undrain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDrain {
    pub drained: bool,
}

/// The largest request body accepted (a VIP with thousands of backends fits).
pub const BODY_LIMIT: usize = 1 << 20;
/// How long a client has to send a request's headers, and then its body.
/// The CLI sends both at once; a client that stalls is cut off so that it
/// holds nothing for long (other clients are served meanwhile).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Identifies a VIP in requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipRef {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VipRef {
    pub fn matches(&self, v: &VipConfig) -> bool {
        v.address == self.address && v.port == self.port && v.protocol == self.protocol
    }

    /// The VIP's identity.
    pub fn key(&self) -> VipAddr {
        VipAddr {
            addr: self.address,
            port: self.port,
            proto: self.protocol.into(),
        }
    }
}

impl std::fmt::Display for VipRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key().fmt(f)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAdd {
    pub vip: VipRef,
    pub backend: BackendConfig,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    pub vip: VipRef,
    pub address: IpAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendWeight {
    pub vip: VipRef,
    pub address: IpAddr,
    pub weight: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDrain {
    pub vip: VipRef,
    pub address: IpAddr,
    pub drain: bool,
}

/// `hola apply`: these VIPs (a file's, read and checked by the caller)
/// become the desired state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Where the VIPs come from, for messages.
    pub file: String,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// A request body type, with an example of it for error messages.
pub trait Example {
    const EXAMPLE: &'static str;
}

impl Example for VipConfig {
    const EXAMPLE: &'static str = r#"{"address":"198.18.1.1","port":80,"protocol":"tcp","mode":"dsr","backend":[{"address":"198.18.0.11","weight":1}]}"#;
}

impl Example for NodeDrain {
    const EXAMPLE: &'static str = r#"{"drained":true}"#;
}

impl Example for VipRef {
    const EXAMPLE: &'static str = r#"{"address":"198.18.1.1","port":80,"protocol":"tcp"}"#;
}

impl Example for BackendAdd {
    const EXAMPLE: &'static str = r#"{"vip":{"address":"198.18.1.1","port":80,"protocol":"tcp"},"backend":{"address":"198.18.0.11","weight":1}}"#;
}

impl Example for BackendRef {
    const EXAMPLE: &'static str =
        r#"{"vip":{"address":"198.18.1.1","port":80,"protocol":"tcp"},"address":"198.18.0.11"}"#;
}

impl Example for BackendWeight {
    const EXAMPLE: &'static str = r#"{"vip":{"address":"198.18.1.1","port":80,"protocol":"tcp"},"address":"198.18.0.11","weight":10}"#;
}

impl Example for BackendDrain {
    const EXAMPLE: &'static str = r#"{"vip":{"address":"198.18.1.1","port":80,"protocol":"tcp"},"address":"198.18.0.11","drain":true}"#;
}

impl Example for crate::trace::TraceSpec {
    const EXAMPLE: &'static str = r#"{"src":{"address":"198.18.0.1"},"dst":{"address":"198.18.1.1","port":80},"proto":"tcp","count":10}"#;
}

impl Example for ApplyRequest {
    const EXAMPLE: &'static str = r#"{"file":"hola.toml","dry_run":true,"vip":[{"address":"198.18.1.1","port":80,"protocol":"tcp","backend":[{"address":"198.18.0.11"}]}]}"#;
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Deserialize)]
pub struct FlowQuery {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    #[serde(default = "tcp")]
    pub proto: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

type Tx = mpsc::Sender<Request>;

/// An error for the API caller: the HTTP status and the message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError::with_status(StatusCode::BAD_REQUEST, m.into())
    }

    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError::with_status(StatusCode::NOT_FOUND, m.into())
    }

    pub fn internal(m: impl Into<String>) -> Self {
        ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, m.into())
    }
}

impl From<OwnerError> for ApiError {
    fn from(e: OwnerError) -> Self {
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::with_status(status, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl ApiError {
    fn with_status(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }
}

/// A JSON request body: at most [`BODY_LIMIT`] bytes, arriving within
/// [`READ_TIMEOUT`]; errors name the request, the field and an example.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Example> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
        let what = format!("{} {}", req.method(), req.uri().path());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let too_large = |size: String| {
            ApiError::with_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{what}: the request body{size} is over the limit of {BODY_LIMIT} bytes \
                     (1 MiB); send one change per request"
                ),
            )
        };
        if let Some(n) = declared.filter(|&n| n > BODY_LIMIT as u64) {
            return Err(too_large(format!(" ({n} bytes)")));
        }
        let body = http_body_util::Limited::new(req.into_body(), BODY_LIMIT).collect();
        let bytes = match tokio::time::timeout(READ_TIMEOUT, body).await {
            Err(_) => {
                return Err(ApiError::with_status(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "{what}: the request body did not arrive within {} s{}; send the \
                         whole body right after the headers",
                        READ_TIMEOUT.as_secs(),
                        declared
                            .map(|n| format!(" (Content-Length is {n})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large(String::new()));
            }
            Ok(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "{what}: reading the request body failed: {e}; send the whole body, as \
                     long as its Content-Length says"
                )));
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        parse(&what, &bytes).map(Json)
    }
}

/// `body` as a `T`; an error names the request, the field at fault and
/// shows a correct body.
fn parse<T: DeserializeOwned + Example>(what: &str, body: &Bytes) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(format!(
                "{what}: the request body is empty; send JSON such as {}",
                T::EXAMPLE
            )));
        }
        // serde would also read a struct from an array of its fields.
        Some(b'[') => {
            return Err(ApiError::bad_request(format!(
                "{what}: the request body is a JSON array; send one JSON object such as {}",
                T::EXAMPLE
            )));
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let t: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let at = match field.as_str() {
            "." | "?" => String::new(),
            f => format!("field {f}: "),
        };
        ApiError::bad_request(format!(
            "{what}: invalid request body: {at}{}; send JSON such as {}",
            e.inner(),
            T::EXAMPLE
        ))
    })?;
    // Trailing bytes after the object.
    de.end().map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: invalid request body: {e}; send one JSON object such as {}",
            T::EXAMPLE
        ))
    })?;
    Ok(t)
}

async fn ask<T>(tx: &Tx, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, ApiError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| ApiError::internal("the data-plane owner has stopped"))?;
    rx.await
        .map_err(|_| ApiError::internal("the data-plane owner dropped the request"))
}

async fn change(tx: &Tx, c: Command) -> Result<Response, ApiError> {
    ask(tx, |r| Request::Change(Box::new(c), r)).await??;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response())
}

async fn vip_add(State(tx): State<Tx>, Json(v): Json<VipConfig>) -> Result<Response, ApiError> {
    change(&tx, Command::AddVip(v)).await
}

async fn vip_del(State(tx): State<Tx>, Json(r): Json<VipRef>) -> Result<Response, ApiError> {
    change(&tx, Command::RemoveVip(r.key())).await
}

async fn backend_add(
    State(tx): State<Tx>,
    Json(a): Json<BackendAdd>,
) -> Result<Response, ApiError> {
    let command = Command::AddBackend {
        vip: a.vip.key(),
        backend: a.backend,
    };
    change(&tx, command).await
}

async fn backend_del(
    State(tx): State<Tx>,
    Json(r): Json<BackendRef>,
) -> Result<Response, ApiError> {
    let command = Command::RemoveBackend {
        vip: r.vip.key(),
        address: r.address,
    };
    change(&tx, command).await
}

async fn backend_weight(
    State(tx): State<Tx>,
    Json(w): Json<BackendWeight>,
) -> Result<Response, ApiError> {
    let command = Command::SetWeight {
        vip: w.vip.key(),
        address: w.address,
        weight: w.weight,
    };
    change(&tx, command).await
}

async fn backend_drain(
    State(tx): State<Tx>,
    Json(d): Json<BackendDrain>,
) -> Result<Response, ApiError> {
    let command = Command::SetDrain {
        vip: d.vip.key(),
        address: d.address,
        drain: d.drain,
    };
    change(&tx, command).await
}

async fn apply(State(tx): State<Tx>, Json(a): Json<ApplyRequest>) -> Result<Response, ApiError> {
    let report = ask(&tx, |reply| Request::Apply {
        file: a.file,
        vips: a.vips,
        dry_run: a.dry_run,
        reply,
    })
    .await??;
    Ok(axum::Json(report).into_response())
}

async fn node_drain(State(tx): State<Tx>, Json(d): Json<NodeDrain>) -> Result<Response, ApiError> {
    ask(&tx, |r| Request::Drain(d.drained, r)).await??;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response())
}

async fn vips(State(tx): State<Tx>) -> Result<Response, ApiError> {
    let c = ask(&tx, Request::Config).await?;
    Ok(axum::Json(c.vips).into_response())
}

async fn config(State(tx): State<Tx>) -> Result<Response, ApiError> {
    let c = ask(&tx, Request::Config).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        c.to_toml(),
    )
        .into_response())
}

async fn stats(State(tx): State<Tx>) -> Result<Response, ApiError> {
    let s = ask(&tx, Request::Stats).await??;
    Ok(axum::Json(s).into_response())
}

async fn flow(
    State(tx): State<Tx>,
    q: Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!(
            "{e}; expected ?src=ADDR:PORT&dst=ADDR:PORT&proto=tcp|udp"
        ))
    })?;
    let a = ask(&tx, |reply| Request::Flow {
        src: q.src,
        dst: q.dst,
        proto: q.proto,
        reply,
    })
    .await??;
    Ok(axum::Json(a).into_response())
}

async fn metrics(State(tx): State<Tx>) -> Result<Response, ApiError> {
    let s = ask(&tx, Request::Stats).await??;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::stats::prometheus(&s),
    )
        .into_response())
}

async fn events(State(tx): State<Tx>) -> Result<Response, ApiError> {
    let e = ask(&tx, Request::Events).await?;
    Ok(axum::Json(e).into_response())
}

/// How many traced packets wait for a slow client before more are dropped
/// (and counted as lost).
const TRACE_BUFFER: usize = 1024;

/// `hola trace`: the packets as they come, one JSON line each, then the
/// line that says how the trace ended. The owner ends the trace when this
/// response's body is dropped (the client went).
async fn trace(
    State(tx): State<Tx>,
    Json(spec): Json<crate::trace::TraceSpec>,
) -> Result<Response, ApiError> {
    let (out, rx) = mpsc::channel(TRACE_BUFFER);
    ask(&tx, |reply| Request::Trace { spec, out, reply }).await??;
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        Some((Ok::<_, std::convert::Infallible>(s), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "{method} {}: no such endpoint; the endpoints are listed under Control API in \
         docs/operations.md",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let allowed = match path {
        paths::VIPS => "GET lists VIPs, POST adds one",
        p if p.starts_with("/v1/vips/") || p.starts_with("/v1/backends") => "POST",
        paths::APPLY | paths::TRACE => "POST",
        _ => "GET",
    };
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} {path}: method not allowed; use {allowed}"),
    )
}

/// The control API's routes.
pub fn router(tx: Tx) -> Router {
    Router::new()
        .route(paths::CONFIG, get(config))
        .route(paths::VIPS, get(vips).post(vip_add))
        .route(paths::VIPS_DELETE, post(vip_del))
        .route(paths::BACKENDS, post(backend_add))
        .route(paths::BACKENDS_DELETE, post(backend_del))
        .route(paths::BACKENDS_WEIGHT, post(backend_weight))
        .route(paths::BACKENDS_DRAIN, post(backend_drain))
        .route(paths::STATS, get(stats))
        .route(paths::FLOW, get(flow))
        .route(paths::EVENTS, get(events))
        .route(paths::APPLY, post(apply))
        .route(paths::NODE_DRAIN, post(node_drain))
        .route(paths::TRACE, post(trace))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(tx)
}

/// Answers every request of a connection whose peer is not root.
fn refusal(uid: Option<u32>) -> Router {
    let who = match uid {
        Some(u) => format!("this client runs as uid {u}"),
        None => "the client's credentials could not be read".into(),
    };
    let message = format!(
        "the hola control socket accepts only root (uid 0) and {who}; run the command as \
         root, e.g. sudo hola ..."
    );
    Router::new().fallback(move || {
        let m = message.clone();
        async move { ApiError::with_status(StatusCode::FORBIDDEN, m) }
    })
}

/// How long connections still open at shutdown get to finish (a change
/// waits up to `owner::NEXTHOP_WAIT` for next hops before it is answered).
const DRAIN: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `shutdown`: one task per connection,
/// so a slow client delays no other; a client that has not sent a request's
/// headers within [`READ_TIMEOUT`] is disconnected; a peer that is not root
/// (SO_PEERCRED) gets 403 to every request. At shutdown no connection is
/// accepted any more, those open finish their request (for up to a
/// second), and every connection task has ended when this returns.
pub async fn serve(
    listener: tokio::net::UnixListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    let result = loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors or memory: the connections being
                // served finish and free some; try again shortly.
                tracing::warn!(error = %e, "accepting a control connection; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => break Err(e),
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let service = if uid == Some(0) {
            router.clone()
        } else {
            tracing::warn!(
                uid = ?uid,
                "refused a control connection from a user other than root"
            );
            refusal(uid)
        };
        connections.spawn(connection(stream, service, shutdown.clone()));
    };
    if tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.shutdown().await;
    }
    result
}

/// One control connection, closed gracefully at `shutdown` (after the
/// request in progress, if any).
async fn connection(stream: tokio::net::UnixStream, service: Router, shutdown: CancellationToken) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "control connection ended with an error");
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// `/metrics` alone, for the localhost metrics listener.
pub fn metrics_router(tx: Tx) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(tx)
}
