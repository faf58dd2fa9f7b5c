//! Running the real programs through BPF_PROG_TEST_RUN and comparing every
//! counter before and after.

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use lb_common::Reason;
use lb_userspace::dataplane::{BackendSpec, Dataplane, Nexthop, VipAddr};

use crate::packet::LB_MAC;

/// Fails the test with a clear message unless running as root: loading BPF
/// programs needs CAP_BPF/CAP_NET_ADMIN.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs into the kernel and must run as root (cargo xtask test does)"
    );
}

/// Runs the calling thread on CPU 0 only, so that per-CPU state (flow-table
/// LRU lists, fullnat port ranges, counters) is the same from run to run.
pub fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // only touch it and this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU 0: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A small deterministic generator (xorshift64): reproducible sources,
/// delays and choices for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One run of `prog` on `input` with repeat = 1: (action, output bytes).
pub fn run(prog: &Xdp, input: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Every counter of the data plane, flattened to "name → value".
pub fn snapshot(dp: &Dataplane) -> BTreeMap<String, u64> {
    let s = dp.stats().expect("reading stats");
    let mut m = BTreeMap::new();
    for (name, r) in &s.reasons {
        m.insert(format!("reason.{name}.packets"), r.packets);
        m.insert(format!("reason.{name}.bytes"), r.bytes);
    }
    for (vip, v) in &s.vips {
        m.insert(format!("vip.{vip}.packets"), v.stats.packets);
        m.insert(format!("vip.{vip}.bytes"), v.stats.bytes);
        m.insert(format!("vip.{vip}.new_flows"), v.stats.new_flows);
        m.insert(format!("vip.{vip}.no_backend"), v.stats.no_backend);
        for (b, c) in &v.backends {
            m.insert(format!("backend.{vip}.{b}.packets"), c.packets);
            m.insert(format!("backend.{vip}.{b}.bytes"), c.bytes);
            m.insert(format!("backend.{vip}.{b}.new_flows"), c.new_flows);
        }
    }
    m
}

/// The counter changes one packet must cause, derived from what the row says
/// happened to it.
pub fn expected_deltas(
    len: usize,
    reason: Reason,
    vip: Option<VipAddr>,
    backend: Option<IpAddr>,
) -> BTreeMap<String, u64> {
    let len = len as u64;
    let mut d = BTreeMap::new();
    d.insert(format!("reason.{}.packets", reason.name()), 1);
    d.insert(format!("reason.{}.bytes", reason.name()), len);
    // A VIP's packets and bytes count every packet for it, whatever its
    // fate; its new flows and the backend's counters only packets forwarded
    // (a fullnat flow that finds no source port was chosen a backend, but
    // the NAT program dropped it: it credits neither).
    let new = reason == Reason::FwdNewFlow;
    if let Some(v) = vip {
        d.insert(format!("vip.{v}.packets"), 1);
        d.insert(format!("vip.{v}.bytes"), len);
        if new {
            d.insert(format!("vip.{v}.new_flows"), 1);
        }
        if reason == Reason::DropNoBackend {
            d.insert(format!("vip.{v}.no_backend"), 1);
        }
        if let Some(b) = backend
            && (new
                || matches!(
                    reason,
                    Reason::FwdEstablished
                        | Reason::FwdPeerFlow
                        | Reason::FwdSyn
                        | Reason::FwdFlood
                        | Reason::FwdFragment
                        | Reason::FwdFragmentEarly
                ))
        {
            d.insert(format!("backend.{v}.{b}.packets"), 1);
            d.insert(format!("backend.{v}.{b}.bytes"), len);
            if new {
                d.insert(format!("backend.{v}.{b}.new_flows"), 1);
            }
        }
    }
    d
}

/// The non-zero differences between two snapshots.
pub fn diff(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*v != b).then(|| (k.clone(), v.wrapping_sub(b)))
        })
        .collect()
}

/// Hex dump for failure messages.
pub fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An address from a literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
}

/// A fixture backend's next-hop MAC: 02:00:00:00:0b and the last octet of
/// its address, so an output frame names its backend.
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0, 0, 0, 0x0b, last]
}

/// A fixture backend at `addr`: weight 1, up, the client's port, no QUIC
/// server ID, reached back through the interface the packet came in on
/// (XDP_TX) with [`backend_mac`] and the balancer's MAC. Rows that need
/// other values change them with `BackendSpec { weight: 5, ..backend(a) }`.
pub fn backend(addr: &str) -> BackendSpec {
    let addr = ip(addr);
    BackendSpec {
        addr,
        weight: 1,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: backend_mac(addr),
            smac: LB_MAC,
            ifindex: 0,
        }),
        server_id: 0,
    }
}

/// A pin directory on the BPF filesystem (`/sys/fs/bpf/NAME`), made empty
/// at the start and removed with everything pinned in it however the test
/// ends.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    pub fn new(name: &str) -> Self {
        let d = Self(std::path::PathBuf::from("/sys/fs/bpf").join(name));
        let _ = lb_userspace::dataplane::unpin_all(&d.0);
        let _ = std::fs::remove_dir_all(&d.0);
        std::fs::create_dir_all(&d.0).unwrap_or_else(|e| {
            panic!("{}: {e} (is /sys/fs/bpf a BPF filesystem?)", d.0.display())
        });
        d
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = lb_userspace::dataplane::unpin_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
