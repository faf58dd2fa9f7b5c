//! The owner of the data plane: one thread holds the `Dataplane` (every map
//! handle) and the desired configuration; the API and everything else send
//! it requests. A change is validated completely, applied to the kernel,
//! persisted atomically and only then acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};
use tokio::sync::oneshot;

use crate::{
    config::{Config, HashKind, Protocol, VipConfig, VipMode},
    dataplane::{
        BackendSpec, Dataplane, Mode, Nexthop, Proto, Stats, VipAddr, VipSpec, addr_bytes,
    },
    neigh,
    stats::{BackendReport, PacketsBytes, Rates, STATS_VERSION, StatsReport, VipReport},
};

/// An error for the API caller: the HTTP status and the message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: m.into(),
        }
    }
}

/// A change to the desired configuration, run by the owner on its copy.
pub type Change = Box<dyn FnOnce(&mut Config) -> Result<(), ApiError> + Send>;

/// Which backend a flow goes to, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowAnswer {
    pub vip: String,
    pub backend: Option<String>,
    /// "flow-table entry" or "Maglev slot N".
    pub reason: String,
}

pub enum Request {
    Change(Change, oneshot::Sender<Result<(), ApiError>>),
    Config(oneshot::Sender<Config>),
    Stats(oneshot::Sender<Result<StatsReport, ApiError>>),
    Flow {
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        proto: Protocol,
        reply: oneshot::Sender<Result<FlowAnswer, ApiError>>,
    },
}

pub fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

pub fn vip_addr(v: &VipConfig) -> VipAddr {
    VipAddr {
        addr: v.address,
        port: v.port,
        proto: proto_of(v.protocol),
    }
}

/// The weight a backend has in its table: 0 while draining, 0 for a backup
/// while a primary can take flows.
pub fn effective_weight(vip: &VipConfig, i: usize) -> u32 {
    let b = &vip.backends[i];
    if b.drain {
        return 0;
    }
    if b.backup
        && vip
            .backends
            .iter()
            .any(|o| !o.backup && !o.drain && o.weight > 0)
    {
        return 0;
    }
    b.weight
}

pub struct Owner {
    pub dp: Dataplane,
    pub config: Config,
    pub state_file: PathBuf,
    pub ingress_ifindex: u32,
    nexthops: HashMap<IpAddr, Nexthop>,
    prev: Option<(Instant, Stats)>,
    last: Option<(Instant, Stats)>,
}

impl Owner {
    pub fn new(dp: Dataplane, config: Config, state_file: PathBuf, ingress_ifindex: u32) -> Self {
        Owner {
            dp,
            config,
            state_file,
            ingress_ifindex,
            nexthops: HashMap::new(),
            prev: None,
            last: None,
        }
    }

    /// Serves requests until every sender is gone. Samples the counters once
    /// a second (for rates) and retries unresolved next hops.
    pub fn serve(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(req) => self.handle(req),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let due = self
                .last
                .as_ref()
                .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
            if due {
                self.sample();
                if self
                    .config
                    .vips
                    .iter()
                    .flat_map(|v| &v.backends)
                    .any(|b| !self.nexthops.contains_key(&b.address))
                {
                    let config = self.config.clone();
                    if let Err(e) = self.reconcile(&config, Duration::ZERO) {
                        tracing::warn!(error = %e.message, "re-applying the configuration for unresolved next hops");
                    }
                }
            }
        }
    }

    fn sample(&mut self) {
        if let Ok(s) = self.dp.stats() {
            self.prev = self.last.take();
            self.last = Some((Instant::now(), s));
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Change(change, reply) => {
                let _ = reply.send(self.change(change));
            }
            Request::Config(reply) => {
                let _ = reply.send(self.config.clone());
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.report());
            }
            Request::Flow {
                src,
                dst,
                proto,
                reply,
            } => {
                let _ = reply.send(self.flow(src, dst, proto));
            }
        }
    }

    fn change(&mut self, change: Change) -> Result<(), ApiError> {
        let mut next = self.config.clone();
        change(&mut next)?;
        next.validate("request")
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if next == self.config {
            return Ok(());
        }
        let old = self.config.clone();
        if let Err(e) = self.reconcile(&next, Duration::from_secs(2)) {
            // Put the kernel back the way the persisted state says.
            if let Err(e2) = self.reconcile(&old, Duration::ZERO) {
                tracing::error!(error = %e2.message, "restoring the previous configuration failed");
            }
            return Err(e);
        }
        persist(&self.state_file, &next).map_err(|e| {
            ApiError::internal(format!(
                "the change is applied but saving {} failed: {e}",
                self.state_file.display()
            ))
        })?;
        self.config = next;
        tracing::info!(
            "configuration changed and saved to {}",
            self.state_file.display()
        );
        Ok(())
    }

    /// Makes the kernel match `config`. `wait` bounds how long a new
    /// backend's next hop is waited for (unresolved ones are installed
    /// without and retried every second).
    pub fn reconcile(&mut self, config: &Config, wait: Duration) -> Result<(), ApiError> {
        let want: BTreeMap<VipAddr, &VipConfig> =
            config.vips.iter().map(|v| (vip_addr(v), v)).collect();
        let have: Vec<(VipSpec, Vec<BackendSpec>)> = self.dp.vips().map(|(s, b)| (*s, b)).collect();
        for (spec, _) in &have {
            let keep = want
                .get(&spec.vip)
                .is_some_and(|v| self.spec_of(config, v) == *spec);
            if !keep {
                self.dp
                    .remove_vip(&spec.vip)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
        for (addr, v) in &want {
            let spec = self.spec_of(config, v);
            if !self.dp.vips().any(|(s, _)| s.vip == *addr) {
                self.dp
                    .add_vip(spec)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            let mut specs = Vec::with_capacity(v.backends.len());
            for (i, b) in v.backends.iter().enumerate() {
                let nexthop = self.nexthop(b.address, wait);
                specs.push(BackendSpec {
                    addr: b.address,
                    weight: effective_weight(v, i),
                    nexthop,
                });
            }
            self.dp
                .set_backends(addr, &specs)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        Ok(())
    }

    fn spec_of(&self, config: &Config, v: &VipConfig) -> VipSpec {
        VipSpec {
            vip: vip_addr(v),
            mode: match v.mode {
                VipMode::Dsr => Mode::Dsr,
                VipMode::Tunnel => Mode::Tunnel,
            },
            src_hash: v.hash == HashKind::Source,
            table_size: config.table_size(v),
        }
    }

    fn nexthop(&mut self, addr: IpAddr, wait: Duration) -> Option<Nexthop> {
        if let Some(n) = self.nexthops.get(&addr) {
            return Some(*n);
        }
        match neigh::resolve(addr, self.ingress_ifindex, wait) {
            Ok(n) => {
                tracing::info!(backend = %addr, "next hop resolved");
                self.nexthops.insert(addr, n);
                Some(n)
            }
            Err(e) => {
                if !wait.is_zero() {
                    tracing::warn!(backend = %addr, error = %e, "next hop unresolved; its packets are dropped (drop_no_nexthop) until it answers");
                }
                None
            }
        }
    }

    fn report(&mut self) -> Result<StatsReport, ApiError> {
        let now = self
            .dp
            .stats()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (interval, prev) = match (&self.prev, &self.last) {
            (Some((t0, s0)), Some((t1, s1))) => ((*t1 - *t0).as_secs_f64(), Some((s0, s1))),
            _ => (0.0, None),
        };
        let rate = |a: u64, b: u64| {
            if interval > 0.0 {
                b.saturating_sub(a) as f64 / interval
            } else {
                0.0
            }
        };
        let mut report = StatsReport {
            version: STATS_VERSION,
            timestamp_ms,
            interval_seconds: interval,
            ..Default::default()
        };
        for (name, r) in &now.reasons {
            report.reasons.insert(
                (*name).to_string(),
                PacketsBytes {
                    packets: r.packets,
                    bytes: r.bytes,
                },
            );
        }
        for v in &self.config.vips {
            let key = vip_addr(v);
            let Some(c) = now.vips.get(&key) else {
                continue;
            };
            let (p0, p1) = match prev {
                Some((s0, s1)) => (s0.vips.get(&key), s1.vips.get(&key)),
                None => (None, None),
            };
            let vr = |f: fn(&crate::dataplane::VipCounters) -> u64| match (p0, p1) {
                (Some(a), Some(b)) => rate(f(a), f(b)),
                _ => 0.0,
            };
            let mut vip = VipReport {
                vip: key.to_string(),
                address: v.address.to_string(),
                port: v.port,
                protocol: proto_of(v.protocol).to_string(),
                mode: match v.mode {
                    VipMode::Dsr => "dsr",
                    VipMode::Tunnel => "tunnel",
                }
                .into(),
                hash: match v.hash {
                    HashKind::FiveTuple => "5-tuple",
                    HashKind::Source => "source",
                }
                .into(),
                table_size: self.config.table_size(v),
                packets: c.stats.packets,
                bytes: c.stats.bytes,
                new_flows: c.stats.new_flows,
                no_backend: c.stats.no_backend,
                rates: Rates {
                    packets_per_second: vr(|c| c.stats.packets),
                    bytes_per_second: vr(|c| c.stats.bytes),
                    new_flows_per_second: vr(|c| c.stats.new_flows),
                },
                backends: Vec::new(),
            };
            for (i, b) in v.backends.iter().enumerate() {
                let bc = c.backends.get(&b.address).copied().unwrap_or_default();
                let (b0, b1) = (
                    p0.and_then(|c| c.backends.get(&b.address)),
                    p1.and_then(|c| c.backends.get(&b.address)),
                );
                let br = |f: fn(&lb_common::BackendStats) -> u64| match (b0, b1) {
                    (Some(a), Some(b)) => rate(f(a), f(b)),
                    _ => 0.0,
                };
                let eff = effective_weight(v, i);
                vip.backends.push(BackendReport {
                    address: b.address.to_string(),
                    weight: b.weight,
                    effective_weight: eff,
                    state: if b.backup {
                        "backup"
                    } else if b.weight == 0 || b.drain {
                        "draining"
                    } else {
                        "active"
                    }
                    .into(),
                    nexthop_resolved: self.nexthops.contains_key(&b.address),
                    packets: bc.packets,
                    bytes: bc.bytes,
                    new_flows: bc.new_flows,
                    rates: Rates {
                        packets_per_second: br(|s| s.packets),
                        bytes_per_second: br(|s| s.bytes),
                        new_flows_per_second: br(|s| s.new_flows),
                    },
                });
            }
            report.vips.push(vip);
        }
        Ok(report)
    }

    fn flow(
        &self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        proto: Protocol,
    ) -> Result<FlowAnswer, ApiError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(ApiError::bad_request(format!(
                "{src} and {dst} are of different address families"
            )));
        }
        let p = proto_of(proto);
        let vip = self
            .config
            .vips
            .iter()
            .map(vip_addr)
            .filter(|v| v.addr == dst.ip() && v.proto == p)
            .max_by_key(|v| v.port == dst.port())
            .filter(|v| v.port == dst.port() || v.port == 0)
            .ok_or_else(|| ApiError::not_found(format!("no VIP for {dst}/{p}")))?;
        let (s, family) = addr_bytes(src.ip());
        let (d, _) = addr_bytes(dst.ip());
        let key = FlowKey {
            src: s,
            dst: d,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            proto: if p == Proto::Tcp {
                PROTO_TCP
            } else {
                PROTO_UDP
            },
            family: if family == FAMILY_V4 {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
            _pad: [0; 2],
        };
        if let Some(entry) = self.dp.flow_entry(&key)
            && let Some(b) = self.dp.backend_by_id(&vip, entry.backend_id)
        {
            return Ok(FlowAnswer {
                vip: vip.to_string(),
                backend: Some(b.to_string()),
                reason: "flow-table entry".into(),
            });
        }
        let (slot, backend) = self
            .dp
            .maglev_slot(&vip, &key)
            .ok_or_else(|| ApiError::not_found(format!("VIP {vip} is not programmed")))?;
        Ok(FlowAnswer {
            vip: vip.to_string(),
            backend: backend.map(|b| b.to_string()),
            reason: match backend {
                Some(_) => format!("Maglev slot {slot} (new flow)"),
                None => {
                    format!("Maglev slot {slot} is empty: the VIP has no backend with weight > 0")
                }
            },
        })
    }
}

/// Writes `config` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn persist(path: &Path, config: &Config) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(config.to_toml().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
