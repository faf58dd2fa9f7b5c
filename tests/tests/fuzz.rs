//! Packet fuzzing through the kernel: generated frames — valid ones to every
//! kind of VIP, then truncated, overwritten, given bogus lengths, IPv4
//! options, IPv6 extension headers, VLAN stacks, fragment bits, trailers,
//! sizes from nothing to the largest frame the kernel takes — run through
//! the real balancer with BPF_PROG_TEST_RUN. Each run is judged by an
//! oracle written from the design, not from the program's code:
//!
//! 1. the verdict (and the reason counted for it) is one the design allows
//!    for that frame;
//! 2. a forwarded frame's output parses (a parser of this file's own) and
//!    its checksums verify whenever the input's did, and it differs from
//!    the input only where its mode rewrites;
//! 3. a frame that is passed or dropped leaves byte for byte as it came;
//! 4. exactly one reason counter moves, by one packet and its bytes, and
//!    every other counter moves exactly as that reason says.
//!
//! `HOLA_FUZZ_CASES` sets the number of cases (default 3000; `cargo xtask
//! fuzz` runs 100000). Inputs that failed once are replayed first, always:
//! `tests/fuzz-regressions/packets.txt` (the frames themselves) and
//! `tests/fuzz-regressions/seeds.txt` (proptest's seeds).
//!
//! What the kernel refuses is an expected outcome, not a failure:
//! BPF_PROG_TEST_RUN returns EINVAL for a frame shorter than an Ethernet
//! header (14 bytes) and ENOMEM for one larger than its linear part plus
//! MAX_SKB_FRAGS pages. A frame larger than the linear part (a page minus
//! XDP headroom and skb_shared_info: 3520 bytes on x86-64) is not refused:
//! the kernel builds a multi-buffer frame of which the program sees the
//! linear part only (`data_end`), as it would on a NIC with multi-buffer
//! XDP; the oracle judges what the program sees. (hola is not loaded with
//! `xdp.frags`, so on a real interface the kernel never hands it one.)

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    time::{Duration, Instant},
};

use aya::programs::ProgramError;
use hola_tests::{
    fixture::{diff, expected_deltas, hex, pin_to_cpu0, require_root, run, snapshot},
    netns::cmd,
    packet::{CLIENT_MAC, LB_MAC, fold, sum16},
};
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, Reason};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::Index,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

const DEFAULT_CASES: u32 = 3000;
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-regressions");
const PACKETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-regressions/packets.txt");
const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-regressions/seeds.txt");

/// IPv6 next-header values that are extension headers (IANA registry).
const EXT_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

const FULLNAT_SRC4: &str = "198.18.5.1";
/// fullnat source ports: this many per possible CPU from 40000; the fuzz
/// thread runs on CPU 0, so its flows get the first range.
const FULLNAT_PORTS_PER_CPU: u16 = 64;
const FULLNAT_SRC6: &str = "2001:db8:5::1";
const TUNNEL_SRC4: (&str, u8) = ("198.18.255.0", 24);
const TUNNEL_SRC6: (&str, u8) = ("2001:db8:ffff::", 112);

// ---------------------------------------------------------------------------
// The data planes under test.

/// One VIP as configured, with its backends.
struct VipDef {
    vip: VipAddr,
    mode: Mode,
    backends: Vec<BackendSpec>,
}

/// A loaded balancer and what it was told.
struct Plane {
    name: &'static str,
    dp: Dataplane,
    vips: Vec<VipDef>,
    /// Whether a nat or fullnat VIP exists (replies and ICMP errors then
    /// go through the NAT programs).
    nat: bool,
    /// The counters after the last run: nothing else runs the program
    /// (it is attached nowhere), so they are the next run's "before".
    counters: RefCell<Option<BTreeMap<String, u64>>>,
}

impl Plane {
    fn nat_vips(&self) -> Vec<usize> {
        (0..self.vips.len())
            .filter(|&i| matches!(self.vips[i].mode, Mode::Nat | Mode::FullNat))
            .collect()
    }

    fn is_nat_backend(&self, a: IpAddr) -> bool {
        self.vips.iter().any(|v| {
            matches!(v.mode, Mode::Nat | Mode::FullNat) && v.backends.iter().any(|b| b.addr == a)
        })
    }
}

enum Reach {
    Tx,
    Redirect,
    Unresolved,
}

/// The VIPs of both planes; the NAT plane has the NAT VIPs too. Every
/// backend has a MAC of its own, so an output's MAC names its backend.
fn vip_defs(nat: bool, redirect: u32) -> Vec<VipDef> {
    let mut mac = 0u8;
    let mut b = |addr: &str, port: u16, reach: Reach| {
        mac += 1;
        BackendSpec {
            addr: addr.parse().expect("backend address"),
            weight: 1,
            up: true,
            port,
            nexthop: match reach {
                Reach::Unresolved => None,
                Reach::Tx | Reach::Redirect => Some(Nexthop {
                    dmac: [0x02, 0, 0, 0, 0x0b, mac],
                    smac: LB_MAC,
                    ifindex: if matches!(reach, Reach::Redirect) {
                        redirect
                    } else {
                        0
                    },
                }),
            },
            server_id: 0,
        }
    };
    let v = |addr: &str, port: u16, proto: Proto, mode: Mode, backends: Vec<BackendSpec>| VipDef {
        vip: VipAddr {
            addr: addr.parse().expect("VIP address"),
            port,
            proto,
        },
        mode,
        backends,
    };
    use Mode::{Dsr, FullNat, Nat, Tunnel};
    use Proto::{Tcp, Udp};
    use Reach::{Redirect, Tx, Unresolved};
    let mut d = vec![
        v(
            "198.18.1.1",
            80,
            Tcp,
            Dsr,
            vec![
                b("198.18.2.1", 0, Tx),
                b("198.18.2.2", 0, Tx),
                b("198.18.2.3", 0, Tx),
            ],
        ),
        v("198.18.1.1", 53, Udp, Dsr, vec![b("198.18.2.4", 0, Tx)]),
        v(
            "198.18.1.2",
            0,
            Tcp,
            Tunnel,
            vec![b("198.18.3.1", 0, Tx), b("198.18.3.2", 0, Tx)],
        ),
        v(
            "198.18.1.6",
            4789,
            Udp,
            Tunnel,
            vec![b("198.18.3.3", 0, Redirect)],
        ),
        v(
            "2001:db8:1::1",
            80,
            Tcp,
            Dsr,
            vec![b("2001:db8:2::1", 0, Tx), b("2001:db8:2::2", 0, Tx)],
        ),
        v(
            "2001:db8:1::1",
            53,
            Udp,
            Dsr,
            vec![b("2001:db8:2::3", 0, Tx)],
        ),
        v(
            "2001:db8:1::2",
            443,
            Tcp,
            Tunnel,
            vec![b("2001:db8:3::1", 0, Tx)],
        ),
        v(
            "2001:db8:1::2",
            0,
            Udp,
            Tunnel,
            vec![b("2001:db8:3::2", 0, Tx)],
        ),
        v(
            "2001:db8:1::3",
            53,
            Udp,
            Dsr,
            vec![b("2001:db8:2::9", 0, Redirect)],
        ),
        v("198.18.1.3", 80, Tcp, Dsr, vec![]),
        v(
            "198.18.1.4",
            80,
            Tcp,
            Dsr,
            vec![b("198.18.2.9", 0, Unresolved)],
        ),
        v(
            "198.18.1.5",
            80,
            Tcp,
            Dsr,
            vec![b("198.18.2.10", 0, Redirect)],
        ),
    ];
    // A VIP address with 198.18.1.2's `VIP_DIRECT4` slot (and another
    // filter bit): both are found through `VIP_ADDRS4`.
    d.push(v(
        "198.19.103.30",
        80,
        Tcp,
        Dsr,
        vec![b("198.18.2.20", 0, Tx)],
    ));
    // More VIPs on one address than its map entry holds inline.
    for port in 1..=10u16 {
        let addr = format!("198.18.2.{}", 40 + port);
        d.push(v("198.18.1.8", port, Tcp, Dsr, vec![b(&addr, 0, Tx)]));
    }
    if nat {
        d.extend([
            v("198.18.1.10", 80, Tcp, Nat, vec![b("198.18.4.1", 8080, Tx)]),
            v("198.18.1.10", 53, Udp, Nat, vec![b("198.18.4.2", 0, Tx)]),
            v("198.18.1.12", 0, Tcp, Nat, vec![b("198.18.4.5", 0, Tx)]),
            v(
                "198.18.1.13",
                80,
                Tcp,
                Nat,
                vec![b("198.18.4.6", 8080, Redirect)],
            ),
            v(
                "198.18.1.11",
                80,
                Tcp,
                FullNat,
                vec![b("198.18.4.3", 8080, Tx)],
            ),
            v(
                "198.18.1.11",
                53,
                Udp,
                FullNat,
                vec![b("198.18.4.4", 0, Tx)],
            ),
            v(
                "2001:db8:1::10",
                80,
                Tcp,
                Nat,
                vec![b("2001:db8:4::1", 8080, Tx)],
            ),
            v(
                "2001:db8:1::10",
                53,
                Udp,
                Nat,
                vec![b("2001:db8:4::2", 5353, Tx)],
            ),
            v(
                "2001:db8:1::11",
                80,
                Tcp,
                FullNat,
                vec![b("2001:db8:4::3", 8080, Tx)],
            ),
        ]);
    }
    d
}

fn load_plane(name: &'static str, nat: bool, redirect: u32) -> Plane {
    let ncpus = aya::util::nr_cpus().expect("possible CPUs") as u16;
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        // Short lives, so that fullnat ports come free again during a run;
        // a FIN or RST ends an entry at once.
        nat_tcp_idle: Duration::from_secs(2),
        nat_udp_idle: Duration::from_secs(2),
        nat_closed_linger: Duration::ZERO,
        tunnel_src_v4: (TUNNEL_SRC4.0.parse().expect("literal"), TUNNEL_SRC4.1),
        tunnel_src_v6: (TUNNEL_SRC6.0.parse().expect("literal"), TUNNEL_SRC6.1),
        fullnat_src_v4: Some(FULLNAT_SRC4.parse().expect("literal")),
        fullnat_src_v6: Some(FULLNAT_SRC6.parse().expect("literal")),
        fullnat_ports: (40000, 40000 + FULLNAT_PORTS_PER_CPU * ncpus - 1),
        // Low enough that a run goes over it, so that flows over the insert
        // rate limit (`fwd_flood`) are among the cases.
        new_flow_rate: 100,
        ..Default::default()
    };
    let mut dp = Dataplane::load(cfg).expect("loading the balancer (the verifier must accept it)");
    let vips = vip_defs(nat, redirect);
    for d in &vips {
        dp.add_vip(VipSpec {
            vip: d.vip,
            mode: d.mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
        if !d.backends.is_empty() {
            dp.set_backends(&d.vip, &d.backends).expect("set backends");
        }
    }
    Plane {
        name,
        dp,
        vips,
        nat,
        counters: RefCell::new(None),
    }
}

/// Both planes and what the kernel takes.
struct Harness {
    planes: [Plane; 2],
    /// Bytes of a frame the program sees (the linear part).
    linear: usize,
    /// The largest frame BPF_PROG_TEST_RUN takes.
    max_frame: usize,
}

impl Harness {
    fn plane(&self, name: &str) -> Option<&Plane> {
        self.planes.iter().find(|p| p.name == name)
    }
}

/// Finds the linear size (from the byte counter of a frame nobody parses)
/// and the largest frame the kernel takes (by bisection).
fn calibrate(p: &Plane) -> (usize, usize) {
    let odd = |n: usize| {
        let mut f = vec![0u8; n];
        if n >= 14 {
            f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
        }
        f
    };
    let before = snapshot(&p.dp);
    run(p.dp.program_ref(), &odd(1 << 16)).expect("a 64 KiB frame is taken");
    let d = diff(&before, &snapshot(&p.dp));
    let linear = d["reason.pass_not_ip.bytes"] as usize;
    assert!(
        run(p.dp.program_ref(), &odd(13)).is_err(),
        "a 13-byte frame must be refused"
    );
    let (mut ok, mut refused) = (1usize << 16, 1usize << 21);
    while refused - ok > 1 {
        let mid = (ok + refused) / 2;
        if run(p.dp.program_ref(), &odd(mid)).is_ok() {
            ok = mid;
        } else {
            refused = mid;
        }
    }
    (linear, ok)
}

// ---------------------------------------------------------------------------
// An independent parser (not the eBPF one): what RFC 791/8200/793/768 say a
// frame is.

#[derive(Clone, Copy, Debug)]
struct Ip {
    /// Offset of the IP header (14, or 18 after one tag).
    l3: usize,
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4 protocol, or the IPv6 header's next header.
    proto: u8,
    /// Offset of what follows the IP header (IPv4 options included).
    l4: usize,
    /// End of the datagram by its length field.
    end: usize,
    /// IPv4 more-fragments or a fragment offset.
    fragment: bool,
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn is_tag(et: u16) -> bool {
    et == 0x8100 || et == 0x88a8
}

/// Ethernet with at most one tag, then IPv4 or IPv6 whose lengths fit the
/// frame. `Err` is the reason the design gives a frame that is not that.
fn parse(f: &[u8]) -> Result<Ip, Reason> {
    if f.len() < 14 {
        return Err(Reason::DropMalformed);
    }
    let (mut l3, mut et) = (14, be16(f, 12));
    if is_tag(et) {
        if f.len() < 18 {
            return Err(Reason::DropMalformed);
        }
        et = be16(f, 16);
        if is_tag(et) {
            return Err(Reason::PassVlanStack);
        }
        l3 = 18;
    }
    parse_ip(f, l3, et)
}

fn parse_ip(f: &[u8], l3: usize, et: u16) -> Result<Ip, Reason> {
    let room = f.len().saturating_sub(l3);
    match et {
        0x0800 => {
            if room < 20 {
                return Err(Reason::DropMalformed);
            }
            let h = &f[l3..];
            let hl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(be16(h, 2));
            if h[0] >> 4 != 4 || hl < 20 || total < hl || total > room {
                return Err(Reason::DropMalformed);
            }
            let addr =
                |at: usize| IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]));
            Ok(Ip {
                l3,
                v6: false,
                src: addr(12),
                dst: addr(16),
                proto: h[9],
                l4: l3 + hl,
                end: l3 + total,
                fragment: be16(h, 6) & 0x3fff != 0,
            })
        }
        0x86dd => {
            if room < 40 {
                return Err(Reason::DropMalformed);
            }
            let h = &f[l3..];
            let payload = usize::from(be16(h, 4));
            if h[0] >> 4 != 6 || payload > room - 40 {
                return Err(Reason::DropMalformed);
            }
            let addr = |at: usize| {
                let o: [u8; 16] = h[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok(Ip {
                l3,
                v6: true,
                src: addr(8),
                dst: addr(24),
                proto: h[6],
                l4: l3 + 40,
                end: l3 + 40 + payload,
                fragment: false,
            })
        }
        _ => Err(Reason::PassNotIp),
    }
}

fn icmp_proto(ip: &Ip) -> u8 {
    if ip.v6 { ICMPV6 } else { ICMP }
}

/// An ICMP error (destination unreachable, time exceeded; ICMPv6 also
/// packet too big) quoting a TCP or UDP packet — not a later fragment —
/// whose ports lie within the error's datagram: the only ICMP the design
/// translates.
fn quotes_ports(f: &[u8], ip: &Ip) -> bool {
    if ip.l4 + 8 > ip.end {
        return false;
    }
    let t = f[ip.l4];
    let error = if ip.v6 {
        matches!(t, 1..=3)
    } else {
        matches!(t, 3 | 11)
    };
    let q = ip.l4 + 8;
    if !error {
        return false;
    }
    let (proto, ports) = if ip.v6 {
        if q + 40 > ip.end || f[q] >> 4 != 6 {
            return false;
        }
        (f[q + 6], q + 40)
    } else {
        if q + 20 > ip.end {
            return false;
        }
        let hl = usize::from(f[q] & 0x0f) * 4;
        if f[q] >> 4 != 4 || hl < 20 || be16(f, q + 6) & 0x1fff != 0 {
            return false;
        }
        (f[q + 9], q + hl)
    };
    (proto == TCP || proto == UDP) && ports + 4 <= ip.end
}

/// The TCP or UDP header of `ip`, if it lies within the datagram and its
/// data offset (TCP) or length field (UDP: at least its 8-byte header, at
/// most the IP payload) is possible: (source port, destination port).
fn transport(f: &[u8], ip: &Ip) -> Option<(u16, u16)> {
    let need = if ip.proto == TCP { 20 } else { 8 };
    if ip.l4 + need > ip.end {
        return None;
    }
    if ip.proto == TCP {
        let doff = usize::from(f[ip.l4 + 12] >> 4) * 4;
        if doff < 20 || ip.l4 + doff > ip.end {
            return None;
        }
    } else {
        let len = usize::from(be16(f, ip.l4 + 4));
        if len < 8 || ip.l4 + len > ip.end {
            return None;
        }
    }
    Some((be16(f, ip.l4), be16(f, ip.l4 + 2)))
}

fn ipv4_header_ok(f: &[u8], l3: usize) -> bool {
    let hl = usize::from(f[l3] & 0x0f) * 4;
    l3 + hl <= f.len() && fold(sum16(&f[l3..l3 + hl])) == 0
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Whether the TCP, UDP, ICMP or ICMPv6 checksum of the datagram verifies
/// (an IPv4 UDP checksum of 0 means none); `None` for other protocols.
fn l4_checksum_ok(f: &[u8], ip: &Ip) -> Option<bool> {
    let data = &f[ip.l4.min(ip.end)..ip.end];
    let pseudo = sum16(&octets(ip.src)) + sum16(&octets(ip.dst)) + data.len() as u32;
    let sum = match ip.proto {
        TCP | UDP => {
            if ip.proto == UDP && !ip.v6 && data.len() >= 8 && data[6..8] == [0, 0] {
                return Some(true);
            }
            pseudo + u32::from(ip.proto) + sum16(data)
        }
        ICMP if !ip.v6 => sum16(data),
        ICMPV6 if ip.v6 => pseudo + u32::from(ICMPV6) + sum16(data),
        _ => return None,
    };
    Some(fold(sum) == 0)
}

fn is_ext(proto: u8) -> bool {
    EXT_HEADERS.contains(&proto)
}

fn flow_key(ip: &Ip, sport: u16, dport: u16) -> FlowKey {
    let mut k = FlowKey::default();
    let (s, d) = (octets(ip.src), octets(ip.dst));
    k.src[..s.len()].copy_from_slice(&s);
    k.dst[..d.len()].copy_from_slice(&d);
    k.family = if ip.v6 { FAMILY_V6 } else { FAMILY_V4 };
    k.sport = sport.to_be();
    k.dport = dport.to_be();
    k.proto = ip.proto;
    k
}

// ---------------------------------------------------------------------------
// The oracle: which reasons the design allows for what the program sees.

/// The design's judgement of one frame.
#[derive(Debug)]
struct Judged {
    allowed: Vec<Reason>,
    /// The VIP (index into the plane's list) the frame is for.
    vip: Option<usize>,
    /// Its flow (for the Maglev check of a new flow).
    key: Option<FlowKey>,
    /// An ICMP error about a dsr or tunnel flow: the VIP that flow is of
    /// (the error credits no VIP counter, so not in `vip`).
    icmp_vip: Option<usize>,
}

impl Judged {
    fn only(r: Reason) -> Self {
        Judged {
            allowed: vec![r],
            vip: None,
            key: None,
            icmp_vip: None,
        }
    }

    fn any(r: &[Reason]) -> Self {
        Judged {
            allowed: r.to_vec(),
            vip: None,
            key: None,
            icmp_vip: None,
        }
    }
}

/// Issue 16 item 1: an ICMP error to a VIP address that quotes a TCP or
/// UDP packet from that address and the port of a `dsr` or `tunnel` VIP
/// there (an all-ports VIP: any port) is about that VIP's flow, the quoted
/// tuple reversed: it goes to the flow's backend as the flow's data would
/// (`fwd_icmp_flow` from the flow table, `fwd_icmp_maglev` from the Maglev
/// table), or is dropped as the data would be (no backend, no next hop).
/// Anything else: None (the rest of the oracle judges it).
fn icmp_about_flow(p: &Plane, f: &[u8], ip: &Ip) -> Option<Judged> {
    use Reason::*;
    if ip.proto != icmp_proto(ip) || !quotes_ports(f, ip) {
        return None;
    }
    let q = ip.l4 + 8;
    let addr = |b: &[u8]| -> IpAddr {
        if let Ok(a) = <[u8; 16]>::try_from(b) {
            IpAddr::V6(a.into())
        } else {
            IpAddr::V4(<[u8; 4]>::try_from(b).expect("4 bytes").into())
        }
    };
    let (src, dst, proto, ports) = if ip.v6 {
        (
            addr(&f[q + 8..q + 24]),
            addr(&f[q + 24..q + 40]),
            f[q + 6],
            q + 40,
        )
    } else {
        let hl = usize::from(f[q] & 0x0f) * 4;
        (
            addr(&f[q + 12..q + 16]),
            addr(&f[q + 16..q + 20]),
            f[q + 9],
            q + hl,
        )
    };
    if src != ip.dst {
        return None;
    }
    let (sport, dport) = (be16(f, ports), be16(f, ports + 2));
    let pr = if proto == TCP { Proto::Tcp } else { Proto::Udp };
    let find = |port: u16| {
        (0..p.vips.len()).find(|&i| {
            let v = &p.vips[i].vip;
            v.addr == src && v.proto == pr && v.port == port
        })
    };
    let i = find(sport).or_else(|| find(0))?;
    let def = &p.vips[i];
    if !matches!(def.mode, Mode::Dsr | Mode::Tunnel) {
        return None;
    }
    let allowed = if def.backends.is_empty() {
        vec![DropNoBackend]
    } else if def.backends.iter().all(|b| b.nexthop.is_none()) {
        vec![DropNoNexthop]
    } else {
        vec![FwdIcmpFlow, FwdIcmpMaglev]
    };
    let mut k = FlowKey::default();
    let (s, d) = (octets(dst), octets(src));
    k.src[..s.len()].copy_from_slice(&s);
    k.dst[..d.len()].copy_from_slice(&d);
    k.family = if ip.v6 { FAMILY_V6 } else { FAMILY_V4 };
    k.sport = dport.to_be();
    k.dport = sport.to_be();
    k.proto = proto;
    Some(Judged {
        allowed,
        vip: None,
        key: Some(k),
        icmp_vip: Some(i),
    })
}

/// The backend an error about a flow went to must be the flow's: its
/// flow-table entry's (`fwd_icmp_flow`, and only when there is one), else
/// the Maglev table's.
fn icmp_backend_is_the_flows(
    p: &Plane,
    v: &VipDef,
    key: &FlowKey,
    reason: Reason,
    to: IpAddr,
) -> Result<(), String> {
    let entry =
        p.dp.flow_entry(key)
            .and_then(|e| p.dp.backend_by_id(&v.vip, e.backend_id));
    let want = match (reason, entry) {
        (Reason::FwdIcmpFlow, Some(b)) => Some(b),
        (Reason::FwdIcmpMaglev, None) => p.dp.maglev_backend(&v.vip, key),
        (r, e) => return Err(format!("{r:?} with the flow's entry {e:?}")),
    };
    if want != Some(to) {
        return Err(format!("sent to {to}; the flow's backend is {want:?}"));
    }
    Ok(())
}

/// - not IPv4/IPv6: passes; two VLAN tags: passes;
/// - a truncated or impossible Ethernet, IP header or (for a VIP) TCP/UDP
///   header: dropped, whoever it is for (the kernel would drop it too);
/// - not for a VIP's address: passes, unless a NAT VIP exists and it may
///   be a NAT backend's reply (well-formed TCP/UDP from a NAT backend) or
///   an ICMP error quoting a flow's ports: then translated, dropped if the
///   flow has expired, or passed;
/// - fragments to a VIP's address, or from a NAT backend: `check_fragment`;
/// - for a VIP's address: IPv6 with another extension header passes; not
///   TCP/UDP passes (an ICMP error quoting a flow's ports may be translated
///   toward a NAT backend; one quoting a dsr or tunnel VIP's packet goes to
///   its flow's backend: `icmp_about_flow`); no VIP on that port passes;
/// - for a VIP: dropped if it has no backend or its backend's next hop is
///   unresolved; otherwise forwarded as a new or established flow (fullnat:
///   dropped when no source port is free); a TCP SYN that misses the flow
///   table as an unrecorded SYN (`fwd_syn`; in dsr and tunnel mode also a
///   SYN whose 5-tuple is recorded, during a SYN flood); a new flow over the insert
///   rate limit unrecorded (`fwd_flood`).
fn judge(p: &Plane, f: &[u8]) -> Judged {
    use Reason::*;
    let ip = match parse(f) {
        Ok(ip) => ip,
        Err(r) => return Judged::only(r),
    };
    let here: Vec<usize> = (0..p.vips.len())
        .filter(|&i| p.vips[i].vip.addr == ip.dst)
        .collect();
    if here.is_empty() {
        if !p.nat || ip.fragment {
            return Judged::only(PassNotVip);
        }
        if ip.proto == icmp_proto(&ip) && quotes_ports(f, &ip) {
            return Judged::any(&[PassNotVip, FwdNatIcmp, DropNatExpired]);
        }
        if (ip.proto == TCP || ip.proto == UDP)
            && p.is_nat_backend(ip.src)
            && transport(f, &ip).is_some()
        {
            return Judged::any(&[PassNotVip, FwdNatReply, DropNatExpired]);
        }
        return Judged::only(PassNotVip);
    }
    if ip.fragment {
        return Judged::only(DropFragment);
    }
    if ip.v6 && is_ext(ip.proto) {
        return Judged::only(PassIpv6ExtHdr);
    }
    if ip.proto != TCP && ip.proto != UDP {
        if let Some(j) = icmp_about_flow(p, f, &ip) {
            return j;
        }
        if p.nat && ip.proto == icmp_proto(&ip) && quotes_ports(f, &ip) {
            return Judged::any(&[PassNotVip, FwdNatIcmp]);
        }
        return Judged::only(PassNotVip);
    }
    let Some((sport, dport)) = transport(f, &ip) else {
        return Judged::only(DropMalformed);
    };
    let proto = if ip.proto == TCP {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let find = |port: u16| {
        here.iter()
            .copied()
            .find(|&i| p.vips[i].vip.proto == proto && p.vips[i].vip.port == port)
    };
    let Some(vip) = find(dport).or_else(|| find(0)) else {
        return Judged::only(PassNotVip);
    };
    let def = &p.vips[vip];
    // A TCP SYN (SYN set, ACK clear) is never recorded in the flow table
    // (a nat or fullnat SYN's translation waits in NAT_SYN), and in dsr and
    // tunnel mode not looked up there during a SYN flood (over
    // `new_flow_rate` SYNs this second on the CPU: the fuzzer's rate is
    // 100, so either may hold); any other new flow is recorded, unless over
    // the insert rate limit.
    let syn = ip.proto == TCP && f[ip.l4 + 13] & (SYN | ACK) == SYN;
    let allowed = if def.backends.is_empty() {
        vec![DropNoBackend]
    } else if def.backends.iter().all(|b| b.nexthop.is_none()) {
        vec![DropNoNexthop]
    } else if syn && def.mode == Mode::FullNat {
        vec![FwdSyn, FwdEstablished, DropNatNoPort]
    } else if syn {
        vec![FwdSyn, FwdEstablished]
    } else if def.mode == Mode::FullNat {
        vec![FwdNewFlow, FwdEstablished, FwdFlood, DropNatNoPort]
    } else {
        vec![FwdNewFlow, FwdEstablished, FwdFlood]
    };
    Judged {
        allowed,
        vip: Some(vip),
        key: Some(flow_key(&ip, sport, dport)),
        icmp_vip: None,
    }
}

/// The verdicts a reason permits, from its name (`pass_*`, `drop_*`,
/// `fwd_*`, `aborted`), so that a reason added later needs no change
/// here (and is allowed nowhere until the oracle says where).
fn action_of(r: Reason) -> &'static str {
    let name = r.name();
    if name.starts_with("pass_") {
        "pass"
    } else if name.starts_with("drop_") {
        "drop"
    } else if name.starts_with("fwd_") {
        "tx|redirect"
    } else {
        "aborted"
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        _ => "unknown",
    }
}

/// The verdicts `allowed` permits, as written in packets.txt.
fn actions(allowed: &[Reason]) -> String {
    let mut a: Vec<&str> = allowed
        .iter()
        .flat_map(|r| action_of(*r).split('|'))
        .collect();
    a.sort_unstable();
    a.dedup();
    a.join("|")
}

// ---------------------------------------------------------------------------
// Checking one run.

/// What a frame did.
struct Ran {
    /// `None` when the kernel refused the frame.
    action: Option<u32>,
    out: Vec<u8>,
}

/// A failed invariant, with the verdicts the oracle allowed.
#[derive(Debug)]
struct Failure {
    msg: String,
    allowed: String,
}

fn fail<T>(allowed: &str, msg: String) -> Result<T, Failure> {
    Err(Failure {
        msg,
        allowed: allowed.into(),
    })
}

/// Every byte that differs between `a` and `b` lies in one of `ok`.
fn only_changed(a: &[u8], b: &[u8], ok: &[Range<usize>]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("length {} became {}", a.len(), b.len()));
    }
    for i in 0..a.len() {
        if a[i] != b[i] && !ok.iter().any(|r| r.contains(&i)) {
            return Err(format!(
                "byte {i} changed ({:#04x} -> {:#04x}) outside the fields this mode rewrites",
                a[i], b[i]
            ));
        }
    }
    Ok(())
}

/// The output's checksums verify wherever the input's did; with the same
/// layout (NAT and ICMP translation keep lengths and offsets).
fn checksums_kept(input: &[u8], ip_in: &Ip, out: &[u8], ip_out: &Ip) -> Result<(), String> {
    if !ip_in.v6 && ipv4_header_ok(input, ip_in.l3) && !ipv4_header_ok(out, ip_out.l3) {
        return Err("the IPv4 header checksum verified in the input, not in the output".into());
    }
    if l4_checksum_ok(input, ip_in) == Some(true) && l4_checksum_ok(out, ip_out) != Some(true) {
        return Err(format!(
            "the protocol {} checksum verified in the input, not in the output",
            ip_in.proto
        ));
    }
    if !ip_in.v6
        && ip_in.proto == UDP
        && ip_in.l4 + 8 <= ip_in.end
        && input[ip_in.l4 + 6..ip_in.l4 + 8] == [0, 0]
        && out[ip_out.l4 + 6..ip_out.l4 + 8] != [0, 0]
    {
        return Err("an IPv4 UDP datagram without a checksum (0) got one".into());
    }
    Ok(())
}

fn addr_ranges(ip: &Ip) -> (Range<usize>, Range<usize>) {
    if ip.v6 {
        (ip.l3 + 8..ip.l3 + 24, ip.l3 + 24..ip.l3 + 40)
    } else {
        (ip.l3 + 12..ip.l3 + 16, ip.l3 + 16..ip.l3 + 20)
    }
}

fn l4_csum_range(ip: &Ip) -> Range<usize> {
    let at = match ip.proto {
        UDP => 6,
        TCP => 16,
        _ => 2,
    };
    ip.l4 + at..ip.l4 + at + 2
}

fn in_prefix(a: IpAddr, base: &str, len: u8) -> bool {
    let base: IpAddr = base.parse().expect("literal");
    let (a, b) = (octets(a), octets(base));
    let bits = usize::from(len);
    a.len() == b.len()
        && (0..bits).all(|i| (a[i / 8] >> (7 - i % 8)) & 1 == (b[i / 8] >> (7 - i % 8)) & 1)
}

/// A frame through `p`, against every invariant. `stats` counts verdicts.
fn check(
    h: &Harness,
    p: &Plane,
    frame: &[u8],
    stats: &RefCell<BTreeMap<String, u64>>,
) -> Result<Ran, Failure> {
    let tally = |k: String| *stats.borrow_mut().entry(k).or_default() += 1;
    let before = p.counters.take().unwrap_or_else(|| snapshot(&p.dp));
    let result = run(p.dp.program_ref(), frame);
    let after = snapshot(&p.dp);
    let changed = diff(&before, &after);
    p.counters.replace(Some(after));

    // Refused by the kernel: expected exactly for the sizes it cannot take.
    let refusable = frame.len() < 14 || frame.len() > h.max_frame;
    let (action, out) = match result {
        Err(ProgramError::SyscallError(e)) if refusable => {
            let code = e.io_error.raw_os_error();
            let want = if frame.len() < 14 {
                libc::EINVAL
            } else {
                libc::ENOMEM
            };
            if code != Some(want) {
                return fail(
                    "refused",
                    format!("refused with {e}, expected errno {want}"),
                );
            }
            if !changed.is_empty() {
                return fail(
                    "refused",
                    format!("a refused frame moved counters: {changed:?}"),
                );
            }
            tally("refused by the kernel".into());
            return Ok(Ran {
                action: None,
                out: Vec::new(),
            });
        }
        Err(e) => {
            return fail(
                "refused",
                format!(
                    "BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}",
                    frame.len()
                ),
            );
        }
        Ok(_) if refusable => {
            return fail(
                "refused",
                format!(
                    "the kernel took a {}-byte frame (expected a refusal)",
                    frame.len()
                ),
            );
        }
        Ok(r) => r,
    };

    let view = &frame[..frame.len().min(h.linear)];
    if let Some(r) = check_fragment(p, frame, view, action, &out, &changed) {
        if let Ok(ran) = &r {
            let name = changed
                .keys()
                .find(|k| k.starts_with("reason.") && k.ends_with(".packets"))
                .map(|k| k["reason.".len()..k.len() - ".packets".len()].to_string())
                .unwrap_or_default();
            tally(format!(
                "{:<17} {name}",
                action_name(ran.action.unwrap_or(0))
            ));
        }
        return r;
    }
    let j = judge(p, view);
    let allowed = actions(&j.allowed);
    let fail = |msg: String| fail::<Ran>(&allowed, msg);

    // 4. exactly one reason, by one packet and the bytes the program saw.
    let moved: Vec<(&String, &u64)> = changed
        .iter()
        .filter(|(k, _)| k.starts_with("reason.") && k.ends_with(".packets"))
        .collect();
    let [(name, n)] = moved.as_slice() else {
        return fail(format!(
            "{} reason counters moved (exactly one must): {changed:?}",
            moved.len()
        ));
    };
    let name = &name["reason.".len()..name.len() - ".packets".len()];
    let Some(reason) = Reason::ALL.iter().copied().find(|r| r.name() == name) else {
        return fail(format!("unknown reason {name}"));
    };
    if **n != 1 {
        return fail(format!("reason {name} moved by {n} packets"));
    }

    // 1. the verdict.
    if !j.allowed.contains(&reason) {
        return fail(format!(
            "verdict {} for reason {name}; the design allows {:?}",
            action_name(action),
            j.allowed
        ));
    }
    if !action_of(reason)
        .split('|')
        .any(|a| a == action_name(action))
    {
        return fail(format!(
            "reason {name} came with verdict {}",
            action_name(action)
        ));
    }
    tally(format!("{:<17} {name}", action_name(action)));

    // 3. passed or dropped: untouched.
    let forwarded = action == XDP_TX || action == XDP_REDIRECT;
    if !forwarded && out != frame {
        return fail(format!(
            "{name}: a frame not forwarded must leave unchanged; it became\n{}",
            hex(&out)
        ));
    }

    // 2. forwarded: the output, by what sent it.
    let vip = j.vip.map(|i| &p.vips[i]);
    let mut backend = None;
    if forwarded {
        let ip_in = parse(view).expect("the oracle forwards only parsed frames");
        let ip_out = match parse(&out) {
            Ok(ip) => ip,
            Err(r) => return fail(format!("the output does not parse ({r:?}):\n{}", hex(&out))),
        };
        let r = match (reason, vip) {
            (
                Reason::FwdNewFlow | Reason::FwdEstablished | Reason::FwdSyn | Reason::FwdFlood,
                Some(v),
            ) => forwarded_to_backend(v, frame, &ip_in, &out, &ip_out, action).map(|b| {
                backend = Some(b);
            }),
            (Reason::FwdNatReply, _) => nat_reply(p, frame, &ip_in, &out, &ip_out),
            (Reason::FwdNatIcmp, _) => nat_icmp(frame, &ip_in, &out, &ip_out),
            (Reason::FwdIcmpFlow | Reason::FwdIcmpMaglev, _) => match (j.icmp_vip, j.key) {
                (Some(i), Some(key)) => {
                    let v = &p.vips[i];
                    forwarded_to_backend(v, frame, &ip_in, &out, &ip_out, action)
                        .and_then(|b| icmp_backend_is_the_flows(p, v, &key, reason, b))
                }
                _ => Err(format!("{name} for no dsr or tunnel flow")),
            },
            _ => Err(format!("{name} forwarded without a VIP")),
        };
        if let Err(e) = r {
            return fail(format!("{name}: {e}\n output:\n{}", hex(&out)));
        }
    }
    if let (Some(key), Some(v)) = (j.key, vip) {
        let maglev = p.dp.maglev_backend(&v.vip, &key);
        // Nothing changes a table while the fuzzer runs: a new flow, a SYN
        // and a flow over the rate limit all go where the table says.
        if matches!(
            reason,
            Reason::FwdNewFlow | Reason::FwdSyn | Reason::FwdFlood
        ) && backend != maglev
        {
            return fail(format!(
                "a new flow went to {backend:?}; Maglev gives {maglev:?}"
            ));
        }
    }

    // 4. every other counter, as the reason says (fullnat without a free
    // port: the VIP's packets only; the NAT program dropped it before
    // crediting the backend or a new flow).
    let want = expected_deltas(view.len(), reason, vip.map(|v| v.vip), backend);
    if changed != want {
        return fail(format!("counter changes {changed:?}\n expected {want:?}"));
    }
    Ok(Ran {
        action: Some(action),
        out,
    })
}

/// A VIP's packet as forwarded by its mode; returns the backend.
fn forwarded_to_backend(
    v: &VipDef,
    input: &[u8],
    ip_in: &Ip,
    out: &[u8],
    ip_out: &Ip,
    action: u32,
) -> Result<IpAddr, String> {
    let b = v
        .backends
        .iter()
        .find(|b| b.nexthop.is_some_and(|n| out[..6] == n.dmac))
        .ok_or_else(|| {
            format!(
                "destination MAC {:02x?} is no backend's of {}",
                &out[..6],
                v.vip
            )
        })?;
    let nh = b.nexthop.expect("found by its next hop");
    if out[6..12] != nh.smac {
        return Err("the source MAC is not the next hop's".into());
    }
    let want = if nh.ifindex == 0 {
        XDP_TX
    } else {
        XDP_REDIRECT
    };
    if action != want {
        return Err(format!(
            "verdict {} for a backend whose next hop is ifindex {}",
            action_name(action),
            nh.ifindex
        ));
    }
    match v.mode {
        Mode::Dsr => {
            if out[12..] != input[12..] {
                return Err("dsr changed more than the MACs".into());
            }
        }
        Mode::Tunnel => tunnelled(b.addr, input, ip_in, out, ip_out)?,
        Mode::Nat | Mode::FullNat => {
            if ip_out.dst != b.addr {
                return Err(format!("destination {} is not the backend", ip_out.dst));
            }
            let (sport, dport) =
                transport(out, ip_out).ok_or("the output's TCP/UDP header is broken")?;
            let (sport_in, dport_in) = (be16(input, ip_in.l4), be16(input, ip_in.l4 + 2));
            let bport = if b.port != 0 { b.port } else { dport_in };
            if dport != bport {
                return Err(format!("destination port {dport}, backend's is {bport}"));
            }
            let (src, dst) = addr_ranges(ip_in);
            let mut ok = vec![0..12, dst, ip_in.l4 + 2..ip_in.l4 + 4, l4_csum_range(ip_in)];
            if !ip_in.v6 {
                ok.push(ip_in.l3 + 10..ip_in.l3 + 12);
            }
            if v.mode == Mode::FullNat {
                let snat: IpAddr = if ip_in.v6 { FULLNAT_SRC6 } else { FULLNAT_SRC4 }
                    .parse()
                    .expect("literal");
                if ip_out.src != snat {
                    return Err(format!("fullnat source {} is not {snat}", ip_out.src));
                }
                ok.push(src);
                ok.push(ip_in.l4..ip_in.l4 + 2);
                if !(40000..40000 + FULLNAT_PORTS_PER_CPU).contains(&sport) {
                    return Err(format!(
                        "fullnat source port {sport} is not in CPU 0's range"
                    ));
                }
            } else if ip_out.src != ip_in.src || sport != sport_in {
                return Err("nat changed the source".into());
            }
            only_changed(input, out, &ok)?;
            checksums_kept(input, ip_in, out, ip_out)?;
        }
    }
    Ok(b.addr)
}

/// Tunnel mode: MACs, the tag kept, an outer header to the backend, then
/// the input's IP packet byte for byte.
fn tunnelled(to: IpAddr, input: &[u8], ip_in: &Ip, out: &[u8], ip_out: &Ip) -> Result<(), String> {
    let grow = if ip_in.v6 { 40 } else { 20 };
    if out.len() != input.len() + grow {
        return Err(format!(
            "grew by {}, not {grow}",
            out.len() as isize - input.len() as isize
        ));
    }
    if ip_out.l3 != ip_in.l3 || out[12..ip_in.l3 - 2] != input[12..ip_in.l3 - 2] {
        return Err("the VLAN tag was not kept".into());
    }
    if out[ip_in.l3 + grow..] != input[ip_in.l3..] {
        return Err("the inner packet is not the input's".into());
    }
    if ip_out.dst != to {
        return Err(format!(
            "outer destination {} is not the backend",
            ip_out.dst
        ));
    }
    let o = &out[ip_out.l3..];
    let inner_len = ip_in.end - ip_in.l3;
    if ip_in.v6 {
        let prefix = TUNNEL_SRC6;
        if ip_out.proto != 41
            || be16(o, 4) as usize != inner_len
            || !in_prefix(ip_out.src, prefix.0, prefix.1)
        {
            return Err(
                "the outer IPv6 header is wrong (next header 41, length, source prefix)".into(),
            );
        }
    } else {
        let prefix = TUNNEL_SRC4;
        if o[0] != 0x45
            || ip_out.proto != 4
            || be16(o, 2) as usize != inner_len + 20
            || ip_out.fragment
            || !in_prefix(ip_out.src, prefix.0, prefix.1)
        {
            return Err(
                "the outer IPv4 header is wrong (IHL 5, protocol 4, length, source prefix)".into(),
            );
        }
        if !ipv4_header_ok(out, ip_out.l3) {
            return Err("the outer IPv4 checksum does not verify".into());
        }
    }
    // The inner packet parses where the outer one says it is.
    let et = if ip_in.v6 { 0x86dd } else { 0x0800 };
    parse_ip(&out[..ip_out.end], ip_out.l4, et)
        .map(|_| ())
        .map_err(|r| format!("the inner packet does not parse ({r:?})"))
}

/// A NAT backend's reply, translated back: from a NAT VIP, only addresses,
/// ports, MACs and checksums changed, checksums kept.
fn nat_reply(p: &Plane, input: &[u8], ip_in: &Ip, out: &[u8], ip_out: &Ip) -> Result<(), String> {
    let (sport, _) = transport(out, ip_out).ok_or("the output's TCP/UDP header is broken")?;
    let proto = if ip_out.proto == TCP {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    if !p.vips.iter().any(|v| {
        matches!(v.mode, Mode::Nat | Mode::FullNat)
            && v.vip.addr == ip_out.src
            && v.vip.proto == proto
            && (v.vip.port == sport || v.vip.port == 0)
    }) {
        return Err(format!(
            "the reply comes from {}:{sport}, no NAT VIP",
            ip_out.src
        ));
    }
    let (src, dst) = addr_ranges(ip_in);
    let mut ok = vec![0..12, src, ip_in.l4..ip_in.l4 + 4, l4_csum_range(ip_in)];
    if !ip_in.v6 {
        ok.push(ip_in.l3 + 10..ip_in.l3 + 12);
    }
    if ip_out.dst != ip_in.dst {
        let snat: IpAddr = if ip_in.v6 { FULLNAT_SRC6 } else { FULLNAT_SRC4 }
            .parse()
            .expect("literal");
        if ip_in.dst != snat {
            return Err(format!(
                "the destination of a reply to {} changed",
                ip_in.dst
            ));
        }
        ok.push(dst);
    }
    only_changed(input, out, &ok)?;
    checksums_kept(input, ip_in, out, ip_out)
}

/// An ICMP error about a NAT flow, translated with the packet it quotes:
/// only addresses, quoted ports, MACs and checksums changed; the outer
/// IPv4, ICMP and quoted IPv4 header checksums kept.
fn nat_icmp(input: &[u8], ip_in: &Ip, out: &[u8], ip_out: &Ip) -> Result<(), String> {
    let q3 = ip_in.l4 + 8;
    let (qsrc, qdst, q4) = if ip_in.v6 {
        (q3 + 8..q3 + 24, q3 + 24..q3 + 40, q3 + 40)
    } else {
        let qhl = usize::from(input[q3] & 0x0f) * 4;
        (q3 + 12..q3 + 16, q3 + 16..q3 + 20, q3 + qhl)
    };
    let (src, dst) = addr_ranges(ip_in);
    let mut ok = vec![
        0..12,
        src,
        dst,
        ip_in.l4 + 2..ip_in.l4 + 4,
        qsrc,
        qdst,
        q4..q4 + 4,
    ];
    if !ip_in.v6 {
        ok.push(ip_in.l3 + 10..ip_in.l3 + 12);
        ok.push(q3 + 10..q3 + 12);
    }
    only_changed(input, out, &ok)?;
    checksums_kept(input, ip_in, out, ip_out)?;
    if !ip_in.v6 && q3 + 20 <= input.len() && ipv4_header_ok(input, q3) && !ipv4_header_ok(out, q3)
    {
        return Err(
            "the quoted IPv4 header's checksum verified in the input, not in the output".into(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Building frames.

/// Where a mutation may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Eth,
    Tags,
    Ip,
    /// IPv4 options or IPv6 extension headers.
    Options,
    L4,
    /// The packet an ICMP error quotes.
    Quoted,
    Anywhere,
}

/// Sizes worth trying: small, MTU, around the linear part, jumbo, around
/// the largest frame the kernel takes.
#[derive(Clone, Copy, Debug)]
enum Size {
    Payload(u16),
    Mtu,
    Linear,
    AboveLinear(u16),
    Jumbo,
    Largest,
    TooLarge,
}

#[derive(Clone, Debug)]
struct Shape {
    /// (TPID, TCI) of each tag, outermost first.
    tags: Vec<(u16, u16)>,
    /// IPv4 options (any bytes; a multiple of 4 long).
    options: Vec<u8>,
    /// IPv6 extension headers: (type, length in 8-octet units after the first 8).
    ext: Vec<(u8, u8)>,
    /// IPv4 flags and fragment offset.
    frag: u16,
    tos: u8,
    size: Size,
    /// Bytes after the datagram (Ethernet padding, or more).
    trailer: u16,
    /// IPv4 UDP without a checksum.
    udp_no_checksum: bool,
    seed: u8,
}

impl Shape {
    fn plain() -> Self {
        Shape {
            tags: Vec::new(),
            options: Vec::new(),
            ext: Vec::new(),
            frag: 0x4000,
            tos: 0,
            size: Size::Payload(0),
            trailer: 0,
            udp_no_checksum: false,
            seed: 0,
        }
    }
}

/// What the transport layer carries.
#[derive(Clone, Debug)]
enum Body {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// An ICMP error quoting `quoted` (an IP packet, cut already).
    IcmpError {
        kind: u8,
        code: u8,
        quoted: Vec<u8>,
    },
    /// Any protocol, the payload bytes only.
    Raw {
        proto: u8,
    },
}

struct Built {
    frame: Vec<u8>,
    regions: Vec<(Region, Range<usize>)>,
    l3: usize,
    v6: bool,
    /// Offset of the transport header and its protocol.
    l4: usize,
    proto: u8,
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn payload_len(size: Size, headers: usize, h: &Limits) -> usize {
    let frame = match size {
        Size::Payload(n) => return usize::from(n),
        Size::Mtu => 1514,
        Size::Linear => h.linear,
        Size::AboveLinear(n) => h.linear + usize::from(n),
        Size::Jumbo => 9014,
        Size::Largest => h.max_frame,
        Size::TooLarge => h.max_frame + 1,
    };
    frame.saturating_sub(headers)
}

/// The sizes strategies and builders need (copied out of the harness).
#[derive(Clone, Copy, Debug)]
struct Limits {
    linear: usize,
    max_frame: usize,
}

fn build(
    lim: &Limits,
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    dst: IpAddr,
    body: &Body,
    shape: &Shape,
) -> Built {
    let v6 = src.is_ipv6();
    let mut f = Vec::new();
    let mut regions = Vec::new();
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    for (tpid, tci) in &shape.tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    regions.push((Region::Tags, 12..f.len()));
    f.extend_from_slice(&if v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
    regions.push((Region::Eth, 0..f.len()));
    let l3 = f.len();

    let proto = match body {
        Body::Tcp { .. } => TCP,
        Body::Udp { .. } => UDP,
        Body::IcmpError { .. } => {
            if v6 {
                ICMPV6
            } else {
                ICMP
            }
        }
        Body::Raw { proto } => *proto,
    };
    // The transport header (checksum later) and its payload.
    let mut l4 = match body {
        Body::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = *flags;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        Body::Udp { sport, dport } => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h
        }
        Body::IcmpError { kind, code, quoted } => {
            let mut h = vec![*kind, *code, 0, 0, 0, 0, 0x05, 0xdc];
            h.extend_from_slice(quoted);
            h
        }
        Body::Raw { .. } => Vec::new(),
    };
    let l4_hdr = l4.len();
    let options = if v6 { 0 } else { shape.options.len() / 4 * 4 };
    let ext_len: usize = if v6 {
        shape.ext.iter().map(|(t, n)| ext_size(*t, *n)).sum()
    } else {
        0
    };
    let headers =
        l3 + if v6 { 40 + ext_len } else { 20 + options } + l4_hdr + usize::from(shape.trailer);
    let n = payload_len(shape.size, headers, lim).min(0xffff - l4_hdr - ext_len - 60);
    l4.extend(pattern(shape.seed, n));
    if let Body::Udp { .. } = body {
        let len = l4.len() as u16;
        l4[4..6].copy_from_slice(&len.to_be_bytes());
    }

    let (sa, da) = (octets(src), octets(dst));
    if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60 | (shape.tos >> 4);
        h[1] = shape.tos << 4;
        h[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
        h[6] = shape.ext.first().map_or(proto, |e| e.0);
        h[7] = 64;
        h[8..24].copy_from_slice(&sa);
        h[24..40].copy_from_slice(&da);
        f.extend_from_slice(&h);
        regions.push((Region::Ip, l3..f.len()));
        for (i, (t, units)) in shape.ext.iter().enumerate() {
            let next = shape.ext.get(i + 1).map_or(proto, |e| e.0);
            let size = ext_size(*t, *units);
            let mut e = vec![0u8; size];
            e[0] = next;
            e[1] = match *t {
                44 => 0,
                51 => (size / 4 - 2) as u8,
                _ => (size / 8 - 1) as u8,
            };
            if *t == 0 || *t == 60 {
                // One PadN option filling the rest.
                e[2] = 1;
                e[3] = (size - 4) as u8;
            }
            f.extend_from_slice(&e);
        }
        regions.push((Region::Options, l3 + 40..f.len()));
    } else {
        let hl = 20 + options;
        let mut h = vec![0u8; hl];
        h[0] = 0x40 | (hl / 4) as u8;
        h[1] = shape.tos;
        h[2..4].copy_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6..8].copy_from_slice(&shape.frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&sa);
        h[16..20].copy_from_slice(&da);
        h[20..].copy_from_slice(&shape.options[..options]);
        let c = fold(sum16(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        regions.push((Region::Ip, l3..l3 + 20));
        regions.push((Region::Options, l3 + 20..f.len()));
    }
    let at = f.len();
    f.extend_from_slice(&l4);
    regions.push((Region::L4, at..at + l4_hdr.min(20)));
    if let Body::IcmpError { quoted, .. } = body {
        regions.push((Region::Quoted, at + 8..at + 8 + quoted.len()));
    }
    let mut b = Built {
        frame: f,
        regions,
        l3,
        v6,
        l4: at,
        proto,
    };
    let mut frame = std::mem::take(&mut b.frame);
    refresh_checksums(&mut frame, &b);
    b.frame = frame;
    if shape.udp_no_checksum && !v6 && proto == UDP && b.frame.len() >= at + 8 {
        b.frame[at + 6..at + 8].copy_from_slice(&[0, 0]);
    }
    b.frame.extend(pattern(
        shape.seed.wrapping_add(1),
        usize::from(shape.trailer),
    ));
    b.regions.push((Region::Anywhere, 0..b.frame.len()));
    b
}

fn ext_size(t: u8, units: u8) -> usize {
    match t {
        44 => 8,
        51 => 8 + 8 * usize::from(units),
        _ => 8 * (1 + usize::from(units)),
    }
}

/// Recomputes the IPv4 header checksum and the transport checksum from
/// what the headers now say (as far as the frame holds them).
fn refresh_checksums(f: &mut [u8], b: &Built) {
    let l3 = b.l3;
    let end = if b.v6 {
        if f.len() < l3 + 40 {
            return;
        }
        (l3 + 40 + usize::from(be16(f, l3 + 4))).min(f.len())
    } else {
        if f.len() < l3 + 20 {
            return;
        }
        let hl = (usize::from(f[l3] & 0x0f) * 4).max(20);
        if l3 + hl <= f.len() {
            f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = fold(sum16(&f[l3..l3 + hl]));
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        (l3 + usize::from(be16(f, l3 + 2))).min(f.len())
    };
    let at = match b.proto {
        TCP => 16,
        UDP => 6,
        ICMP | ICMPV6 => 2,
        _ => return,
    };
    if end < b.l4 + at + 2 {
        return;
    }
    if !b.v6 && b.proto == UDP && f[b.l4 + 6..b.l4 + 8] == [0, 0] {
        return;
    }
    f[b.l4 + at..b.l4 + at + 2].copy_from_slice(&[0, 0]);
    let data = &f[b.l4..end];
    let (src, dst) = if b.v6 {
        (&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40])
    } else {
        (&f[l3 + 12..l3 + 16], &f[l3 + 16..l3 + 20])
    };
    let pseudo = sum16(src) + sum16(dst) + data.len() as u32 + u32::from(b.proto);
    let mut c = if b.proto == ICMP {
        fold(sum16(data))
    } else {
        fold(pseudo + sum16(data))
    };
    if b.proto == UDP && c == 0 {
        c = 0xffff;
    }
    f[b.l4 + at..b.l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A length written over the one the builder wrote.
#[derive(Clone, Copy, Debug)]
enum Len {
    Abs(u16),
    Rel(i16),
}

impl Len {
    fn apply(self, old: u16) -> u16 {
        match self {
            Len::Abs(v) => v,
            Len::Rel(d) => old.wrapping_add_signed(d),
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(Index),
    Byte {
        region: Region,
        at: Index,
        value: u8,
    },
    Ipv4TotalLength(Len),
    Ipv4Ihl(u8),
    Ipv6PayloadLength(Len),
    TcpDataOffset(u8),
    UdpLength(Len),
}

fn mutate(f: &mut Vec<u8>, b: &Built, m: &Mutation) {
    let set16 = |f: &mut Vec<u8>, at: usize, l: Len| {
        if at + 2 <= f.len() {
            let v = l.apply(be16(f, at));
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    };
    match m {
        Mutation::Truncate(i) => {
            let n = i.index(f.len() + 1);
            f.truncate(n);
        }
        Mutation::Byte { region, at, value } => {
            let r = b
                .regions
                .iter()
                .find(|(k, r)| k == region && !r.is_empty())
                .map_or(0..f.len(), |(_, r)| r.clone());
            let r = r.start.min(f.len())..r.end.min(f.len());
            if !r.is_empty() {
                let i = r.start + at.index(r.len());
                f[i] = *value;
            }
        }
        Mutation::Ipv4TotalLength(l) if !b.v6 => set16(f, b.l3 + 2, *l),
        Mutation::Ipv4Ihl(ihl) if !b.v6 && b.l3 < f.len() => {
            f[b.l3] = (f[b.l3] & 0xf0) | (ihl & 0x0f);
        }
        Mutation::Ipv6PayloadLength(l) if b.v6 => set16(f, b.l3 + 4, *l),
        Mutation::TcpDataOffset(d) if b.proto == TCP && b.l4 + 12 < f.len() => {
            f[b.l4 + 12] = (d << 4) | (f[b.l4 + 12] & 0x0f);
        }
        Mutation::UdpLength(l) if b.proto == UDP => set16(f, b.l4 + 4, *l),
        _ => {}
    }
}

/// What a case sends.
#[derive(Clone, Debug)]
enum Target {
    /// TCP or UDP to VIP `vip` of the plane (on its port; any port for an
    /// all-ports VIP).
    Vip { vip: Index, port: u16, flags: u8 },
    /// To a VIP's address, any protocol and port.
    VipAddress { vip: Index, proto: u8, port: u16 },
    /// To an address no VIP has.
    Elsewhere { v6: bool, proto: u8, port: u16 },
    /// NAT plane: a NAT flow's request, then (shaped and mutated) its
    /// backend's reply.
    Reply { vip: Index, request: u8, flags: u8 },
    /// NAT plane: a NAT flow's request, then an ICMP error about it: to the
    /// client, quoting the request as the backend got it (from the backend
    /// or a router), or to the VIP, quoting a reply as the client got it.
    Icmp {
        vip: Index,
        to_vip: bool,
        from_backend: bool,
        kind: Option<u8>,
        code: u8,
        quote: u8,
        quoted_options: u8,
    },
    /// An ICMP error from a router to a dsr or tunnel VIP, quoting the
    /// VIP's reply to a client (`keep` bytes after its IP header); first,
    /// when `flow`, a packet of that flow, so that the flow table has it.
    FlowIcmp {
        vip: Index,
        flow: bool,
        kind: Option<u8>,
        code: u8,
        keep: u8,
    },
    /// Random bytes, an Ethernet type perhaps forced.
    Noise {
        size: Size,
        ethertype: Option<u16>,
        seed: u8,
    },
}

#[derive(Clone, Debug)]
struct Case {
    nat_plane: bool,
    client: u8,
    sport: u16,
    target: Target,
    shape: Shape,
    mutations: Vec<Mutation>,
    /// Recompute the checksums after the mutations.
    fix: bool,
}

/// A case's frames: the NAT request that sets up its flow, if any, and the
/// frame judged.
struct Frames {
    plane: &'static str,
    prelude: Option<Vec<u8>>,
    frame: Vec<u8>,
}

fn client_addr(v6: bool, host: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, host))
    }
}

fn router_addr(v6: bool) -> IpAddr {
    if v6 {
        "2001:db8::fe".parse().expect("literal")
    } else {
        "198.18.0.254".parse().expect("literal")
    }
}

fn port_for(v: &VipDef, port: u16) -> u16 {
    if v.vip.port == 0 { port } else { v.vip.port }
}

fn body_for(v: &VipDef, sport: u16, port: u16, flags: u8) -> Body {
    let dport = port_for(v, port);
    match v.vip.proto {
        Proto::Tcp => Body::Tcp {
            sport,
            dport,
            flags,
        },
        Proto::Udp => Body::Udp { sport, dport },
    }
}

/// Runs a case: builds its frames (a NAT case runs its request first and
/// builds the reply or ICMP error from what came out), checks each.
fn run_case(
    h: &Harness,
    lim: &Limits,
    c: &Case,
    stats: &RefCell<BTreeMap<String, u64>>,
) -> Result<(), (Failure, Frames)> {
    let nat_case = matches!(c.target, Target::Reply { .. } | Target::Icmp { .. });
    let p = &h.planes[usize::from(c.nat_plane || nat_case)];
    let mut frames = Frames {
        plane: p.name,
        prelude: None,
        frame: Vec::new(),
    };
    let built = match &c.target {
        Target::Vip { vip, port, flags } => {
            let v = &p.vips[vip.index(p.vips.len())];
            let src = client_addr(v.vip.addr.is_ipv6(), c.client);
            let body = body_for(v, c.sport, *port, *flags);
            build(lim, (LB_MAC, CLIENT_MAC), src, v.vip.addr, &body, &c.shape)
        }
        Target::VipAddress { vip, proto, port } => {
            let v = &p.vips[vip.index(p.vips.len())];
            let src = client_addr(v.vip.addr.is_ipv6(), c.client);
            build(
                lim,
                (LB_MAC, CLIENT_MAC),
                src,
                v.vip.addr,
                &any_body(*proto, c.sport, *port),
                &c.shape,
            )
        }
        Target::Elsewhere { v6, proto, port } => {
            let dst = if *v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, c.sport))
            } else if c.client.is_multiple_of(8) {
                // 198.18.1.1's `VIP_FILTER` bit, so its `VIP_DIRECT4` slot,
                // which that VIP address owns: "not a VIP" from the slot.
                IpAddr::V4(Ipv4Addr::new(198, 19, 103, 13))
            } else {
                IpAddr::V4(Ipv4Addr::new(198, 18, 9, c.client))
            };
            // Sometimes from a NAT backend's address (a reply of no flow).
            let src = if c.sport.is_multiple_of(4) {
                if *v6 {
                    "2001:db8:4::1".parse().expect("literal")
                } else {
                    "198.18.4.1".parse().expect("literal")
                }
            } else {
                client_addr(*v6, c.client)
            };
            build(
                lim,
                (LB_MAC, CLIENT_MAC),
                src,
                dst,
                &any_body(*proto, c.sport, *port),
                &c.shape,
            )
        }
        Target::Reply { vip, request, .. }
        | Target::Icmp {
            vip,
            quote: request,
            ..
        } => {
            let nat = p.nat_vips();
            let v = &p.vips[nat[vip.index(nat.len())]];
            let v6 = v.vip.addr.is_ipv6();
            // A few clients and ports, so that flows are met again.
            let client = client_addr(v6, 1 + c.client % 2);
            let cport = 41000 + c.sport % 16;
            let flags = [SYN, ACK, SYN, FIN | ACK, RST][usize::from(*request) % 5];
            let req_body = body_for(v, cport, c.sport, flags);
            let req = build(
                lim,
                (LB_MAC, CLIENT_MAC),
                client,
                v.vip.addr,
                &req_body,
                &Shape::plain(),
            );
            frames.prelude = Some(req.frame.clone());
            let ran = check(h, p, &req.frame, stats).map_err(|f| {
                (
                    Failure {
                        msg: format!("the NAT request before the case: {}", f.msg),
                        allowed: f.allowed,
                    },
                    Frames {
                        plane: p.name,
                        prelude: None,
                        frame: req.frame.clone(),
                    },
                )
            })?;
            // What went to the backend (or, if it was dropped, a guess).
            let sent = if matches!(ran.action, Some(XDP_TX | XDP_REDIRECT)) {
                let ip = parse(&ran.out).expect("checked");
                let (s, d) = (be16(&ran.out, ip.l4), be16(&ran.out, ip.l4 + 2));
                (ip.src, s, ip.dst, d, ran.out[ip.l3..ip.end].to_vec())
            } else {
                let b = &v.backends[0];
                (client, cport, b.addr, port_for(v, c.sport), Vec::new())
            };
            let (from, from_port, to, to_port, sent_l3) = sent;
            let bmac = v.backends[0].nexthop.map_or([0; 6], |n| n.dmac);
            match &c.target {
                Target::Reply { flags, .. } => {
                    let body = match v.vip.proto {
                        Proto::Tcp => Body::Tcp {
                            sport: to_port,
                            dport: from_port,
                            flags: *flags,
                        },
                        Proto::Udp => Body::Udp {
                            sport: to_port,
                            dport: from_port,
                        },
                    };
                    build(lim, (LB_MAC, bmac), to, from, &body, &c.shape)
                }
                Target::Icmp {
                    to_vip,
                    from_backend,
                    kind,
                    code,
                    quote,
                    quoted_options,
                    ..
                } => {
                    let kind = kind.unwrap_or(if v6 {
                        1 + quote % 3
                    } else {
                        [3, 11][usize::from(quote % 2)]
                    });
                    let keep = usize::from(*quote % 41);
                    if *to_vip {
                        // A reply as the client got it: VIP → client.
                        let body = body_for(v, cport, c.sport, SYN | ACK);
                        let body = match body {
                            Body::Tcp {
                                sport,
                                dport,
                                flags,
                            } => Body::Tcp {
                                sport: dport,
                                dport: sport,
                                flags,
                            },
                            Body::Udp { sport, dport } => Body::Udp {
                                sport: dport,
                                dport: sport,
                            },
                            other => other,
                        };
                        let mut qs = Shape::plain();
                        qs.options = pattern(*quoted_options, usize::from(quoted_options % 11) * 4);
                        let q = build(lim, ([0; 6], [0; 6]), v.vip.addr, client, &body, &qs);
                        let quoted = cut_quote(&q.frame[q.l3..], q.l4 - q.l3, keep);
                        let body = Body::IcmpError {
                            kind,
                            code: *code,
                            quoted,
                        };
                        build(
                            lim,
                            (LB_MAC, CLIENT_MAC),
                            router_addr(v6),
                            v.vip.addr,
                            &body,
                            &c.shape,
                        )
                    } else {
                        // The request as the backend got it.
                        let hl = if sent_l3.is_empty() {
                            0
                        } else if v6 {
                            40
                        } else {
                            usize::from(sent_l3[0] & 0x0f) * 4
                        };
                        let quoted = cut_quote(&sent_l3, hl, keep);
                        let src = if *from_backend { to } else { router_addr(v6) };
                        let body = Body::IcmpError {
                            kind,
                            code: *code,
                            quoted,
                        };
                        build(lim, (LB_MAC, bmac), src, from, &body, &c.shape)
                    }
                }
                _ => unreachable!(),
            }
        }
        Target::FlowIcmp { .. } => flow_icmp(h, lim, p, c, stats, &mut frames)?,
        Target::Noise {
            size,
            ethertype,
            seed,
        } => {
            let n = payload_len(*size, 0, lim);
            let mut f = pattern(*seed, n);
            if let Some(et) = ethertype
                && f.len() >= 14
            {
                f[12..14].copy_from_slice(&et.to_be_bytes());
            }
            let len = f.len();
            Built {
                frame: f,
                regions: vec![(Region::Anywhere, 0..len)],
                l3: 14,
                v6: false,
                l4: 34,
                proto: 0,
            }
        }
    };
    let mut f = built.frame.clone();
    for m in &c.mutations {
        mutate(&mut f, &built, m);
    }
    if c.fix {
        refresh_checksums(&mut f, &built);
    }
    frames.frame = f;
    match check(h, p, &frames.frame, stats) {
        Ok(_) => Ok(()),
        Err(e) => Err((e, frames)),
    }
}

/// A `Target::FlowIcmp` case's error (and, first, its flow's packet, run
/// and checked as a case of its own).
fn flow_icmp(
    h: &Harness,
    lim: &Limits,
    p: &Plane,
    c: &Case,
    stats: &RefCell<BTreeMap<String, u64>>,
    frames: &mut Frames,
) -> Result<Built, (Failure, Frames)> {
    let Target::FlowIcmp {
        vip,
        flow,
        kind,
        code,
        keep,
    } = &c.target
    else {
        unreachable!("called for FlowIcmp only")
    };
    let ours: Vec<usize> = (0..p.vips.len())
        .filter(|&i| matches!(p.vips[i].mode, Mode::Dsr | Mode::Tunnel))
        .collect();
    let v = &p.vips[ours[vip.index(ours.len())]];
    let v6 = v.vip.addr.is_ipv6();
    let client = client_addr(v6, 1 + c.client % 2);
    let cport = 42000 + c.sport % 16;
    if *flow {
        let data = build(
            lim,
            (LB_MAC, CLIENT_MAC),
            client,
            v.vip.addr,
            &body_for(v, cport, c.sport, ACK),
            &Shape::plain(),
        );
        frames.prelude = Some(data.frame.clone());
        check(h, p, &data.frame, stats).map_err(|f| {
            (
                Failure {
                    msg: format!("the flow's packet before the case: {}", f.msg),
                    allowed: f.allowed,
                },
                Frames {
                    plane: p.name,
                    prelude: None,
                    frame: data.frame.clone(),
                },
            )
        })?;
    }
    // The VIP's reply: its port and the client's swapped.
    let body = match body_for(v, cport, c.sport, ACK) {
        Body::Tcp {
            sport,
            dport,
            flags,
        } => Body::Tcp {
            sport: dport,
            dport: sport,
            flags,
        },
        Body::Udp { sport, dport } => Body::Udp {
            sport: dport,
            dport: sport,
        },
        other => other,
    };
    let q = build(
        lim,
        ([0; 6], [0; 6]),
        v.vip.addr,
        client,
        &body,
        &Shape::plain(),
    );
    let quoted = cut_quote(&q.frame[q.l3..], q.l4 - q.l3, usize::from(*keep % 41));
    let kind = kind.unwrap_or(if v6 {
        1 + keep % 3
    } else {
        [3, 11][usize::from(keep % 2)]
    });
    let err = Body::IcmpError {
        kind,
        code: *code,
        quoted,
    };
    Ok(build(
        lim,
        (LB_MAC, CLIENT_MAC),
        router_addr(v6),
        v.vip.addr,
        &err,
        &c.shape,
    ))
}

/// The first `keep` bytes of a quoted packet's transport header and
/// payload after its `hl`-byte IP header (an ICMP error quotes at least 8).
fn cut_quote(l3: &[u8], hl: usize, keep: usize) -> Vec<u8> {
    l3[..(hl + keep).min(l3.len())].to_vec()
}

fn any_body(proto: u8, sport: u16, port: u16) -> Body {
    match proto {
        TCP => Body::Tcp {
            sport,
            dport: port,
            flags: SYN,
        },
        UDP => Body::Udp { sport, dport: port },
        _ => Body::Raw { proto },
    }
}

// ---------------------------------------------------------------------------
// Strategies.

/// Sizes are resolved against the kernel's limits when a frame is built.
fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        30 => (0u16..=80).prop_map(Size::Payload),
        3 => Just(Size::Mtu),
        2 => Just(Size::Linear),
        2 => (1u16..=64).prop_map(Size::AboveLinear),
        1 => Just(Size::Jumbo),
        1 => Just(Size::Largest),
        1 => Just(Size::TooLarge),
    ]
}

fn flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(SYN),
        4 => Just(ACK),
        1 => Just(SYN | ACK),
        1 => Just(FIN | ACK),
        1 => Just(RST),
        1 => any::<u8>(),
    ]
}

fn proto() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(TCP),
        3 => Just(UDP),
        2 => Just(ICMP),
        2 => Just(ICMPV6),
        1 => Just(47u8),
        1 => Just(132u8),
        1 => Just(59u8),
        1 => Just(0u8),
        1 => any::<u8>(),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let tag = (prop_oneof![Just(0x8100u16), Just(0x88a8)], any::<u16>());
    (
        prop_oneof![6 => Just(Vec::new()), 3 => vec(tag.clone(), 1..=1), 1 => vec(tag, 2..=3)],
        prop_oneof![
            6 => Just(Vec::new()),
            4 => (1usize..=10, any::<u8>()).prop_map(|(w, s)| {
                let mut o = pattern(s, w * 4);
                if s % 2 == 0 {
                    // Well-formed: NOPs and an end of list.
                    o.iter_mut().for_each(|b| *b = 1);
                    o[w * 4 - 1] = 0;
                }
                o
            }),
        ],
        prop_oneof![
            7 => Just(Vec::new()),
            3 => vec((proptest::sample::select(EXT_HEADERS.to_vec()), 0u8..=3), 1..=4),
        ],
        prop_oneof![
            12 => Just(0x4000u16),
            2 => Just(0u16),
            1 => Just(0x2000u16),
            1 => 1u16..0x2000,
            1 => any::<u16>(),
        ],
        any::<u8>(),
        size(),
        prop_oneof![16 => Just(0u16), 4 => 1u16..=64, 1 => Just(4000u16)],
        prop::bool::weighted(0.1),
        any::<u8>(),
    )
        .prop_map(
            |(tags, options, ext, frag, tos, size, trailer, udp_no_checksum, seed)| Shape {
                tags,
                options,
                ext,
                frag,
                tos,
                size,
                trailer,
                udp_no_checksum,
                seed,
            },
        )
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        any::<u16>().prop_map(Len::Abs),
        (-80i16..=80).prop_map(Len::Rel)
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let region = proptest::sample::select(vec![
        Region::Eth,
        Region::Tags,
        Region::Ip,
        Region::Options,
        Region::L4,
        Region::Quoted,
        Region::Anywhere,
    ]);
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::Truncate),
        6 => (region, any::<Index>(), any::<u8>())
            .prop_map(|(region, at, value)| Mutation::Byte { region, at, value }),
        2 => len().prop_map(Mutation::Ipv4TotalLength),
        2 => (0u8..16).prop_map(Mutation::Ipv4Ihl),
        2 => len().prop_map(Mutation::Ipv6PayloadLength),
        2 => (0u8..16).prop_map(Mutation::TcpDataOffset),
        1 => len().prop_map(Mutation::UdpLength),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        8 => (any::<Index>(), any::<u16>(), flags())
            .prop_map(|(vip, port, flags)| Target::Vip { vip, port, flags }),
        2 => (any::<Index>(), proto(), any::<u16>())
            .prop_map(|(vip, proto, port)| Target::VipAddress { vip, proto, port }),
        2 => (any::<bool>(), proto(), any::<u16>())
            .prop_map(|(v6, proto, port)| Target::Elsewhere { v6, proto, port }),
        3 => (any::<Index>(), any::<u8>(), flags())
            .prop_map(|(vip, request, flags)| Target::Reply { vip, request, flags }),
        3 => (
            any::<Index>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![4 => Just(None), 1 => any::<u8>().prop_map(Some)],
            prop_oneof![Just(3u8), Just(4u8), Just(0u8), any::<u8>()],
            any::<u8>(),
            prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        )
            .prop_map(|(vip, to_vip, from_backend, kind, code, quote, quoted_options)| {
                Target::Icmp {
                    vip,
                    to_vip,
                    from_backend,
                    kind,
                    code,
                    quote,
                    quoted_options,
                }
            }),
        3 => (
            any::<Index>(),
            any::<bool>(),
            prop_oneof![4 => Just(None), 1 => any::<u8>().prop_map(Some)],
            prop_oneof![Just(4u8), Just(0u8), any::<u8>()],
            prop_oneof![3 => Just(40u8), 1 => any::<u8>()],
        )
            .prop_map(|(vip, flow, kind, code, keep)| Target::FlowIcmp {
                vip,
                flow,
                kind,
                code,
                keep,
            }),
        2 => (
            size(),
            prop_oneof![
                1 => Just(None),
                1 => proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806])
                    .prop_map(Some),
            ],
            any::<u8>(),
        )
            .prop_map(|(size, ethertype, seed)| Target::Noise { size, ethertype, seed }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        1u8..=254,
        any::<u16>(),
        target(),
        shape(),
        prop_oneof![4 => Just(Vec::new()), 6 => vec(mutation(), 1..=3)],
        any::<bool>(),
    )
        .prop_map(
            |(nat_plane, client, sport, target, shape, mutations, fix)| Case {
                nat_plane,
                client,
                sport,
                target,
                shape,
                mutations,
                fix,
            },
        )
}

// ---------------------------------------------------------------------------
// Regression rows: `plane verdicts frame [prelude]`, hex.

fn parse_hex(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2),
        "odd-length hex in {PACKETS}: {s}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("hex {s}: {e}")))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn replay(h: &Harness, stats: &RefCell<BTreeMap<String, u64>>) -> usize {
    let text = fs::read_to_string(PACKETS).unwrap_or_else(|e| panic!("reading {PACKETS}: {e}"));
    let mut rows = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let where_ = format!("{PACKETS}:{}", n + 1);
        assert!(
            (3..=4).contains(&cols.len()),
            "{where_}: expected `plane verdicts frame-hex [prelude-hex]`"
        );
        let p = h
            .plane(cols[0])
            .unwrap_or_else(|| panic!("{where_}: no plane {}", cols[0]));
        if let Some(pre) = cols.get(3)
            && let Err(f) = check(h, p, &parse_hex(pre), stats)
        {
            panic!("{where_}: its prelude: {}", f.msg);
        }
        let frame = parse_hex(cols[2]);
        match check(h, p, &frame, stats) {
            Err(f) => panic!("{where_}: {}\n input:\n{}", f.msg, hex(&frame)),
            Ok(ran) => {
                let got = ran.action.map_or("refused", action_name);
                assert!(
                    cols[1].split('|').any(|a| a == got),
                    "{where_}: verdict {got}, the row says {}",
                    cols[1]
                );
            }
        }
        rows += 1;
    }
    rows
}

fn record(fr: &Frames, allowed: &str) {
    let mut row = format!("{} {} {}", fr.plane, allowed, to_hex(&fr.frame));
    if let Some(p) = &fr.prelude {
        row.push(' ');
        row.push_str(&to_hex(p));
    }
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(PACKETS)
        .unwrap_or_else(|e| panic!("opening {PACKETS}: {e}"));
    writeln!(file, "{row}").unwrap_or_else(|e| panic!("writing {PACKETS}: {e}"));
}

// ---------------------------------------------------------------------------

fn cases_from_env() -> u32 {
    match std::env::var("HOLA_FUZZ_CASES") {
        Err(_) => DEFAULT_CASES,
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            panic!("HOLA_FUZZ_CASES={s:?} is not a number of cases (e.g. HOLA_FUZZ_CASES=100000)")
        }),
    }
}

#[test]
fn fuzz_packets_through_the_kernel() {
    require_root();
    let cases = cases_from_env();
    assert!(
        fs::metadata(REGRESSIONS).is_ok_and(|m| m.is_dir()),
        "{REGRESSIONS} is missing (it is committed with the tests)"
    );
    // A namespace of this test's own: the redirect VIPs need an interface
    // nothing else uses, and BPF_PROG_TEST_RUN's ingress is its lo.
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    cmd(
        "ip",
        &[
            "link", "add", "hfz0", "type", "veth", "peer", "name", "hfz1",
        ],
    );
    cmd("ip", &["link", "set", "hfz0", "up"]);
    let redirect: u32 = cmd("ip", &["-o", "link", "show", "hfz0"])
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .expect("ifindex of hfz0");
    // One CPU: per-CPU flow tables and fullnat port ranges stay the same
    // from run to run, so that a replayed case meets the same state.
    pin_to_cpu0();
    let plain = load_plane("plain", false, redirect);
    let nat = load_plane("nat", true, redirect);
    let (linear, max_frame) = calibrate(&plain);
    println!(
        "fuzz: the kernel takes frames of 14..={max_frame} bytes; the program sees the first {linear}"
    );
    let h = Harness {
        planes: [plain, nat],
        linear,
        max_frame,
    };
    let lim = Limits { linear, max_frame };
    let stats = RefCell::new(BTreeMap::new());

    let replayed = replay(&h, &stats);
    println!("fuzz: {replayed} regression rows of {PACKETS} replayed");

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(SEEDS))),
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let started = Instant::now();
    let done = Cell::new(0u32);
    let every = (cases / 10).max(1);
    let result = runner.run(&case(), |c| {
        let n = done.get() + 1;
        done.set(n);
        if n.is_multiple_of(every) {
            eprintln!("fuzz: {n} runs, {:.1} s", started.elapsed().as_secs_f64());
        }
        run_case(&h, &lim, &c, &stats).map_err(|(f, _)| TestCaseError::fail(f.msg))
    });
    let elapsed = started.elapsed();
    let summary: String = stats
        .borrow()
        .iter()
        .map(|(k, v)| format!("  {v:>8}  {k}\n"))
        .collect();
    let frames: u64 = stats.borrow().values().sum();
    println!(
        "fuzz: {cases} cases ({} runs, shrinking included) in {:.1} s; verdicts of the {frames} \
         frames (a NAT case sends its flow's request first):\n{summary}",
        done.get(),
        elapsed.as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, c)) => {
            // Run the smallest failing case again to get its frames, and
            // keep them as a row replayed before every later run.
            let again = run_case(&h, &lim, &c, &stats);
            let detail = match &again {
                Err((f, fr)) => {
                    record(fr, &f.allowed);
                    format!(
                        "{}\n frame ({} plane):\n{}\n(recorded in {PACKETS})",
                        f.msg,
                        fr.plane,
                        hex(&fr.frame)
                    )
                }
                Ok(()) => "(it passed when run again: the failure depends on state)".into(),
            };
            panic!("fuzz case failed: {why}\n case: {c:#?}\n{detail}\n(seed saved in {SEEDS})");
        }
        Err(TestError::Abort(why)) => panic!("fuzzing aborted: {why}"),
    }
    if cases >= 2000 {
        let seen = |k: &str| {
            stats
                .borrow()
                .keys()
                .any(|s| s.ends_with(k) || s.starts_with(k))
        };
        for want in [
            "pass_not_ip",
            "pass_vlan_stack",
            "pass_not_vip",
            "pass_ipv6_ext_hdr",
            "drop_malformed",
            "drop_fragment",
            "drop_no_backend",
            "drop_no_nexthop",
            "fwd_new_flow",
            "fwd_established",
            "fwd_nat_reply",
            "fwd_nat_icmp",
            "fwd_icmp_flow",
            "fwd_icmp_maglev",
            "redirect",
            "refused by the kernel",
        ] {
            assert!(
                seen(want),
                "{cases} cases never reached {want}: the generator has lost coverage"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// QUIC connection-ID routing: its own plane and oracle.

/// Server ID → (backend, up) of the QUIC VIPs below.
fn quic_servers(v6: bool) -> Vec<(u16, BackendSpec)> {
    (1..=4u16)
        .map(|i| {
            let addr: IpAddr = if v6 {
                format!("2001:db8:2::6{i}").parse().expect("literal")
            } else {
                format!("198.18.2.6{i}").parse().expect("literal")
            };
            let spec = BackendSpec {
                addr,
                weight: 1,
                // Server ID 4's backend is down: its IDs fall back.
                up: i != 4,
                port: 0,
                nexthop: Some(Nexthop {
                    dmac: [0x02, 0, 0, 0, 0x0d + u8::from(v6), i as u8],
                    smac: LB_MAC,
                    ifindex: 0,
                }),
                server_id: i,
            };
            (i, spec)
        })
        .collect()
}

/// What the design says of a UDP payload to a `quic` VIP: a long header
/// is balanced as any packet (`None`); a short header whose ID names an up
/// backend goes there; anything else falls back, under its reason.
fn quic_expect(payload: &[u8], servers: &[(u16, BackendSpec)]) -> Option<Result<IpAddr, Reason>> {
    if payload.len() < 9 {
        return Some(Err(Reason::FwdQuicBadId));
    }
    if payload[0] & 0x80 != 0 {
        return None;
    }
    if payload[0] & 0x40 == 0 || payload[1] != 0x07 {
        return Some(Err(Reason::FwdQuicBadId));
    }
    let sid = u16::from_be_bytes([payload[2], payload[3]]);
    Some(match servers.iter().find(|(id, _)| *id == sid) {
        None => Err(Reason::FwdQuicUnknownId),
        Some((_, b)) if !b.up => Err(Reason::FwdQuicIdDown),
        Some((_, b)) => Ok(b.addr),
    })
}

/// One generated QUIC case: IPv6 or not, the client's address byte and
/// port, and the payload's shape.
#[derive(Clone, Debug)]
struct QuicCase {
    v6: bool,
    client: u8,
    sport: u16,
    first: u8,
    cid_first: u8,
    server_id: u16,
    len: usize,
}

fn quic_case() -> impl Strategy<Value = QuicCase> {
    (
        any::<bool>(),
        1u8..4,
        // Few enough flows (2 × 3 × 250) that the flow table never evicts
        // one the oracle remembers.
        prop_oneof![Just(40000u16), 40000u16..40008, 40000u16..40250],
        prop_oneof![
            3 => Just(0x41u8),
            1 => Just(0xc3u8),
            1 => any::<u8>()
        ],
        prop_oneof![4 => Just(0x07u8), 1 => any::<u8>()],
        prop_oneof![4 => 0u16..6, 1 => any::<u16>()],
        prop_oneof![1 => 0usize..12, 4 => 12usize..80],
    )
        .prop_map(
            |(v6, client, sport, first, cid_first, server_id, len)| QuicCase {
                v6,
                client,
                sport,
                first,
                cid_first,
                server_id,
                len,
            },
        )
}

/// The frame of a case: its payload starts with the header byte and the
/// ID's first octet and server ID, then a counting pattern.
fn quic_frame(c: &QuicCase) -> Vec<u8> {
    let mut payload = vec![c.first, c.cid_first];
    payload.extend_from_slice(&c.server_id.to_be_bytes());
    payload.extend((0..80u8).map(|i| i.wrapping_mul(7)));
    payload.truncate(c.len);
    let (src, dst) = if c.v6 {
        (format!("2001:db8::{}", c.client), "2001:db8:1::60")
    } else {
        (format!("198.18.0.{}", c.client), "198.18.1.60")
    };
    hola_tests::packet::Pkt::new(
        &src,
        dst,
        hola_tests::packet::L4::udp(c.sport, 443, &payload),
    )
    .bytes()
}

/// Runs one case and checks it against the oracle: the verdict and reason,
/// the backend (the ID's, the flow's recorded one, or Maglev's), the output
/// as the VIP's mode writes it, and every counter. `flows` is the oracle's
/// copy of the flow table.
fn quic_run(
    dp: &mut Dataplane,
    defs: &[VipDef; 2],
    c: &QuicCase,
    flows: &mut BTreeMap<(IpAddr, IpAddr, u16, u16), IpAddr>,
) -> Result<(), String> {
    let def = &defs[usize::from(c.v6)];
    let frame = quic_frame(c);
    let ip_in =
        parse(&frame).map_err(|r| format!("the generator built an unparsable frame: {r:?}"))?;
    let (sport, dport) = transport(&frame, &ip_in).ok_or("no transport header")?;
    let key = flow_key(&ip_in, sport, dport);
    // The flow table's key as the oracle keeps it.
    let fk = (ip_in.src, ip_in.dst, sport, dport);
    let servers = quic_servers(c.v6);
    let before = snapshot(dp);
    let (action, out) = run(dp.program().expect("program"), &frame)
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
    let changed = diff(&before, &snapshot(dp));
    let ip_out = parse(&out).map_err(|r| format!("the output does not parse ({r:?})"))?;
    let backend = forwarded_to_backend(def, &frame, &ip_in, &out, &ip_out, action)?;
    let maglev = dp.maglev_backend(&def.vip, &key);
    let known = flows.get(&fk).copied();
    let (reason, new_flow) = match quic_expect(&frame[ip_in.l4 + 8..], &servers) {
        Some(Ok(to)) => {
            if backend != to {
                return Err(format!("server ID routing sent it to {backend}, not {to}"));
            }
            (Reason::FwdQuicServerId, false)
        }
        other => {
            let reason = match (other, known) {
                (Some(Err(r)), _) => r,
                (_, Some(_)) => Reason::FwdEstablished,
                _ => Reason::FwdNewFlow,
            };
            let want = known.or(maglev);
            if Some(backend) != want {
                return Err(format!(
                    "balanced to {backend}; the flow or Maglev gives {want:?}"
                ));
            }
            flows.insert(fk, backend);
            (reason, known.is_none())
        }
    };
    let got_reason = Reason::ALL
        .iter()
        .find(|r| changed.get(&format!("reason.{}.packets", r.name())) == Some(&1));
    if got_reason != Some(&reason) {
        return Err(format!("reason {got_reason:?}, the design says {reason:?}"));
    }
    let base = if new_flow {
        Reason::FwdNewFlow
    } else {
        Reason::FwdEstablished
    };
    let mut want = expected_deltas(frame.len(), base, Some(def.vip), Some(backend));
    if reason != base {
        for what in ["packets", "bytes"] {
            let v = want
                .remove(&format!("reason.{}.{what}", base.name()))
                .expect("a forward counts its reason");
            want.insert(format!("reason.{}.{what}", reason.name()), v);
        }
    }
    if changed != want {
        return Err(format!("counter changes {changed:?}\n expected {want:?}"));
    }
    Ok(())
}

/// QUIC packets (long and short headers, known, unknown and down server
/// IDs, foreign first octets, datagrams too short for an ID, clients that
/// move) to a dsr IPv4 and a tunnel IPv6 `quic` VIP, judged by
/// `quic_expect`. `HOLA_FUZZ_CASES` cases, as the main fuzz test.
#[test]
fn fuzz_quic_packets_through_the_kernel() {
    require_root();
    let cases = cases_from_env();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        tunnel_src_v4: (TUNNEL_SRC4.0.parse().expect("literal"), TUNNEL_SRC4.1),
        tunnel_src_v6: (TUNNEL_SRC6.0.parse().expect("literal"), TUNNEL_SRC6.1),
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let def = |addr: &str, mode: Mode, v6: bool| VipDef {
        vip: VipAddr {
            addr: addr.parse().expect("literal"),
            port: 443,
            proto: Proto::Udp,
        },
        mode,
        backends: quic_servers(v6).into_iter().map(|(_, b)| b).collect(),
    };
    let defs = [
        def("198.18.1.60", Mode::Dsr, false),
        def("2001:db8:1::60", Mode::Tunnel, true),
    ];
    for d in &defs {
        dp.add_vip(VipSpec {
            vip: d.vip,
            mode: d.mode,
            src_hash: false,
            table_size: 1021,
            quic: true,
        })
        .expect("add VIP");
        dp.set_backends(&d.vip, &d.backends).expect("set backends");
    }
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let flows = RefCell::new(BTreeMap::new());
    let seen = RefCell::new(BTreeMap::<String, u64>::new());
    let dp = RefCell::new(dp);
    let started = Instant::now();
    let result = runner.run(&quic_case(), |c| {
        let r = quic_run(&mut dp.borrow_mut(), &defs, &c, &mut flows.borrow_mut());
        let kind = match quic_expect(
            &quic_frame(&c)[if c.v6 { 62 } else { 42 }..],
            &quic_servers(c.v6),
        ) {
            None => "long header".to_string(),
            Some(Ok(_)) => Reason::FwdQuicServerId.name().to_string(),
            Some(Err(r)) => r.name().to_string(),
        };
        *seen.borrow_mut().entry(kind).or_default() += 1;
        r.map_err(|e| TestCaseError::fail(format!("{c:?}: {e}")))
    });
    println!(
        "fuzz quic: {cases} cases in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        seen.borrow()
    );
    if let Err(e) = result {
        panic!("QUIC fuzz case failed: {e}");
    }
    if cases >= 1000 {
        for want in [
            "long header",
            "fwd_quic_server_id",
            "fwd_quic_unknown_id",
            "fwd_quic_id_down",
            "fwd_quic_bad_id",
        ] {
            assert!(
                seen.borrow().contains_key(want),
                "{cases} QUIC cases never reached {want}: the generator has lost coverage"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Fragments (issue 16 item 3): their own oracle, since a later fragment has
// no ports to judge by and where it goes depends on what came before it.

/// A fragment's place: (offset in 8-byte units, more to come, transport
/// protocol, where its data starts). `Err`: the IPv6 Fragment header does
/// not fit in the datagram.
fn frag_info(f: &[u8], ip: &Ip) -> Result<(u16, bool, u8, usize), Reason> {
    if ip.v6 {
        if ip.l4 + 8 > ip.end {
            return Err(Reason::DropMalformed);
        }
        let fo = be16(f, ip.l4 + 2);
        Ok((fo >> 3, fo & 1 != 0, f[ip.l4], ip.l4 + 8))
    } else {
        let fo = be16(f, ip.l3 + 6);
        Ok((fo & 0x1fff, fo & 0x2000 != 0, ip.proto, ip.l4))
    }
}

/// The oracle for a fragment (IPv4 with MF or an offset, IPv6 whose next
/// header is a Fragment header) to a VIP's address, or from a NAT backend
/// to anywhere else; `None` for any other frame (judged by `judge`).
///
/// - to a VIP's address, a first fragment (offset 0) is judged as a packet
///   (it may be malformed, not for a VIP, or forwarded as any flow's packet,
///   or as `fwd_fragment` when a later fragment of its datagram placed it);
///   a later fragment is forwarded after its datagram (`fwd_fragment`),
///   placed (`fwd_fragment_early`) only when its address has exactly one
///   VIP of its protocol, or dropped (`drop_fragment`, or for lack of a
///   backend or next hop);
/// - from a NAT backend, not to a VIP: passed, or translated back
///   (`fwd_nat_reply` for a first fragment, `fwd_fragment` for a later
///   one), or dropped as an expired reply or a Fragment header that does
///   not fit;
/// - passed or dropped: untouched; forwarded to a VIP's backend: to the
///   next hop of a backend of a VIP of that address and protocol, only its
///   MACs changed (dsr), wrapped in 20/40 bytes (tunnel), or the same size
///   with a valid IPv4 header checksum if the input's was (nat, fullnat),
///   and the counters of
///   that VIP and backend move as the reason says; a translated reply
///   comes from a NAT VIP's address, and only its reason counter moves.
fn check_fragment(
    p: &Plane,
    frame: &[u8],
    view: &[u8],
    action: u32,
    out: &[u8],
    changed: &BTreeMap<String, u64>,
) -> Option<Result<Ran, Failure>> {
    use Reason::*;
    let ip = parse(view).ok()?;
    if !(ip.fragment || (ip.v6 && ip.proto == 44)) {
        return None;
    }
    let to_vip = p.vips.iter().any(|v| v.vip.addr == ip.dst);
    let reply = !to_vip && p.nat && p.is_nat_backend(ip.src);
    if !to_vip && !reply {
        return None;
    }
    let info = frag_info(view, &ip);
    let allowed: Vec<Reason> = match (info, reply) {
        (Err(r), _) => vec![r],
        (Ok((0, ..)), true) => vec![PassNotVip, FwdNatReply, DropNatExpired],
        (Ok(_), true) => vec![PassNotVip, FwdFragment],
        (Ok((0, ..)), false) => vec![
            PassNotVip,
            PassIpv6ExtHdr,
            DropMalformed,
            DropNoBackend,
            DropNoNexthop,
            DropNatNoPort,
            FwdNewFlow,
            FwdEstablished,
            FwdSyn,
            FwdFlood,
            FwdFragment,
        ],
        (Ok((_, _, proto, _)), false) => {
            let want = if proto == TCP { Proto::Tcp } else { Proto::Udp };
            let one = (proto == TCP || proto == UDP)
                && p.vips
                    .iter()
                    .filter(|v| v.vip.addr == ip.dst && v.vip.proto == want)
                    .count()
                    == 1;
            if one {
                vec![
                    FwdFragment,
                    FwdFragmentEarly,
                    DropFragment,
                    DropNoBackend,
                    DropNoNexthop,
                ]
            } else {
                vec![FwdFragment, DropFragment]
            }
        }
    };
    let allowed_text = actions(&allowed);
    let fail = |msg: String| Some(fail::<Ran>(&allowed_text, msg));
    let moved: Vec<&String> = changed
        .keys()
        .filter(|k| k.starts_with("reason.") && k.ends_with(".packets"))
        .collect();
    let [name] = moved.as_slice() else {
        return fail(format!(
            "fragment: {} reason counters moved: {changed:?}",
            moved.len()
        ));
    };
    let name = &name["reason.".len()..name.len() - ".packets".len()];
    let reason = Reason::ALL.iter().copied().find(|r| r.name() == name)?;
    if !allowed.contains(&reason) {
        return fail(format!(
            "fragment: reason {name}; the design allows {allowed:?}"
        ));
    }
    if !action_of(reason)
        .split('|')
        .any(|a| a == action_name(action))
    {
        return fail(format!(
            "fragment: reason {name} came with verdict {}",
            action_name(action)
        ));
    }
    let ok = Some(Ok(Ran {
        action: Some(action),
        out: out.to_vec(),
    }));
    let forwarded = action == XDP_TX || action == XDP_REDIRECT;
    if !forwarded {
        if out != frame {
            return fail(format!("fragment {name}: not forwarded, yet changed"));
        }
        // Besides the reason's own counters, only a VIP's may move (its
        // packets count every packet once it is known; `no_backend`).
        let own = format!("reason.{name}.");
        if let Some(k) = changed
            .keys()
            .find(|k| !k.starts_with(&own) && !k.starts_with("vip."))
        {
            return fail(format!("fragment {name}: not forwarded, yet {k} moved"));
        }
        return ok;
    }
    let Ok(ip_out) = parse(out) else {
        return fail(format!(
            "fragment {name}: the output does not parse:\n{}",
            hex(out)
        ));
    };
    if reply {
        if !p.vips.iter().any(|v| v.vip.addr == ip_out.src) {
            return fail(format!(
                "fragment {name}: a translated reply not from a VIP"
            ));
        }
        if expected_deltas(view.len(), reason, None, None) != *changed {
            return fail(format!("fragment {name}: counter changes {changed:?}"));
        }
        return ok;
    }
    let proto = frag_info(view, &ip).map(|i| i.2).unwrap_or(0);
    let want = if proto == TCP { Proto::Tcp } else { Proto::Udp };
    let fits = p
        .vips
        .iter()
        .filter(|v| v.vip.addr == ip.dst && v.vip.proto == want)
        .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
        .filter(|(_, b)| {
            b.nexthop
                .is_some_and(|n| out.len() >= 6 && out[..6] == n.dmac)
        })
        .any(|(v, b)| {
            let shape = match v.mode {
                Mode::Dsr => out.len() == frame.len() && out[12..] == frame[12..],
                Mode::Tunnel => out.len() == frame.len() + if ip.v6 { 40 } else { 20 },
                Mode::Nat | Mode::FullNat => {
                    out.len() == frame.len()
                        && (ip_out.v6
                            || !ipv4_header_ok(frame, ip.l3)
                            || ipv4_header_ok(out, ip_out.l3))
                }
            };
            shape && expected_deltas(view.len(), reason, Some(v.vip), Some(b.addr)) == *changed
        });
    if !fits {
        return fail(format!(
            "fragment {name}: no VIP of {} and backend explain the output and counters {changed:?}\n{}",
            ip.dst,
            hex(out)
        ));
    }
    ok
}
