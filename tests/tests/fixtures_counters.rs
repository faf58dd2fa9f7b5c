//! Counter fixtures (issue 15: one counter write per forwarded packet):
//! the real program through BPF_PROG_TEST_RUN, and the exact contents of
//! the counter maps after each packet. An established forward writes its
//! backend's `BACKEND_STATS` alone (not `VIP_STATS`, not `REASONS`); a new
//! flow also counts its reason and its backend's `counted_*`; a drop after
//! the VIP matched counts the VIP itself. What `Dataplane::stats` derives
//! (the VIP's totals, `fwd_established`) is what the program counted
//! before, and stays the same when backends are removed, their ids reused
//! (`RETIRED`), and a VIP id reused.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use hola_tests::{
    fixture::{diff, expected_deltas, pin_to_cpu0, require_root, run, snapshot},
    packet::{L4, LB_MAC, Pkt, TCP_ACK},
};
use lb_common::{Backend, BackendStats, Reason, ReasonStats, RetiredStats, VipStats};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};

const XDP_TX: u32 = 3;
/// Few ids, so that removed ones are handed out again at once.
const MAX_VIPS: u32 = 3;
const MAX_BACKENDS: u32 = 4;

fn backend(addr: &str, port: u16) -> BackendSpec {
    let addr: IpAddr = addr.parse().expect("backend address");
    BackendSpec {
        addr,
        weight: 1,
        up: true,
        port,
        nexthop: Some(Nexthop {
            dmac: [0x02, 0, 0, 0, 0x0b, 1],
            smac: LB_MAC,
            ifindex: 0,
        }),
        server_id: 0,
    }
}

fn vip(addr: &str, mode: Mode) -> VipSpec {
    VipSpec {
        vip: VipAddr {
            addr: addr.parse().expect("VIP address"),
            port: 80,
            proto: Proto::Tcp,
        },
        mode,
        src_hash: false,
        table_size: 251,
        quic: false,
    }
}

/// The raw counter maps, summed over CPUs: every `VIP_STATS`,
/// `BACKEND_STATS` and `REASONS` entry that is not zero.
#[derive(Debug, Default, PartialEq, Eq)]
struct Raw {
    vips: BTreeMap<u32, VipStats>,
    backends: BTreeMap<u32, BackendStats>,
    reasons: BTreeMap<u32, ReasonStats>,
}

/// The pin directory of this test's data plane (its maps are read from
/// their pins: the data plane holds its own handles), removed at the end.
const PINS: &str = "/sys/fs/bpf/hola-test-counters";

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pinned(name: &str) -> MapData {
    let path = Path::new(PINS).join("maps").join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn raw() -> Raw {
    let mut out = Raw::default();
    let vips: PerCpuArray<_, VipStats> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned("VIP_STATS"))).expect("per-CPU");
    for i in 0..=MAX_VIPS {
        let mut s = VipStats::default();
        for v in vips.get(&i, 0).expect("VIP_STATS entry").iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
            s.new_flows += v.new_flows;
            s.no_backend += v.no_backend;
        }
        if s != VipStats::default() {
            out.vips.insert(i, s);
        }
    }
    let backends: PerCpuArray<_, BackendStats> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned("BACKEND_STATS"))).expect("per-CPU");
    for i in 0..=MAX_BACKENDS {
        let mut s = BackendStats::default();
        for v in backends.get(&i, 0).expect("BACKEND_STATS entry").iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
            s.new_flows += v.new_flows;
            s.counted_packets += v.counted_packets;
            s.counted_bytes += v.counted_bytes;
            s.legacy_packets += v.legacy_packets;
            s.legacy_bytes += v.legacy_bytes;
        }
        if s != BackendStats::default() {
            out.backends.insert(i, s);
        }
    }
    let reasons: PerCpuArray<_, ReasonStats> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned("REASONS"))).expect("per-CPU");
    for i in 0..Reason::COUNT {
        let mut s = ReasonStats::default();
        for v in reasons.get(&i, 0).expect("REASONS entry").iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
        }
        if s != ReasonStats::default() {
            out.reasons.insert(i, s);
        }
    }
    out
}

fn retired(vip_id: u32) -> RetiredStats {
    let m: Array<_, RetiredStats> = Array::try_from(Map::Array(pinned("RETIRED"))).expect("array");
    m.get(&vip_id, 0).expect("RETIRED entry")
}

fn backend_entry(id: u32) -> Backend {
    let m: Array<_, Backend> = Array::try_from(Map::Array(pinned("BACKENDS"))).expect("array");
    m.get(&id, 0).expect("BACKENDS entry")
}

fn vip_id(dp: &Dataplane, v: &VipAddr) -> u32 {
    dp.tables().vip(v).expect("VIP").id
}

fn backend_id(dp: &Dataplane, v: &VipAddr) -> u32 {
    dp.tables().vip(v).expect("VIP").backends[0].id
}

/// Sends `p` (forwarded with `reason` to the VIP's only backend) and
/// checks the derived counters moved as the program used to count them,
/// and the raw maps exactly as one write per established forward says.
fn forward(dp: &mut Dataplane, v: &VipAddr, p: &Pkt, reason: Reason) {
    let (vid, bid) = (vip_id(dp, v), backend_id(dp, v));
    let to = dp.tables().vip(v).expect("VIP").backends[0].spec.addr;
    let (before, raw_before) = (snapshot(dp), raw());
    let input = p.bytes();
    let (action, _) = run(dp.program().expect("program"), &input).expect("test run");
    assert_eq!(action, XDP_TX, "{v}: {reason:?} forwarded");
    let len = input.len() as u64;
    assert_eq!(
        diff(&before, &snapshot(dp)),
        expected_deltas(input.len(), reason, Some(*v), Some(to)),
        "{v}: derived counters after a {reason:?} packet"
    );
    let mut want = raw_before;
    let b = want.backends.entry(bid).or_default();
    b.packets += 1;
    b.bytes += len;
    if reason != Reason::FwdEstablished {
        b.counted_packets += 1;
        b.counted_bytes += len;
        let r = want.reasons.entry(reason as u32).or_default();
        r.packets += 1;
        r.bytes += len;
    }
    if reason == Reason::FwdNewFlow {
        b.new_flows += 1;
        want.vips.entry(vid).or_default().new_flows += 1;
    }
    assert_eq!(
        raw(),
        want,
        "{v}: raw maps after a {reason:?} packet (an established forward writes BACKEND_STATS alone)"
    );
}

/// The derived counters, without the entries of VIPs and backends that
/// are not listed any more (a removed VIP's are gone with it).
fn reasons(dp: &Dataplane) -> BTreeMap<String, u64> {
    snapshot(dp)
        .into_iter()
        .filter(|(k, _)| k.starts_with("reason."))
        .collect()
}

#[test]
fn established_forwards_write_one_counter_and_totals_survive_removal() {
    require_root();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    pin_to_cpu0();
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        nat_capacity: 1024,
        max_vips: MAX_VIPS,
        max_backends: MAX_BACKENDS,
        ..Default::default()
    };
    let dir = PinDir(PathBuf::from(PINS));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("a bpffs directory");
    let mut dp = Dataplane::load_pinned(cfg.clone(), &dir.0).expect("loading the balancer");
    // (As the daemon does once attached: the layout recorded.)
    dp.finish_pinned().expect("recording the layout");
    let (dsr, tun, nat) = (
        vip("198.18.1.1", Mode::Dsr),
        vip("198.18.1.2", Mode::Tunnel),
        vip("198.18.1.8", Mode::Nat),
    );
    for v in [dsr, tun, nat] {
        dp.add_vip(v).expect("add VIP");
    }
    dp.set_backends(&dsr.vip, &[backend("198.18.2.1", 0)])
        .expect("backends");
    dp.set_backends(&tun.vip, &[backend("198.18.3.1", 0)])
        .expect("backends");
    dp.set_backends(&nat.vip, &[backend("198.18.4.1", 8080)])
        .expect("backends");

    // dsr, tunnel, nat: a new flow (non-SYN miss), then two established
    // packets; one more flow through dsr.
    for (v, dst) in [
        (&dsr.vip, "198.18.1.1"),
        (&tun.vip, "198.18.1.2"),
        (&nat.vip, "198.18.1.8"),
    ] {
        let p = Pkt::new("198.18.0.10", dst, L4::tcp(40000, 80, TCP_ACK));
        forward(&mut dp, v, &p, Reason::FwdNewFlow);
        forward(&mut dp, v, &p, Reason::FwdEstablished);
        forward(&mut dp, v, &p, Reason::FwdEstablished);
    }
    let p2 = Pkt::new("198.18.0.11", "198.18.1.1", L4::tcp(40001, 80, TCP_ACK));
    forward(&mut dp, &dsr.vip, &p2, Reason::FwdNewFlow);
    forward(&mut dp, &dsr.vip, &p2, Reason::FwdEstablished);

    // A drop after the VIP matched is the VIP's own count.
    let mut no_nexthop = backend("198.18.3.9", 0);
    no_nexthop.nexthop = None;
    dp.set_backends(&tun.vip, &[no_nexthop]).expect("backends");
    let (tid, raw_before) = (vip_id(&dp, &tun.vip), raw());
    let before = snapshot(&dp);
    let dropped = Pkt::new("198.18.0.12", "198.18.1.2", L4::tcp(40002, 80, TCP_ACK)).bytes();
    run(dp.program().expect("program"), &dropped).expect("test run");
    let mut want = raw_before;
    let v = want.vips.entry(tid).or_default();
    v.packets += 1;
    v.bytes += dropped.len() as u64;
    want.reasons
        .entry(Reason::DropNoNexthop as u32)
        .or_default()
        .packets += 1;
    want.reasons
        .entry(Reason::DropNoNexthop as u32)
        .or_default()
        .bytes += dropped.len() as u64;
    assert_eq!(raw(), want, "a drop counts the VIP and its reason");
    assert_eq!(
        diff(&before, &snapshot(&dp)),
        expected_deltas(dropped.len(), Reason::DropNoNexthop, Some(tun.vip), None),
    );

    // The dsr VIP's backend replaced: its counters stay the VIP's (a
    // marker in BACKENDS), nothing derived changes.
    let (did, old_id) = (vip_id(&dp, &dsr.vip), backend_id(&dp, &dsr.vip));
    let before = snapshot(&dp);
    let old_counts = raw().backends[&old_id];
    dp.set_backends(&dsr.vip, &[backend("198.18.2.2", 0)])
        .expect("backends");
    let marker = backend_entry(old_id);
    assert_eq!(
        (marker.vip_id, marker.flags),
        (did, 0),
        "a removed backend leaves a marker of its VIP"
    );
    assert_eq!(
        diff(&before, &snapshot(&dp)),
        BTreeMap::new(),
        "removing a backend changes no derived counter"
    );
    let p3 = Pkt::new("198.18.0.13", "198.18.1.1", L4::tcp(40003, 80, TCP_ACK));
    forward(&mut dp, &dsr.vip, &p3, Reason::FwdNewFlow);
    forward(&mut dp, &dsr.vip, &p3, Reason::FwdEstablished);

    // Replaced again: the new backend takes the first removed one's id
    // (four ids, handed out in turn; the replacement above took the
    // tunnel's removed backend's), whose counters are folded into
    // RETIRED first.
    let before = snapshot(&dp);
    dp.set_backends(&dsr.vip, &[backend("198.18.2.3", 0)])
        .expect("backends");
    assert_eq!(
        backend_id(&dp, &dsr.vip),
        old_id,
        "the id is handed out again"
    );
    assert_eq!(
        retired(did),
        RetiredStats {
            vip_packets: old_counts.packets,
            vip_bytes: old_counts.bytes,
            established_packets: old_counts.packets - old_counts.counted_packets,
            established_bytes: old_counts.bytes - old_counts.counted_bytes,
            folding: 0,
            _pad: 0,
        },
        "the removed backend's counters are in RETIRED"
    );
    assert!(
        !raw().backends.contains_key(&old_id),
        "the id's counters start from zero"
    );
    assert_eq!(
        diff(&before, &snapshot(&dp)),
        BTreeMap::new(),
        "folding a removed backend changes no derived counter"
    );
    forward(&mut dp, &dsr.vip, &p3, Reason::FwdNewFlow);
    forward(&mut dp, &dsr.vip, &p3, Reason::FwdEstablished);

    // The VIP removed and its id given to a new VIP: the reason totals
    // keep what its backends forwarded; the new VIP starts from zero.
    let before = reasons(&dp);
    dp.remove_vip(&dsr.vip).expect("remove VIP");
    assert_eq!(
        reasons(&dp),
        before,
        "a removed VIP's forwards stay counted"
    );
    let again = vip("198.18.1.9", Mode::Dsr);
    dp.add_vip(again).expect("add VIP");
    assert_eq!(
        vip_id(&dp, &again.vip),
        did,
        "the VIP id is handed out again"
    );
    assert_eq!(
        reasons(&dp),
        before,
        "a reused VIP id keeps the reason totals"
    );
    let s = dp.stats().expect("stats");
    assert_eq!(
        (
            s.vips[&again.vip].stats.packets,
            s.vips[&again.vip].stats.bytes
        ),
        (0, 0),
        "the new VIP starts from zero"
    );
    let r = retired(did);
    assert_eq!((r.vip_packets, r.vip_bytes, r.folding), (0, 0, 0));

    // A restart (the next data plane adopts the pins, markers and
    // RETIRED too) reads the same counters.
    let before = snapshot(&dp);
    drop(dp);
    let dp = Dataplane::load_pinned(cfg, &dir.0).expect("loading the balancer again");
    assert_eq!(snapshot(&dp), before, "a restart reads the same counters");
}
