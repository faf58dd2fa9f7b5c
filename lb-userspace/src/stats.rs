//! What `hola stats --json` and `/metrics` report: the schema is documented
//! in docs/stats.md and is stable (additions only; `version` changes on any
//! other change). These are the report types every side shares (the owner
//! fills them, the API serves them, the CLI prints them), and their
//! Prometheus rendering.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};

/// One health state change, as `hola events` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub timestamp_ms: u64,
    pub vip: String,
    pub backend: String,
    /// "up" or "down" (health check), "agent up", "agent drain" or "agent
    /// down", "outlier down" or "outlier up".
    pub state: String,
    /// The probe result that made the change.
    pub detail: String,
}

/// Which backend a flow goes to, and why (`hola flow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAnswer {
    pub vip: String,
    pub backend: Option<String>,
    /// "flow-table entry" or "Maglev slot N".
    pub reason: String,
}

/// Schema version of [`StatsReport`].
pub const STATS_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsReport {
    pub version: u32,
    /// When the counters were read, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Length of the interval the rates are computed over, in seconds (0 until
    /// two samples exist).
    pub interval_seconds: f64,
    /// Every verdict reason with its packets and bytes (docs/maps.md).
    pub reasons: BTreeMap<String, PacketsBytes>,
    /// The NAT translation table (NAT mode).
    pub nat: NatReport,
    /// Whether new flows are coming faster than the flow table records
    /// them (`global.new_flow_rate`).
    #[serde(default)]
    pub flood: FloodReport,
    pub vips: Vec<VipReport>,
    /// Balancer peers and replication (docs/cluster.md); absent when no
    /// `[cluster]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterReport>,
    /// BGP announcement (docs/cluster.md); absent when no `[bgp]` is
    /// configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpReport>,
}

/// The node's side of BGP: whether it is drained (`hola node drain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpReport {
    /// Drained: every VIP withdrawn, whatever its backends.
    pub drained: bool,
    /// The routing table and route protocol number hola's routes use.
    pub table: u32,
    pub route_protocol: u8,
}

/// Whether a VIP's address is announced over BGP, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceReport {
    /// "announced", "withdrawn" or "pending" (a restart's first health
    /// checks have not answered yet, or a backend is coming back up: the
    /// route is left as it is).
    pub state: String,
    /// Why, as a code: "serving" (this VIP has a backend that takes new
    /// flows), "other_vip_serving" (this VIP has none, another VIP at the
    /// same address has), "no_backend", "checks_pending" (or a backend
    /// rising), "settling" (serving for less than `announce_delay`),
    /// "drained".
    pub reason: String,
}

/// Flood mode: over the last sample some CPU had more new flows than
/// `global.new_flow_rate` per second, and forwarded the rest by the
/// Maglev table without recording them (reason `fwd_flood`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodReport {
    /// `fwd_flood` packets were counted over the last sample.
    pub active: bool,
    /// Their rate: new flows per second forwarded unrecorded.
    pub unrecorded_per_second: f64,
    /// `global.new_flow_rate`: new flows each CPU records per second at
    /// most (0: no limit).
    pub new_flow_rate: u32,
}

impl FloodReport {
    /// The one line `hola stats` and the daemon's log say it in.
    pub fn line(&self) -> String {
        if self.active {
            format!(
                "flood mode: ON, {:.0} new flows/s forwarded by the Maglev table unrecorded (over new_flow_rate = {} per CPU per second)",
                self.unrecorded_per_second, self.new_flow_rate
            )
        } else {
            "flood mode: off".to_owned()
        }
    }
}

/// Fill level of the NAT table, from the last sweep (every few seconds
/// while a NAT VIP exists).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatReport {
    /// Live (not expired) entries at the last sweep.
    pub entries: u64,
    /// `global.nat_capacity`.
    pub capacity: u32,
    /// Expired entries deleted by sweeps since the daemon started.
    pub expired_removed: u64,
    /// When the last sweep ran, ms since the Unix epoch (0: none yet).
    pub swept_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketsBytes {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub new_flows_per_second: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipReport {
    /// "198.18.1.1:80/tcp", "[2001:db8::1]:80/tcp".
    pub vip: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub hash: String,
    pub table_size: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets dropped because no backend could take a new flow.
    pub no_backend: u64,
    pub rates: Rates,
    pub backends: Vec<BackendReport>,
    /// BGP announcement of the VIP's address; absent without `[bgp]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendReport {
    pub address: String,
    /// `quic` VIPs: the server ID the backend's connection IDs carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u16>,
    /// The configured weight.
    pub weight: u32,
    /// The weight in the Maglev table now (0 while draining, or for a backup
    /// while a primary can serve).
    pub effective_weight: u32,
    /// "active", "draining" or "backup".
    pub state: String,
    /// "up", "down" (failed its health checks) or "unchecked" (no check
    /// configured).
    pub health: String,
    /// The last probe: success, what was seen, how long it took.
    pub last_check: Option<crate::health::Probe>,
    /// When the health state last changed, ms since the Unix epoch.
    pub last_change_ms: Option<u64>,
    /// The agent check's state (percentage applied, mode, last answer);
    /// `None` without an agent check.
    pub agent: Option<crate::health::agent::AgentStatus>,
    /// NAT VIPs: the backend's TCP handshakes as hola saw them (passive
    /// health); `None` for other modes.
    pub handshake: Option<HandshakeReport>,
    /// Whether the next-hop MAC is known (until it is, packets to this
    /// backend are dropped and counted as `drop_no_nexthop`).
    pub nexthop_resolved: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub rates: Rates,
}

/// SYN → SYN-ACK latency and failures of one backend's handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeReport {
    /// SYNs answered by a SYN-ACK.
    pub syn_acks: u64,
    /// SYNs answered by a RST.
    pub rsts: u64,
    /// SYNs not answered within the outlier rule's `syn_timeout`.
    pub timeouts: u64,
    /// Median SYN → SYN-ACK latency: the upper bound of the histogram
    /// bucket (powers of two microseconds) that holds it; 0 without data.
    pub p50_us: u64,
    /// 99th percentile, the same way.
    pub p99_us: u64,
}

impl HandshakeReport {
    pub fn new(h: &lb_common::HandshakeStats, timeouts: u64) -> Self {
        let total: u64 = h.buckets.iter().sum();
        let pct = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let want = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return 1u64 << (i + 1);
                }
            }
            1u64 << h.buckets.len()
        };
        HandshakeReport {
            syn_acks: h.syn_acks,
            rsts: h.rsts,
            timeouts,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnnounceLabels {
    vip: String,
    reason: String,
}

/// `hola_vip_announced{vip,reason}`: 1 while the VIP's address is
/// announced, 0 while withdrawn, -1 while pending; `hola_node_drained`.
fn bgp_metrics(reg: &mut Registry, report: &StatsReport, b: &BgpReport) {
    let announced = Family::<AnnounceLabels, Gauge>::default();
    for v in &report.vips {
        let Some(a) = &v.announce else { continue };
        let l = AnnounceLabels {
            vip: v.vip.clone(),
            reason: a.reason.clone(),
        };
        let value = match a.state.as_str() {
            "announced" => 1,
            "withdrawn" => 0,
            _ => -1,
        };
        announced.get_or_create(&l).set(value);
    }
    reg.register(
        "vip_announced",
        "BGP: 1 announced, 0 withdrawn, -1 pending (first health checks), with the reason",
        announced,
    );
    let drained = Gauge::<i64>::default();
    drained.set(i64::from(b.drained));
    reg.register(
        "node_drained",
        "BGP: 1 while hola node drain holds",
        drained,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStateLabels {
    vip: String,
    backend: String,
    state: String,
}

/// The report in Prometheus text format. Built from one consistent snapshot
/// per scrape.
pub fn prometheus(report: &StatsReport) -> String {
    let mut reg = Registry::with_prefix("hola");
    let reason_packets = Family::<ReasonLabels, Counter>::default();
    let reason_bytes = Family::<ReasonLabels, Counter>::default();
    for (r, c) in &report.reasons {
        let l = ReasonLabels { reason: r.clone() };
        reason_packets.get_or_create(&l).inc_by(c.packets);
        reason_bytes.get_or_create(&l).inc_by(c.bytes);
    }
    reg.register(
        "reason_packets",
        "Packets by verdict reason",
        reason_packets,
    );
    reg.register("reason_bytes", "Bytes by verdict reason", reason_bytes);
    vip_metrics(&mut reg, report);
    backend_metrics(&mut reg, report);
    handshake_metrics(&mut reg, report);
    nat_metrics(&mut reg, &report.nat);
    let flood = Gauge::<i64>::default();
    flood.set(i64::from(report.flood.active));
    reg.register(
        "flood_mode",
        "1 while new flows come faster than new_flow_rate and go unrecorded (fwd_flood)",
        flood,
    );
    let unrecorded = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    unrecorded.set(report.flood.unrecorded_per_second);
    reg.register(
        "flood_unrecorded_per_second",
        "New flows per second forwarded unrecorded over new_flow_rate",
        unrecorded,
    );
    if let Some(c) = &report.cluster {
        cluster_metrics(&mut reg, c);
    }
    if let Some(b) = &report.bgp {
        bgp_metrics(&mut reg, report, b);
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Every backend of every VIP with its labels.
fn backends(
    report: &StatsReport,
) -> impl Iterator<Item = (BackendLabels, &VipReport, &BackendReport)> {
    report.vips.iter().flat_map(|v| {
        v.backends.iter().map(move |b| {
            let l = BackendLabels {
                vip: v.vip.clone(),
                backend: b.address.clone(),
            };
            (l, v, b)
        })
    })
}

fn vip_metrics(reg: &mut Registry, report: &StatsReport) {
    let vip_packets = Family::<VipLabels, Counter>::default();
    let vip_bytes = Family::<VipLabels, Counter>::default();
    let vip_new = Family::<VipLabels, Counter>::default();
    let vip_nb = Family::<VipLabels, Counter>::default();
    for v in &report.vips {
        let l = VipLabels { vip: v.vip.clone() };
        vip_packets.get_or_create(&l).inc_by(v.packets);
        vip_bytes.get_or_create(&l).inc_by(v.bytes);
        vip_new.get_or_create(&l).inc_by(v.new_flows);
        vip_nb.get_or_create(&l).inc_by(v.no_backend);
    }
    reg.register("vip_packets", "Packets to the VIP", vip_packets);
    reg.register("vip_bytes", "Bytes to the VIP", vip_bytes);
    reg.register("vip_new_flows", "New flows of the VIP", vip_new);
    reg.register(
        "vip_no_backend",
        "Packets dropped: no backend for a new flow",
        vip_nb,
    );
}

fn backend_metrics(reg: &mut Registry, report: &StatsReport) {
    let be_packets = Family::<BackendLabels, Counter>::default();
    let be_bytes = Family::<BackendLabels, Counter>::default();
    let be_new = Family::<BackendLabels, Counter>::default();
    let be_weight = Family::<BackendLabels, Gauge>::default();
    let be_eff = Family::<BackendLabels, Gauge>::default();
    let be_state = Family::<BackendStateLabels, Gauge>::default();
    let be_up = Family::<BackendLabels, Gauge>::default();
    let be_latency = Family::<BackendLabels, Gauge>::default();
    let be_agent = Family::<BackendLabels, Gauge>::default();
    let be_change = Family::<BackendLabels, Gauge>::default();
    for (l, v, b) in backends(report) {
        be_packets.get_or_create(&l).inc_by(b.packets);
        be_bytes.get_or_create(&l).inc_by(b.bytes);
        be_new.get_or_create(&l).inc_by(b.new_flows);
        be_weight.get_or_create(&l).set(i64::from(b.weight));
        be_eff.get_or_create(&l).set(i64::from(b.effective_weight));
        let s = BackendStateLabels {
            vip: v.vip.clone(),
            backend: b.address.clone(),
            state: b.state.clone(),
        };
        be_state.get_or_create(&s).set(1);
        if b.health != "unchecked" {
            be_up.get_or_create(&l).set(i64::from(b.health == "up"));
        }
        if let Some(p) = &b.last_check {
            be_latency.get_or_create(&l).set(p.latency_ms as i64);
        }
        if let Some(ms) = b.last_change_ms {
            be_change.get_or_create(&l).set((ms / 1000) as i64);
        }
        if let Some(a) = &b.agent {
            be_agent.get_or_create(&l).set(i64::from(a.percent));
        }
    }
    reg.register(
        "backend_packets",
        "Packets forwarded to the backend",
        be_packets,
    );
    reg.register("backend_bytes", "Bytes forwarded to the backend", be_bytes);
    reg.register("backend_new_flows", "New flows sent to the backend", be_new);
    reg.register("backend_weight", "Configured weight", be_weight);
    reg.register(
        "backend_effective_weight",
        "Weight in the Maglev table",
        be_eff,
    );
    reg.register(
        "backend_state",
        "1 for the backend's current state",
        be_state,
    );
    reg.register(
        "backend_health_up",
        "1 while the backend passes its health check, 0 while down (checked backends only)",
        be_up,
    );
    reg.register(
        "backend_check_latency_ms",
        "Duration of the last health probe in milliseconds",
        be_latency,
    );
    reg.register(
        "backend_last_change_seconds",
        "Unix time of the last health state change",
        be_change,
    );
    reg.register(
        "backend_agent_percent",
        "Percentage of the configured weight applied from the agent check",
        be_agent,
    );
}

fn handshake_metrics(reg: &mut Registry, report: &StatsReport) {
    let hs_p50 = Family::<BackendLabels, Gauge>::default();
    let hs_p99 = Family::<BackendLabels, Gauge>::default();
    let hs_ok = Family::<BackendLabels, Counter>::default();
    let hs_rst = Family::<BackendLabels, Counter>::default();
    let hs_timeout = Family::<BackendLabels, Counter>::default();
    for (l, _, b) in backends(report) {
        if let Some(h) = &b.handshake {
            hs_p50.get_or_create(&l).set(h.p50_us as i64);
            hs_p99.get_or_create(&l).set(h.p99_us as i64);
            hs_ok.get_or_create(&l).inc_by(h.syn_acks);
            hs_rst.get_or_create(&l).inc_by(h.rsts);
            hs_timeout.get_or_create(&l).inc_by(h.timeouts);
        }
    }
    reg.register(
        "backend_handshake_p50_us",
        "NAT mode: median SYN to SYN-ACK latency (bucket upper bound, microseconds)",
        hs_p50,
    );
    reg.register(
        "backend_handshake_p99_us",
        "NAT mode: 99th percentile SYN to SYN-ACK latency (bucket upper bound, microseconds)",
        hs_p99,
    );
    reg.register(
        "backend_handshake_syn_acks",
        "NAT mode: SYNs answered by a SYN-ACK",
        hs_ok,
    );
    reg.register(
        "backend_handshake_rsts",
        "NAT mode: SYNs answered by a RST",
        hs_rst,
    );
    reg.register(
        "backend_handshake_timeouts",
        "NAT mode: SYNs not answered in time",
        hs_timeout,
    );
}

fn nat_metrics(reg: &mut Registry, nat: &NatReport) {
    let nat_entries = Gauge::<i64>::default();
    nat_entries.set(nat.entries as i64);
    reg.register(
        "nat_entries",
        "Live entries of the NAT table at the last sweep",
        nat_entries,
    );
    let nat_capacity = Gauge::<i64>::default();
    nat_capacity.set(i64::from(nat.capacity));
    reg.register("nat_capacity", "Capacity of the NAT table", nat_capacity);
    let nat_removed = Counter::<u64>::default();
    nat_removed.inc_by(nat.expired_removed);
    reg.register(
        "nat_expired_removed",
        "Expired NAT entries deleted by sweeps",
        nat_removed,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

fn cluster_metrics(reg: &mut Registry, c: &crate::cluster::ClusterReport) {
    let peers = Gauge::<i64>::default();
    peers.set(c.peers.len() as i64);
    reg.register("cluster_peers", "Cluster peers known to this node", peers);
    let sent = Family::<PeerLabels, Counter>::default();
    let dropped = Family::<PeerLabels, Counter>::default();
    let received = Family::<PeerLabels, Counter>::default();
    let send_lag = Family::<PeerLabels, Gauge>::default();
    let recv_lag = Family::<PeerLabels, Gauge>::default();
    let queued = Family::<PeerLabels, Gauge>::default();
    let sending = Family::<PeerLabels, Gauge>::default();
    let receiving = Family::<PeerLabels, Gauge>::default();
    for p in &c.peers {
        let l = PeerLabels {
            peer: p.node.clone(),
        };
        sent.get_or_create(&l).inc_by(p.entries_sent);
        dropped.get_or_create(&l).inc_by(p.entries_dropped);
        received.get_or_create(&l).inc_by(p.entries_received);
        send_lag.get_or_create(&l).set(p.send_lag_ms as i64);
        recv_lag.get_or_create(&l).set(p.receive_lag_ms as i64);
        queued.get_or_create(&l).set(p.queued as i64);
        sending.get_or_create(&l).set(i64::from(p.sending));
        receiving.get_or_create(&l).set(i64::from(p.receiving));
    }
    reg.register(
        "cluster_entries_sent",
        "Replication entries sent to a peer (snapshots included)",
        sent,
    );
    reg.register(
        "cluster_entries_dropped",
        "Replication entries dropped from a peer's full queue",
        dropped,
    );
    reg.register(
        "cluster_entries_received",
        "Replication entries received from a peer",
        received,
    );
    reg.register(
        "cluster_send_lag_ms",
        "Age of the oldest entry of the last batch sent to a peer, milliseconds",
        send_lag,
    );
    reg.register(
        "cluster_receive_lag_ms",
        "This node's clock minus the peer's when its last batch arrived, milliseconds",
        recv_lag,
    );
    reg.register("cluster_queued", "Entries waiting for a peer", queued);
    reg.register(
        "cluster_sending",
        "1 while the replication stream to a peer is up",
        sending,
    );
    reg.register(
        "cluster_receiving",
        "1 while a peer's replication stream to this node is up",
        receiving,
    );
    let installed = Counter::<u64>::default();
    installed.inc_by(c.entries_installed);
    reg.register(
        "cluster_entries_installed",
        "Entries from peers written to this node's maps",
        installed,
    );
    let unknown = Counter::<u64>::default();
    unknown.inc_by(c.entries_unknown_backend);
    reg.register(
        "cluster_entries_unknown_backend",
        "Entries from peers naming a VIP or backend this node does not have",
        unknown,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(c.events_lost);
    reg.register(
        "cluster_events_lost",
        "New entries lost because the data plane's event ring buffer was full",
        lost,
    );
    let rejected = Counter::<u64>::default();
    rejected.inc_by(c.announcements_rejected + c.connections_rejected);
    reg.register(
        "cluster_rejected",
        "Announcements and replication connections refused (wrong key, version or clock)",
        rejected,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_mode_is_in_the_metrics_and_its_line() {
        let mut r = StatsReport {
            version: STATS_VERSION,
            ..Default::default()
        };
        let text = prometheus(&r);
        assert!(text.contains("hola_flood_mode 0\n"), "{text}");
        assert_eq!(r.flood.line(), "flood mode: off");
        r.flood = FloodReport {
            active: true,
            unrecorded_per_second: 41_250.0,
            new_flow_rate: 125_000,
        };
        let text = prometheus(&r);
        assert!(text.contains("hola_flood_mode 1\n"), "{text}");
        assert!(
            text.contains("hola_flood_unrecorded_per_second 41250.0\n"),
            "{text}"
        );
        assert_eq!(
            r.flood.line(),
            "flood mode: ON, 41250 new flows/s forwarded by the Maglev table unrecorded \
             (over new_flow_rate = 125000 per CPU per second)"
        );
    }

    #[test]
    fn prometheus_shows_announcements_only_with_bgp() {
        let mut r = StatsReport {
            vips: vec![VipReport {
                vip: "198.18.1.1:80/tcp".into(),
                announce: Some(AnnounceReport {
                    state: "withdrawn".into(),
                    reason: "drained".into(),
                }),
                ..VipReport::default()
            }],
            ..StatsReport::default()
        };
        assert!(!prometheus(&r).contains("announced"));
        r.bgp = Some(BgpReport {
            drained: true,
            table: 201,
            route_protocol: 201,
        });
        let text = prometheus(&r);
        assert!(
            text.contains("hola_vip_announced{vip=\"198.18.1.1:80/tcp\",reason=\"drained\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("hola_node_drained 1\n"), "{text}");
    }

    #[test]
    fn prometheus_shows_the_cluster() {
        let peer = crate::cluster::PeerReport {
            node: "n2".into(),
            address: "198.18.0.3:7947".into(),
            source: crate::cluster::Source::Multicast,
            last_seen_ms_ago: Some(120),
            sending: true,
            entries_sent: 5,
            entries_dropped: 2,
            queued: 1,
            send_lag_ms: 4,
            snapshots_sent: 1,
            receiving: true,
            entries_received: 7,
            receive_lag_ms: 3,
            snapshot_received: Some(0),
            last_error: None,
        };
        let r = StatsReport {
            version: STATS_VERSION,
            cluster: Some(crate::cluster::ClusterReport {
                cluster: "lab".into(),
                node: "n1".into(),
                replicate: true,
                replication_address: "198.18.0.2:7947".into(),
                peers: vec![peer],
                announcements_rejected: 1,
                connections_rejected: 2,
                entries_installed: 6,
                entries_unknown_backend: 1,
                events_lost: 4,
            }),
            ..Default::default()
        };
        let text = prometheus(&r);
        for line in [
            "hola_cluster_peers 1",
            "hola_cluster_entries_sent_total{peer=\"n2\"} 5",
            "hola_cluster_entries_dropped_total{peer=\"n2\"} 2",
            "hola_cluster_entries_received_total{peer=\"n2\"} 7",
            "hola_cluster_send_lag_ms{peer=\"n2\"} 4",
            "hola_cluster_receive_lag_ms{peer=\"n2\"} 3",
            "hola_cluster_queued{peer=\"n2\"} 1",
            "hola_cluster_sending{peer=\"n2\"} 1",
            "hola_cluster_receiving{peer=\"n2\"} 1",
            "hola_cluster_entries_installed_total 6",
            "hola_cluster_entries_unknown_backend_total 1",
            "hola_cluster_rejected_total 3",
            "hola_cluster_events_lost_total 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        // Without [cluster], no cluster metric at all.
        let alone = prometheus(&StatsReport::default());
        assert!(!alone.contains("hola_cluster"), "{alone}");
    }

    #[test]
    fn prometheus_has_labels_and_values() {
        let mut r = StatsReport {
            version: STATS_VERSION,
            ..Default::default()
        };
        r.reasons.insert(
            "fwd_new_flow".into(),
            PacketsBytes {
                packets: 3,
                bytes: 180,
            },
        );
        r.vips.push(VipReport {
            vip: "198.18.1.1:80/tcp".into(),
            packets: 7,
            backends: vec![BackendReport {
                address: "198.18.0.11".into(),
                weight: 2,
                effective_weight: 2,
                state: "active".into(),
                health: "down".into(),
                last_check: Some(crate::health::Probe {
                    ok: false,
                    detail: "timeout after 500ms".into(),
                    latency_ms: 500,
                }),
                last_change_ms: Some(1_795_889_508_330),
                agent: Some(crate::health::agent::AgentStatus {
                    percent: 50,
                    mode: crate::health::agent::AgentMode::Up,
                    last_check: None,
                }),
                packets: 7,
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = prometheus(&r);
        assert!(
            text.contains("hola_reason_packets_total{reason=\"fwd_new_flow\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("hola_vip_packets_total{vip=\"198.18.1.1:80/tcp\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "hola_backend_weight{vip=\"198.18.1.1:80/tcp\",backend=\"198.18.0.11\"} 2"
            ),
            "{text}"
        );
        let l = "{vip=\"198.18.1.1:80/tcp\",backend=\"198.18.0.11\"}";
        for line in [
            format!("hola_backend_health_up{l} 0"),
            format!("hola_backend_check_latency_ms{l} 500"),
            format!("hola_backend_last_change_seconds{l} 1795889508"),
            format!("hola_backend_agent_percent{l} 50"),
        ] {
            assert!(text.lines().any(|t| t == line), "{line} in:\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn handshake_percentiles_come_from_the_buckets() {
        let mut h = lb_common::HandshakeStats::default();
        // 90 handshakes of 40-60 µs (bucket 5: [32, 64)), 10 of ~3 ms
        // (bucket 11: [2048, 4096)).
        for us in [40u64, 50, 60].iter().cycle().take(90) {
            h.buckets[lb_common::flow::handshake_bucket(*us)] += 1;
        }
        for _ in 0..10 {
            h.buckets[lb_common::flow::handshake_bucket(3000)] += 1;
        }
        h.syn_acks = 100;
        h.rsts = 2;
        let r = HandshakeReport::new(&h, 3);
        assert_eq!(
            r,
            HandshakeReport {
                syn_acks: 100,
                rsts: 2,
                timeouts: 3,
                p50_us: 64,
                p99_us: 4096,
            }
        );
        assert_eq!(lb_common::flow::handshake_bucket(0), 0);
        assert_eq!(lb_common::flow::handshake_bucket(1), 0);
        assert_eq!(lb_common::flow::handshake_bucket(2), 1);
        assert_eq!(lb_common::flow::handshake_bucket(1023), 9);
        assert_eq!(lb_common::flow::handshake_bucket(1024), 10);
        assert_eq!(lb_common::flow::handshake_bucket(u64::MAX), 23);
        assert_eq!(HandshakeReport::new(&Default::default(), 0).p50_us, 0);
    }
}
