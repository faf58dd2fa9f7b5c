//! A traced packet in words: its headers read from its bytes (as tcpdump
//! prints them: addresses and ports, TCP flags, payload length), and what
//! hola changed between the bytes it received and those it sent.

use std::net::IpAddr;

use super::{PROTO_ICMP, PROTO_ICMPV6, TracePacket, unhex};

/// The headers of a frame, as far as its captured bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ip: Option<Ip>,
}

/// An IPv4 or IPv6 packet's addresses and transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TCP/UDP ports.
    pub ports: Option<(u16, u16)>,
    /// TCP flags byte.
    pub tcp_flags: Option<u8>,
    /// Bytes after the transport header (by the IP length fields).
    pub payload: usize,
    /// An IP-in-IP or IPv6-in-IPv6 packet's inner packet.
    pub inner: Option<Box<Ip>>,
}

/// Reads the Ethernet header (one VLAN tag skipped) and the IP packet.
pub fn frame(b: &[u8]) -> Option<Frame> {
    let dmac = b.get(0..6)?.try_into().ok()?;
    let smac = b.get(6..12)?.try_into().ok()?;
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        off += 4;
        ethertype = u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]);
    }
    let l3 = b.get(off + 2..)?;
    let ip = match ethertype {
        0x0800 | 0x86dd => ip(l3),
        _ => None,
    };
    Some(Frame { dmac, smac, ip })
}

/// An IP packet at the start of `b`.
fn ip(b: &[u8]) -> Option<Ip> {
    let version = b.first()? >> 4;
    let (src, dst, proto, l4, end) = if version == 4 {
        let ihl = usize::from(b[0] & 0x0f) * 4;
        let tot = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
        let s: [u8; 4] = b.get(12..16)?.try_into().ok()?;
        let d: [u8; 4] = b.get(16..20)?.try_into().ok()?;
        (IpAddr::from(s), IpAddr::from(d), *b.get(9)?, ihl, tot)
    } else if version == 6 {
        let plen = usize::from(u16::from_be_bytes([*b.get(4)?, *b.get(5)?]));
        let s: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let d: [u8; 16] = b.get(24..40)?.try_into().ok()?;
        (IpAddr::from(s), IpAddr::from(d), *b.get(6)?, 40, 40 + plen)
    } else {
        return None;
    };
    let t = b.get(l4..).unwrap_or_default();
    let mut out = Ip {
        src,
        dst,
        proto,
        ports: None,
        tcp_flags: None,
        payload: 0,
        inner: None,
    };
    match proto {
        6 if t.len() >= 14 => {
            out.ports = Some(ports(t));
            out.tcp_flags = Some(t[13]);
            out.payload = end.saturating_sub(l4 + usize::from(t[12] >> 4) * 4);
        }
        17 if t.len() >= 4 => {
            out.ports = Some(ports(t));
            out.payload = end.saturating_sub(l4 + 8);
        }
        4 | 41 => out.inner = ip(t).map(Box::new),
        _ => out.payload = end.saturating_sub(l4),
    }
    Some(out)
}

fn ports(t: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
    )
}

/// tcpdump's way of writing TCP flags: `S`, `S.`, `P.`, `F.`, `R`, `.`.
pub fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x08, 'P'),
        (0x04, 'R'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// `198.18.0.2.40000 > 198.18.1.1.80: Flags [S], length 0` (tcpdump's
/// layout), for an encapsulated packet the outer header then the inner.
pub fn describe(ip: &Ip) -> String {
    let at = |a: IpAddr, p: Option<u16>| match p {
        Some(p) => format!("{a}.{p}"),
        None => a.to_string(),
    };
    let family = if ip.src.is_ipv4() { "IP" } else { "IP6" };
    let (sp, dp) = match ip.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    let head = format!("{family} {} > {}", at(ip.src, sp), at(ip.dst, dp));
    if let Some(inner) = &ip.inner {
        return format!("{head}: {}", describe(inner));
    }
    match (ip.proto, ip.tcp_flags) {
        (6, Some(f)) => format!("{head}: Flags [{}], length {}", tcp_flags(f), ip.payload),
        (17, _) => format!("{head}: UDP, length {}", ip.payload),
        (PROTO_ICMP, _) => format!("{head}: ICMP, length {}", ip.payload),
        (PROTO_ICMPV6, _) => format!("{head}: ICMP6, length {}", ip.payload),
        (p, _) => format!("{head}: proto {p}, length {}", ip.payload),
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What changed from `before` to `after`, in words: MACs, an added
/// tunnel header, translated addresses and ports; "unchanged" if nothing.
pub fn changes(before: &[u8], after: &[u8]) -> String {
    if before == after {
        return "unchanged".into();
    }
    let (Some(b), Some(a)) = (frame(before), frame(after)) else {
        return format!("{} bytes → {} bytes", before.len(), after.len());
    };
    let mut out = Vec::new();
    if b.dmac != a.dmac {
        out.push(format!("dst MAC {} → {}", mac(&b.dmac), mac(&a.dmac)));
    }
    if b.smac != a.smac {
        out.push(format!("src MAC {} → {}", mac(&b.smac), mac(&a.smac)));
    }
    match (&b.ip, &a.ip) {
        (Some(bi), Some(ai)) if ai.inner.is_some() && bi.inner.is_none() => {
            let added = after.len().saturating_sub(before.len());
            out.push(format!("encap +{added} bytes: {} > {}", ai.src, ai.dst));
        }
        (Some(bi), Some(ai)) => {
            let ep = |ip: IpAddr, port: Option<u16>| match port {
                Some(p) => std::net::SocketAddr::new(ip, p).to_string(),
                None => ip.to_string(),
            };
            let (bs, bd) = bi.ports.unzip();
            let (as_, ad) = ai.ports.unzip();
            if (bi.src, bs) != (ai.src, as_) {
                out.push(format!("src {} → {}", ep(bi.src, bs), ep(ai.src, as_)));
            }
            if (bi.dst, bd) != (ai.dst, ad) {
                out.push(format!("dst {} → {}", ep(bi.dst, bd), ep(ai.dst, ad)));
            }
        }
        _ => {}
    }
    if out.is_empty() {
        let n = before.iter().zip(after).filter(|(x, y)| x != y).count();
        out.push(format!("{n} bytes changed"));
    }
    out.join(", ")
}

/// The line `hola trace` prints for a packet: the time (UTC, with
/// microseconds), the packet as it arrived, what hola decided, and what
/// it changed.
pub fn line(p: &TracePacket) -> String {
    let before = unhex(&p.before).unwrap_or_default();
    let after = unhex(&p.after).unwrap_or_default();
    let secs = p.time_ns / 1_000_000_000;
    let micros = p.time_ns % 1_000_000_000 / 1000;
    let time = format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
    let what = match frame(&before).and_then(|f| f.ip) {
        Some(ip) => describe(&ip),
        None => format!("non-IP frame, length {}", p.before_len),
    };
    let mut decision = format!("{} {}", p.reason, p.action);
    if let Some(v) = &p.vip {
        decision.push_str(&format!(" vip {v}"));
    }
    if let Some(b) = p.backend {
        decision.push_str(&format!(" backend {b}"));
    }
    match p.slot {
        Some(s) => decision.push_str(&format!(" maglev slot {s}")),
        None if p.reason == "fwd_established" => decision.push_str(" flow-table hit"),
        None => {}
    }
    let changed = if p.action == "pass" || p.action == "drop" || p.action == "aborted" {
        String::new()
    } else {
        format!(" | {}", changes(&before, &after))
    };
    format!("{time} {what} | {decision}{changed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_frame() -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 2, 198, 18, 1, 1]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&80u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn a_dsr_syn_reads_as_tcpdump_writes_it_with_its_mac_rewrite() {
        let before = syn_frame();
        let mut after = before.clone();
        after[..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x11, 0x02, 0, 0, 0, 0, 0x03]);
        let ip = frame(&before).and_then(|f| f.ip).expect("ip");
        assert_eq!(
            describe(&ip),
            "IP 198.18.0.2.40000 > 198.18.1.1.80: Flags [S], length 0"
        );
        assert_eq!(
            changes(&before, &after),
            "dst MAC 02:00:00:00:00:01 → 02:00:00:00:00:11, src MAC 02:00:00:00:00:02 → \
             02:00:00:00:00:03"
        );
        let p = TracePacket {
            time_ns: 3_723_000_004_000,
            cpu: 0,
            reason: "fwd_syn".into(),
            action: "tx".into(),
            vip: Some("198.18.1.1:80/tcp".into()),
            backend: Some("198.18.0.11".parse().expect("ip")),
            slot: Some(7),
            before_len: 54,
            before: super::super::hex(&before),
            after_len: 54,
            after: super::super::hex(&after),
        };
        assert_eq!(
            line(&p),
            "01:02:03.000004 IP 198.18.0.2.40000 > 198.18.1.1.80: Flags [S], length 0 | fwd_syn \
             tx vip 198.18.1.1:80/tcp backend 198.18.0.11 maglev slot 7 | dst MAC \
             02:00:00:00:00:01 → 02:00:00:00:00:11, src MAC 02:00:00:00:00:02 → \
             02:00:00:00:00:03"
        );
    }

    #[test]
    fn an_added_tunnel_header_and_a_nat_rewrite_are_named() {
        let before = syn_frame();
        let mut after = before[..14].to_vec();
        after.extend_from_slice(&[0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 4, 0, 0]);
        after.extend_from_slice(&[198, 18, 2, 1, 198, 18, 0, 11]);
        after.extend_from_slice(&before[14..]);
        assert_eq!(
            changes(&before, &after),
            "encap +20 bytes: 198.18.2.1 > 198.18.0.11"
        );
        let ip = frame(&after).and_then(|f| f.ip).expect("ip");
        assert_eq!(
            describe(&ip),
            "IP 198.18.2.1 > 198.18.0.11: IP 198.18.0.2.40000 > 198.18.1.1.80: Flags [S], \
             length 0"
        );
        let mut nat = before.clone();
        nat[30..34].copy_from_slice(&[198, 18, 0, 11]);
        nat[36..38].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(
            changes(&before, &nat),
            "dst 198.18.1.1:80 → 198.18.0.11:8080"
        );
        assert_eq!(changes(&before, &before), "unchanged");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x11), "F.");
    }
}
