//! Hand-built packets with correct checksums, for fixtures, and checksum
//! verification of what the program outputs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// One's-complement sum of `data` (odd length padded with zero).
pub fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Layer 4 of a packet under construction.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// Raw bytes after the IP header with this protocol number.
    Raw { proto: u8, bytes: Vec<u8> },
}

impl L4 {
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Self {
        L4::Tcp {
            sport,
            dport,
            flags,
            payload: Vec::new(),
        }
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Self {
        L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
        }
    }

    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// Bytes with the checksum computed over `pseudo` (the pseudo-header sum).
    fn bytes(&self, pseudo: u32) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&1000u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = *flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(payload);
                let len = h.len() as u32;
                let c = fold(pseudo + 6 + len + sum16(&h));
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                let len = (8 + payload.len()) as u16;
                h[4..6].copy_from_slice(&len.to_be_bytes());
                h.extend_from_slice(payload);
                let mut c = fold(pseudo + 17 + u32::from(len) + sum16(&h));
                if c == 0 {
                    c = 0xffff;
                }
                h[6..8].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// A packet from the client: Ethernet (optionally tagged), IP, layer 4.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// 802.1Q tags (TCI values), outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// IPv4 flags+fragment offset field.
    pub frag: u16,
    pub tos: u8,
    pub l4: L4,
}

impl Pkt {
    /// The 5-tuple key the program looks the packet up by (`FLOWS`).
    pub fn flow_key(&self) -> lb_common::FlowKey {
        let mut k = lb_common::FlowKey::default();
        let (sport, dport, proto) = match &self.l4 {
            L4::Tcp { sport, dport, .. } => (*sport, *dport, 6),
            L4::Udp { sport, dport, .. } => (*sport, *dport, 17),
            L4::Raw { proto, .. } => (0, 0, *proto),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                k.src[..4].copy_from_slice(&s.octets());
                k.dst[..4].copy_from_slice(&d.octets());
                k.family = lb_common::FAMILY_V4;
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                k.src = s.octets();
                k.dst = d.octets();
                k.family = lb_common::FAMILY_V6;
            }
            _ => panic!("a packet's addresses must be of one family"),
        }
        k.sport = sport.to_be();
        k.dport = dport.to_be();
        k.proto = proto;
        k
    }

    pub fn new(src: &str, dst: &str, l4: L4) -> Self {
        Pkt {
            dmac: LB_MAC,
            smac: CLIENT_MAC,
            vlans: Vec::new(),
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            options: Vec::new(),
            frag: 0x4000, // DF
            tos: 0,
            l4,
        }
    }

    pub fn vlan(mut self, tci: u16) -> Self {
        self.vlans.push(tci);
        self
    }

    pub fn options(mut self, o: &[u8]) -> Self {
        self.options = o.to_vec();
        self
    }

    pub fn frag(mut self, f: u16) -> Self {
        self.frag = f;
        self
    }

    /// The layer-2 header alone.
    pub fn l2(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.dmac);
        b.extend_from_slice(&self.smac);
        for v in &self.vlans {
            b.extend_from_slice(&0x8100u16.to_be_bytes());
            b.extend_from_slice(&v.to_be_bytes());
        }
        let et: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        b.extend_from_slice(&et.to_be_bytes());
        b
    }

    /// The IP packet (header and payload) without layer 2.
    pub fn l3(&self) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("mixed address families"),
        }
    }

    fn ipv4(&self, s: Ipv4Addr, d: Ipv4Addr) -> Vec<u8> {
        let pseudo = sum16(&s.octets()) + sum16(&d.octets());
        let payload = self.l4.bytes(pseudo);
        let hl = 20 + self.options.len();
        let mut h = vec![0u8; hl];
        h[0] = 0x40 | (hl / 4) as u8;
        h[1] = self.tos;
        h[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.l4.proto();
        h[12..16].copy_from_slice(&s.octets());
        h[16..20].copy_from_slice(&d.octets());
        h[20..].copy_from_slice(&self.options);
        let c = fold(sum16(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&payload);
        h
    }

    fn ipv6(&self, s: Ipv6Addr, d: Ipv6Addr) -> Vec<u8> {
        // The IPv6 pseudo-header's 32-bit length sums the same as the 16-bit
        // one the L4 builders add, for lengths below 65536.
        let pseudo = sum16(&s.octets()) + sum16(&d.octets());
        let payload = self.l4.bytes(pseudo);
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        h[6] = self.l4.proto();
        h[7] = 64;
        h[8..24].copy_from_slice(&s.octets());
        h[24..40].copy_from_slice(&d.octets());
        h.extend_from_slice(&payload);
        h
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.l2();
        b.extend_from_slice(&self.l3());
        b
    }
}

/// Replaces the MACs of a frame.
pub fn with_macs(frame: &[u8], dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    f
}

/// True when an IPv4 header's checksum verifies.
pub fn ipv4_header_ok(h: &[u8]) -> bool {
    let hl = usize::from(h[0] & 0x0f) * 4;
    fold(sum16(&h[..hl])) == 0
}

/// True when every checksum of an Ethernet frame carrying IPv4 or IPv6 and
/// TCP or UDP verifies, recomputed from scratch: the IPv4 header's and the
/// TCP/UDP one over the pseudo-header (an IPv4 UDP checksum of 0 means
/// none and passes).
pub fn l4_checksums_ok(frame: &[u8]) -> bool {
    let mut l3 = 12;
    while u16::from_be_bytes([frame[l3], frame[l3 + 1]]) == 0x8100 {
        l3 += 4;
    }
    let et = u16::from_be_bytes([frame[l3], frame[l3 + 1]]);
    l3 += 2;
    let (pseudo, proto, l4) = match et {
        0x0800 => {
            let h = &frame[l3..];
            if !ipv4_header_ok(h) {
                return false;
            }
            let hl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            (sum16(&h[12..20]), h[9], &h[hl..total])
        }
        0x86dd => {
            let h = &frame[l3..];
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            (sum16(&h[8..40]), h[6], &h[40..40 + len])
        }
        _ => return false,
    };
    if proto == 17 && et == 0x0800 && l4[6..8] == [0, 0] {
        return true;
    }
    fold(pseudo + u32::from(proto) + l4.len() as u32 + sum16(l4)) == 0
}

/// A gratuitous ARP frame: a broadcast request from `mac` saying "`ip` is
/// at `mac`", as a host that takes over an address announces it.
pub fn gratuitous_arp(ip: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    const ETH_P_ARP: u16 = 0x0806;
    let mut frame = vec![0xff; 6]; // to everyone
    frame.extend(mac);
    frame.extend(ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend(mac);
    frame.extend(ip.octets());
    frame.extend([0; 6]);
    frame.extend(ip.octets());
    frame
}

/// A MAC address as `ip` and the daemon's log lines write it:
/// `02:00:00:00:00:01`.
pub fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The fragments of `p`'s datagram with identification `id`, its transport
/// header and payload cut at the given offsets (multiples of 8): whole
/// frames, IPv4 headers (and their checksums) or IPv6 Fragment headers
/// built per RFC 791 / RFC 8200.
pub fn fragments(p: &Pkt, id: u32, cuts: &[usize]) -> Vec<Vec<u8>> {
    let l3 = p.l3();
    let v4 = p.src.is_ipv4();
    let hl = if v4 { 20 } else { 40 };
    let (head, data) = l3.split_at(hl);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(data.len());
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let (from, to) = (w[0], w[1]);
        let more = to != data.len();
        let mut f = p.l2();
        if v4 {
            let mut h = head.to_vec();
            h[2..4].copy_from_slice(&((20 + to - from) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let fo = (from / 8) as u16 | if more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let c = fold(sum16(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        } else {
            let mut h = head.to_vec();
            h[4..6].copy_from_slice(&((8 + to - from) as u16).to_be_bytes());
            let next = h[6];
            h[6] = 44;
            f.extend_from_slice(&h);
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&(((from / 8) as u16) << 3 | u16::from(more)).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&data[from..to]);
        out.push(f);
    }
    out
}
