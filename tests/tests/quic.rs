//! QUIC through hola with real sockets: the `hola` daemon in the lab's
//! balancer namespace, `hola-backend`'s QUIC echo server (whose connection
//! IDs carry its server ID) on three backends, a quinn client that moves to
//! a new local port mid-connection (`Endpoint::rebind`, as after a NAT
//! rebinding). Through a `quic = true` VIP the connection keeps its backend
//! across the move; through the same VIP without `quic` the move breaks it.
//! dsr mode: the backends answer the client directly, so quinn's path
//! validation of the new port works.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::spawn_in_ns,
    topo::{CLIENT, DSR_VIP, Lab, backend},
};
use quinn::{ClientConfig, Endpoint, TransportConfig, crypto::rustls::QuicClientConfig};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

const QUIC_PORT: u16 = 443;
const PLAIN_PORT: u16 = 444;
const BACKENDS: usize = 3;
/// How long the client waits for one answer: well past quinn's idle
/// timeout below, so a broken connection shows as an error, not a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(8);
/// The client's idle timeout: a connection whose packets reach the wrong
/// backend dies within it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A UDP VIP on the lab's dsr address for each port, `quic` or not, over
/// the three backends with server IDs 1, 2 and 3.
fn config() -> String {
    let mut c = String::from(GLOBAL);
    for (port, quic) in [(QUIC_PORT, true), (PLAIN_PORT, false)] {
        c += &format!(
            "\n[[vip]]\naddress = \"{DSR_VIP}\"\nport = {port}\nprotocol = \"udp\"\n\
             mode = \"dsr\"\nquic = {quic}\n"
        );
        for i in 1..=BACKENDS {
            c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend(i).1);
            if quic {
                c += &format!("server_id = {i}\n");
            }
        }
    }
    c
}

/// `hola-backend`'s QUIC servers on every backend, on both ports, each
/// with its backend's number as server ID; stopped on drop.
struct QuicServers {
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Completes once `stop` says so (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl QuicServers {
    fn start(lab: &Lab) -> Self {
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for i in 1..=BACKENDS {
            let name = backend(i).0;
            let rx = stop.subscribe();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in_ns(&lab.t.ns(&name), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let bind = |port: u16| {
                        let addr: SocketAddr = ([0, 0, 0, 0], port).into();
                        lab_backend::bind_quic(addr, i as u16)
                            .unwrap_or_else(|e| panic!("{name}: quic on {addr}: {e}"))
                    };
                    let (a, b) = (bind(QUIC_PORT), bind(PLAIN_PORT));
                    ready_tx.send(()).expect("the test waits for it");
                    let (ra, rb) = tokio::join!(
                        lab_backend::serve_quic(a, &name, stopped(rx.clone())),
                        lab_backend::serve_quic(b, &name, stopped(rx)),
                    );
                    ra.and(rb).expect("quic servers");
                });
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a QUIC server did not start within 10 s");
        }
        QuicServers { stop, threads }
    }
}

impl Drop for QuicServers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts any server certificate (the backends' are self-signed, made at
/// start): this client checks where its packets go, not who answers.
/// Signatures are still verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![lab_backend::ALPN.to_vec()];
    let mut c = ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("QUIC TLS configuration"),
    ));
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout")));
    c.transport_config(Arc::new(t));
    c
}

/// One request on a new stream: the backend's name from its answer
/// (`"{name} {request}"`), or what went wrong, within [`EXCHANGE_TIMEOUT`].
async fn exchange(conn: &quinn::Connection, request: &str) -> Result<String, String> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv.read_to_end(4096).await.map_err(|e| e.to_string())?;
        let answer = String::from_utf8(answer).map_err(|e| e.to_string())?;
        match answer.strip_suffix(&format!(" {request}")) {
            Some(name) => Ok(name.to_string()),
            None => Err(format!("answer {answer:?} does not echo {request:?}")),
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))
}

/// What one client session saw through `vip`: the backend of the three
/// exchanges before the move (they must agree), the local port it moved
/// from, and the results of three exchanges after moving to the port
/// `new_port` picks, with how long the first of them took.
struct Session {
    before: String,
    after: Vec<Result<String, String>>,
    first_after: Duration,
}

fn session(
    lab: &Lab,
    vip: SocketAddr,
    new_port: impl FnOnce(u16, &str) -> u16 + Send + 'static,
) -> Session {
    spawn_in_ns(&lab.t.ns("cl"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut ep = Endpoint::client(([0, 0, 0, 0], 0).into()).expect("client endpoint");
            ep.set_default_client_config(client_config());
            let conn = tokio::time::timeout(
                EXCHANGE_TIMEOUT,
                ep.connect(vip, "hola-backend").expect("connect"),
            )
            .await
            .unwrap_or_else(|_| panic!("no QUIC handshake with {vip} within {EXCHANGE_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("QUIC handshake with {vip}: {e}"));
            let mut names = Vec::new();
            for n in 0..3 {
                let r = exchange(&conn, &format!("before {n}")).await;
                names.push(r.unwrap_or_else(|e| panic!("{vip} before the move: {e}")));
            }
            assert!(
                names.iter().all(|n| *n == names[0]),
                "{vip}: one connection answered by {names:?}"
            );
            let from = ep.local_addr().expect("local address").port();
            let to = new_port(from, &names[0]);
            let sock = UdpSocket::bind(("0.0.0.0", to))
                .unwrap_or_else(|e| panic!("binding the client's new port {to}: {e}"));
            ep.rebind(sock).expect("rebind");
            let t0 = Instant::now();
            let mut after = vec![exchange(&conn, "after 0").await];
            let first_after = t0.elapsed();
            for n in 1..3 {
                after.push(exchange(&conn, &format!("after {n}")).await);
            }
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            Session {
                before: names.swap_remove(0),
                after,
                first_after,
            }
        })
    })
    .join()
    .expect("client thread panicked")
}

/// A client port above `from` that the VIP's Maglev table sends to
/// another backend than `name`'s, by `hola flow` (no flow uses it yet).
fn port_elsewhere(d: &Daemon, vip: SocketAddr, from: u16, name: &str) -> u16 {
    let addr = (1..=BACKENDS)
        .map(backend)
        .find(|(n, _)| n == name)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no backend named {name}"));
    (1..200u16)
        .map(|k| from.wrapping_add(k * 7).max(20000))
        .find(|p| {
            let out = d.ok(&[
                "flow",
                &format!("{CLIENT}:{p}"),
                &vip.to_string(),
                "--proto",
                "udp",
            ]);
            !out.contains(&format!(" goes to {addr}"))
        })
        .expect("a port Maglev sends elsewhere within 200 tries")
}

#[test]
fn a_quic_connection_keeps_its_backend_when_the_client_moves() {
    require_root();
    let lab = Lab::new("hqc", BACKENDS);
    let _servers = QuicServers::start(&lab);
    let d = Arc::new(Daemon::start("quic", &lab.t.ns("lb"), &config()));
    let list = d.ok(&["backend", "list"]);
    for i in 1..=BACKENDS {
        let want = format!("{DSR_VIP}:{QUIC_PORT}/udp {} server_id={i} ", backend(i).1);
        assert!(
            list.contains(&want),
            "hola backend list lacks {want:?}:\n{list}"
        );
    }
    let vips = d.ok(&["vip", "list"]);
    assert!(
        vips.contains(&format!(
            "{DSR_VIP}:{QUIC_PORT}/udp mode=Dsr hash=FiveTuple backends=3 quic"
        )),
        "hola vip list does not say quic:\n{vips}"
    );
    // Through the API: a server ID already taken is refused, naming the
    // VIP, both backends and the fix; nothing changes.
    let quic_vip = format!("{DSR_VIP}:{QUIC_PORT}/udp");
    let o = d.cli(&[
        "backend",
        "add",
        &quic_vip,
        "198.18.0.14",
        "--server-id",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&format!(
                "backends {} (vip[0].backend[1]) and 198.18.0.14 of VIP {quic_vip} both have \
                 server ID 2; give each backend of the VIP its own server_id",
                backend(2).1
            )),
        "a duplicate server ID was not refused as it should be: {err}"
    );
    assert_eq!(
        d.ok(&["backend", "list"]),
        list,
        "a refused change changed the backends"
    );
    let started = Instant::now();

    // quic = true: the connection moves to a port Maglev sends elsewhere
    // and keeps its backend.
    let vip: SocketAddr = format!("{DSR_VIP}:{QUIC_PORT}").parse().expect("vip");
    let dq = d.clone();
    let s = session(&lab, vip, move |from, name| {
        port_elsewhere(&dq, vip, from, name)
    });
    for (n, r) in s.after.iter().enumerate() {
        assert_eq!(
            r.as_deref(),
            Ok(s.before.as_str()),
            "quic VIP: exchange {n} after the move"
        );
    }
    let reasons = d.stats().reasons;
    let routed = reasons.get("fwd_quic_server_id").map_or(0, |r| r.packets);
    assert!(
        routed > 0,
        "no packet was routed by its server ID: {reasons:?}"
    );

    // The same VIP without quic: the move breaks the connection, within
    // the bounded wait.
    let vip: SocketAddr = format!("{DSR_VIP}:{PLAIN_PORT}").parse().expect("vip");
    let dp = d.clone();
    let s = session(&lab, vip, move |from, name| {
        port_elsewhere(&dp, vip, from, name)
    });
    assert!(
        s.after.iter().all(Result::is_err),
        "plain VIP: the connection on {} survived the move: {:?}",
        s.before,
        s.after
    );
    assert!(
        s.first_after <= EXCHANGE_TIMEOUT + Duration::from_secs(1),
        "plain VIP: the first exchange after the move took {:?}",
        s.first_after
    );
    eprintln!("quic lab test: both sessions in {:?}", started.elapsed());
}
