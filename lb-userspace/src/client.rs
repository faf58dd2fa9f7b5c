//! The CLI's side of the control API: HTTP/1.1 over the Unix socket.

use std::path::Path;

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The status and body of one request.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, String)> {
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "hola")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The body of a successful call; an error carries the daemon's message.
pub async fn ok(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<String> {
    let (status, text) = call(socket, method, path, body).await?;
    if (200..300).contains(&status) {
        return Ok(text);
    }
    let msg = serde_json::from_str::<crate::api::ErrorBody>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    anyhow::bail!("{msg}")
}

/// GETs `path`: the body of the answer, or the daemon's error.
pub async fn get(socket: &Path, path: &str) -> anyhow::Result<String> {
    ok(socket, Method::GET, path, None).await
}

/// GETs `path` and reads the answer as JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> anyhow::Result<T> {
    Ok(serde_json::from_str(&get(socket, path).await?)?)
}

/// POSTs `body` as JSON to `path`; the daemon's error if it refuses.
pub async fn post<T: serde::Serialize>(socket: &Path, path: &str, body: &T) -> anyhow::Result<()> {
    ok(
        socket,
        Method::POST,
        path,
        Some(serde_json::to_string(body)?),
    )
    .await
    .map(drop)
}

/// A connection to the daemon's control socket; the error says what to do.
async fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "permission denied on the hola control socket {}: it accepts only root; run the \
                 command as root, e.g. sudo hola ...",
                socket.display()
            )
        } else {
            anyhow::anyhow!(
                "cannot reach the hola daemon at {}: {e} (is `hola run` running? use --socket to \
                 name another socket)",
                socket.display()
            )
        }
    })
}

/// POSTs `body` as JSON to `path` and hands back the answer as it comes
/// (a streaming answer: `hola trace`). Dropping the body closes the
/// connection, which tells the daemon the client has gone.
pub async fn post_stream<T: serde::Serialize>(
    socket: &Path,
    path: &str,
    body: &T,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "hola")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_string(body)?)))?;
    Ok(sender.send_request(req).await?)
}
