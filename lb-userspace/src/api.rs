//! The control API: HTTP/JSON on a Unix socket (mode 0600), served with
//! axum. Every handler turns the request into a message for the owner
//! thread; nothing here touches the kernel.

use std::{net::IpAddr, net::SocketAddr, sync::mpsc};

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::oneshot;

use crate::{
    config::{BackendConfig, Config, Protocol, VipConfig},
    owner::{ApiError, Change, Request, vip_addr},
};

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
}

impl std::fmt::Display for VipRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = crate::dataplane::VipAddr {
            addr: self.address,
            port: self.port,
            proto: crate::owner::proto_of(self.protocol),
        };
        v.fmt(f)
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn ask<T>(tx: &Tx, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, ApiError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .map_err(|_| ApiError::internal("the data-plane owner has stopped"))?;
    rx.await
        .map_err(|_| ApiError::internal("the data-plane owner dropped the request"))
}

async fn change(tx: &Tx, c: Change) -> Result<Response, ApiError> {
    ask(tx, |r| Request::Change(c, r)).await??;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response())
}

fn find_vip<'a>(c: &'a mut Config, v: &VipRef) -> Result<&'a mut VipConfig, ApiError> {
    c.vips
        .iter_mut()
        .find(|x| v.matches(x))
        .ok_or_else(|| ApiError::not_found(format!("VIP {v} does not exist")))
}

fn find_backend<'a>(
    vip: &'a mut VipConfig,
    r: &VipRef,
    a: IpAddr,
) -> Result<&'a mut BackendConfig, ApiError> {
    vip.backends
        .iter_mut()
        .find(|b| b.address == a)
        .ok_or_else(|| ApiError::not_found(format!("backend {a} is not in VIP {r}")))
}

async fn vip_add(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let v: VipConfig = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            if c.vips.iter().any(|x| vip_addr(x) == vip_addr(&v)) {
                return Err(ApiError::conflict(format!(
                    "VIP {} already exists",
                    vip_addr(&v)
                )));
            }
            c.vips.push(v);
            Ok(())
        }),
    )
    .await
}

async fn vip_del(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let r: VipRef = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            find_vip(c, &r)?;
            c.vips.retain(|x| !r.matches(x));
            Ok(())
        }),
    )
    .await
}

async fn backend_add(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let a: BackendAdd = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            let vip = find_vip(c, &a.vip)?;
            if vip.backends.iter().any(|b| b.address == a.backend.address) {
                return Err(ApiError::conflict(format!(
                    "backend {} is already in VIP {}",
                    a.backend.address, a.vip
                )));
            }
            vip.backends.push(a.backend);
            Ok(())
        }),
    )
    .await
}

async fn backend_del(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let r: BackendRef = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            let vip = find_vip(c, &r.vip)?;
            find_backend(vip, &r.vip, r.address)?;
            vip.backends.retain(|b| b.address != r.address);
            Ok(())
        }),
    )
    .await
}

async fn backend_weight(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let w: BackendWeight = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            let vip = find_vip(c, &w.vip)?;
            find_backend(vip, &w.vip, w.address)?.weight = w.weight;
            Ok(())
        }),
    )
    .await
}

async fn backend_drain(State(tx): State<Tx>, body: Bytes) -> Result<Response, ApiError> {
    let d: BackendDrain = parse(&body)?;
    change(
        &tx,
        Box::new(move |c: &mut Config| {
            let vip = find_vip(c, &d.vip)?;
            find_backend(vip, &d.vip, d.address)?.drain = d.drain;
            Ok(())
        }),
    )
    .await
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

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint; see docs/api.md")
}

/// The control API's routes.
pub fn router(tx: Tx) -> Router {
    Router::new()
        .route("/v1/config", get(config))
        .route("/v1/vips", get(vips).post(vip_add))
        .route("/v1/vips/delete", post(vip_del))
        .route("/v1/backends", post(backend_add))
        .route("/v1/backends/delete", post(backend_del))
        .route("/v1/backends/weight", post(backend_weight))
        .route("/v1/backends/drain", post(backend_drain))
        .route("/v1/stats", get(stats))
        .route("/v1/flow", get(flow))
        .route("/v1/events", get(events))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(tx)
}

/// `/metrics` alone, for the localhost metrics listener.
pub fn metrics_router(tx: Tx) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(tx)
}
