//! The lab topology in test form: netlab's lab (a switch namespace with a
//! bridge, a client, the balancer's namespace and N backends, each on the
//! bridge; VIPs on the backends' loopback), `hola-decap` on the backends,
//! and the balancer's bridge-side peer given an XDP program. And small HTTP
//! servers on the backends that answer with their own name and count what
//! they served.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{Xdp, xdp::XdpMode},
};
use lb_userspace::programs;
use netlab::lab::{BALANCER, Family, LabSpec, SWITCH, port};
pub use netlab::lab::{
    CLIENT_V4 as CLIENT, DSR_VIP_V4 as DSR_VIP, LB_V4 as LB, TUNNEL_VIP_V4 as TUN_VIP, backend,
};

use crate::netns::{Topology, in_ns, must, spawn_in_ns};

pub struct Lab {
    pub t: Topology,
    pub backends: usize,
    _programs: Vec<Ebpf>,
}

/// Loads `prog` from `object` and attaches it to `iface` in namespace `ns`
/// (driver mode); the returned object keeps it attached.
pub fn attach(ns: &str, object: &'static [u8], prog: &'static str, iface: &'static str) -> Ebpf {
    in_ns(ns, move || {
        let mut ebpf = Ebpf::load(object).expect("load object");
        let p: &mut Xdp = ebpf
            .program_mut(prog)
            .expect("program")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
        p.attach(iface, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attaching {prog} to {iface} in driver mode: {e}"));
        ebpf
    })
}

impl Lab {
    /// The IPv4 lab with `backends` backends, the client named `cl`, and
    /// the dsr and tunnel VIPs on the backends' lo.
    pub fn new(prefix: &str, backends: usize) -> Self {
        Self::build(&LabSpec {
            prefix,
            client: "cl",
            backends,
            families: &[Family::V4],
            vips: &[DSR_VIP, TUN_VIP],
        })
    }

    /// netlab's lab topology, with `hola-decap` on every backend's eth0
    /// and an XDP program on the balancer's bridge port.
    pub fn build(spec: &LabSpec<'_>) -> Self {
        let t: Topology = must(netlab::lab::build(spec)).into();
        let mut progs = Vec::new();
        for i in 1..=spec.backends {
            let (b, _) = backend(i);
            progs.push(attach(&t.ns(&b), programs::DECAP, "hola_decap", "eth0"));
        }
        // A veth takes the frames its peer sends with XDP_TX only while it
        // has an XDP program itself.
        let peer: &'static str = port(BALANCER).leak();
        progs.push(attach(&t.ns(SWITCH), programs::BENCH, "bench_pass", peer));
        Lab {
            t,
            backends: spec.backends,
            _programs: progs,
        }
    }
}

/// What each backend served: (backend name, local address) → connections.
pub type Served = Arc<Mutex<BTreeMap<(String, IpAddr), u64>>>;

/// HTTP servers on the backends of `lab` answering "HTTP/1.1 200" with the
/// backend's name, until stopped or dropped. Each backend's server can be
/// stopped and started on its own (a backend whose server process died).
pub struct Servers {
    pub served: Served,
    /// Every client address a backend saw: (backend name, peer address).
    pub peers: Arc<Mutex<std::collections::BTreeSet<(String, IpAddr)>>>,
    lab_ns: Vec<String>,
    running: BTreeMap<usize, (Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Servers {
    pub fn start(lab: &Lab) -> Self {
        Self::start_on(
            (1..=lab.backends)
                .map(|i| lab.t.ns(&backend(i).0))
                .collect(),
        )
    }

    /// Servers in the given namespaces, backend `i` (b1, b2, ...) in the
    /// `i`th.
    pub fn start_on(namespaces: Vec<String>) -> Self {
        let n = namespaces.len();
        let mut s = Servers {
            served: Arc::default(),
            peers: Arc::default(),
            lab_ns: namespaces,
            running: BTreeMap::new(),
        };
        for i in 1..=n {
            s.start_one(i);
        }
        s
    }

    /// Starts backend `i`'s server (1-based); waits until it listens.
    pub fn start_one(&mut self, i: usize) {
        let (name, _) = backend(i);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (self.served.clone(), stop.clone());
        let peers = self.peers.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let h = spawn_in_ns(&self.lab_ns[i - 1], move || {
            let l = TcpListener::bind("0.0.0.0:80").expect("bind tcp/80");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).expect("blocking");
                        c.set_read_timeout(Some(Duration::from_secs(30)))
                            .expect("timeout");
                        let local = c.local_addr().expect("local").ip();
                        if let Ok(peer) = c.peer_addr() {
                            peers
                                .lock()
                                .expect("lock")
                                .insert((name.clone(), peer.ip()));
                        }
                        *s.lock()
                            .expect("lock")
                            .entry((name.clone(), local))
                            .or_default() += 1;
                        let name = name.clone();
                        // Each connection on its own thread: long-lived
                        // connections must not block the accept loop.
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            loop {
                                match c.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {
                                        let body = format!("{name}\n");
                                        let resp = format!(
                                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                            body.len()
                                        );
                                        if c.write_all(resp.as_bytes()).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server listening");
        self.running.insert(i, (stop, h));
    }

    /// Stops backend `i`'s server: its port is closed (connections are
    /// refused) from the moment this returns.
    pub fn stop_one(&mut self, i: usize) {
        if let Some((stop, h)) = self.running.remove(&i) {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }

    pub fn counts(&self) -> BTreeMap<(String, IpAddr), u64> {
        self.served.lock().expect("lock").clone()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let all: Vec<usize> = self.running.keys().copied().collect();
        for i in all {
            self.stop_one(i);
        }
    }
}

/// One HTTP request on a connection: returns the body (the backend's name).
pub fn http_get(c: &mut std::net::TcpStream) -> std::io::Result<String> {
    c.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a full response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                return Ok(text[i + 4..i + 4 + len].trim().to_string());
            }
        }
    }
}

/// The port the lab's load agents answer on.
pub const AGENT_PORT: u16 = 9999;

/// Load agents on the backends of `lab` (HAProxy agent-check style): each
/// answers every connection on [`AGENT_PORT`] with its current report and a
/// newline, then closes. `set` changes what a backend reports.
pub struct Agents {
    replies: Vec<Arc<Mutex<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Agents {
    /// Starts an agent on every backend, each reporting `initial`.
    pub fn start(lab: &Lab, initial: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut replies = Vec::new();
        let mut threads = Vec::new();
        for i in 1..=lab.backends {
            let reply = Arc::new(Mutex::new(initial.to_string()));
            let (r, st) = (reply.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in_ns(&lab.t.ns(&backend(i).0), move || {
                let l = TcpListener::bind(("0.0.0.0", AGENT_PORT)).expect("bind the agent port");
                l.set_nonblocking(true).expect("nonblocking");
                let _ = ready_tx.send(());
                while !st.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            let line = format!("{}\n", r.lock().expect("lock"));
                            let _ = c.write_all(line.as_bytes());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(e) => panic!("agent accept: {e}"),
                    }
                }
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("agent listening");
            replies.push(reply);
        }
        Agents {
            replies,
            stop,
            threads,
        }
    }

    /// What backend `i` (1-based) reports from now on.
    pub fn set(&self, i: usize, report: &str) {
        *self.replies[i - 1].lock().expect("lock") = report.to_string();
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
