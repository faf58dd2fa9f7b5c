//! The QUIC echo server: every bidirectional stream is answered with
//! `"{name} "` followed by what the client sent on it, so that a client
//! sees which backend holds its connection. The connection IDs it issues
//! carry its server ID in the plaintext QUIC-LB layout hola routes by
//! (`lb_common::quic`): a short-header packet reaches this server through
//! a `quic = true` VIP whatever the client's address and port.

use std::{
    future::Future,
    io,
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use lb_common::quic::{QUIC_CID_LEN, QUIC_NONCE_LEN, encode_cid};
use quinn::{
    ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, ServerConfig, TokioRuntime,
    crypto::rustls::QuicServerConfig,
};
use socket2::{Domain, Protocol, Socket, Type};

/// The ALPN protocol the echo server speaks (and the test client asks for).
pub const ALPN: &[u8] = b"hola-echo";

/// Largest request read from one stream.
const MAX_REQUEST: usize = 64 * 1024;

/// Issues connection IDs that carry `server_id` and a random nonce.
struct ServerIdCids {
    server_id: u16,
}

impl ConnectionIdGenerator for ServerIdCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut nonce = [0u8; QUIC_NONCE_LEN];
        fill_random(&mut nonce);
        ConnectionId::new(&encode_cid(self.server_id, nonce))
    }

    fn cid_len(&self) -> usize {
        QUIC_CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Fills `buf` from the kernel's random source. Two IDs of one server
/// differ only by their nonce, so it must not repeat; getrandom(2) on a
/// booted system does not fail for a few bytes, and a failure is loud.
fn fill_random(buf: &mut [u8]) {
    // SAFETY: the pointer and length describe `buf`, which getrandom fills.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(
        n,
        buf.len() as isize,
        "getrandom: {}",
        io::Error::last_os_error()
    );
}

/// A QUIC endpoint on `addr` serving with a fresh self-signed certificate,
/// its connection IDs carrying `server_id`. An IPv6 wildcard is IPv6 only
/// (as for TCP and UDP). Must be called inside a tokio runtime.
pub fn bind_quic(addr: SocketAddr, server_id: u16) -> io::Result<Endpoint> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    let sock: UdpSocket = sock.into();
    let mut endpoint = EndpointConfig::default();
    endpoint.cid_generator(move || Box::new(ServerIdCids { server_id }));
    Endpoint::new(
        endpoint,
        Some(server_config()?),
        sock,
        Arc::new(TokioRuntime),
    )
}

fn server_config() -> io::Result<ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["hola-backend".to_string()])
        .map_err(|e| io::Error::other(format!("making a self-signed certificate: {e}")))?;
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![der], key.into())
        })
        .map_err(|e| io::Error::other(format!("TLS configuration: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::other(format!("QUIC TLS configuration: {e}")))?;
    Ok(ServerConfig::with_crypto(Arc::new(crypto)))
}

/// Serves every connection of `endpoint` until `shutdown` completes, then
/// closes them.
pub async fn serve_quic(
    endpoint: Endpoint,
    name: &str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    let name: Arc<str> = Arc::from(name);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, &name).await
                && super::verbose()
            {
                eprintln!("{name}: quic: {e}");
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
    Ok(())
}

/// Answers each stream of one connection until the client closes it.
async fn connection(incoming: quinn::Incoming, name: &str) -> Result<(), quinn::ConnectionError> {
    let conn = incoming.await?;
    if super::verbose() {
        eprintln!("{name}: quic connection from {}", conn.remote_address());
    }
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Ok(req) = recv.read_to_end(MAX_REQUEST).await else {
            continue;
        };
        let mut answer = format!("{name} ").into_bytes();
        answer.extend_from_slice(&req);
        // A client that went away mid-stream is its own business.
        if send.write_all(&answer).await.is_ok() {
            let _ = send.finish();
        }
    }
}
