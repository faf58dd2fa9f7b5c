//! `hola trace`: what the CLI asks for ([`TraceSpec`]), what the daemon
//! streams back ([`TraceLine`], one JSON object a line), the data plane's
//! filter made from a spec, and the CLI's side: decoding a packet's bytes
//! into a tcpdump-like line ([`decode`]) and the pcap file ([`pcap`]).

pub mod decode;
pub mod pcap;

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP,
    trace::{TRACE_M_DPORT, TRACE_M_DST, TRACE_M_PROTO, TRACE_M_SPORT, TRACE_M_SRC, TraceFilter},
};
use serde::{Deserialize, Serialize};

use crate::model::addr_bytes;

/// IP protocol numbers of ICMP and ICMPv6.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The longest a trace may run, and what it runs for without `--seconds`.
pub const MAX_SECONDS: u64 = 3600;
/// The most packets a trace reports (`--count` is at most this).
pub const MAX_COUNT: u64 = 1_000_000;

/// An endpoint of the filter: an address, and a port or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Endpoint {
    /// `ADDR`, `ADDR:PORT`, or `[V6ADDR]:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(address) = s.parse::<IpAddr>() {
            return Ok(Endpoint {
                address,
                port: None,
            });
        }
        match s.parse::<SocketAddr>() {
            Ok(a) => Ok(Endpoint {
                address: a.ip(),
                port: Some(a.port()),
            }),
            Err(_) => Err(format!(
                "`{s}` is not an address or ADDR:PORT; write e.g. 198.18.0.2, 198.18.0.2:40000 \
                 or [2001:db8::2]:40000"
            )),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.address, p)),
            None => write!(f, "{}", self.address),
        }
    }
}

/// What to trace (the body of `POST /v1/trace`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    /// The packets' source (`SRC[:PORT]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    /// Their destination (`DST[:PORT]`); `--vip` also lands here, checked
    /// to be a VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Endpoint>,
    /// `tcp`, `udp` or `icmp` (ICMPv6 for IPv6 addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Packets to report, at most [`MAX_COUNT`] (none: no limit but time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Seconds to run, at most [`MAX_SECONDS`] (none: that bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// `dst` must be a configured VIP (the CLI's `--vip`).
    #[serde(default)]
    pub vip: bool,
}

impl TraceSpec {
    /// The data plane's filter for this spec (not yet enabled).
    pub fn filter(&self) -> Result<TraceFilter, String> {
        let mut f = TraceFilter::default();
        let mut family = 0;
        if let (Some(s), Some(d)) = (self.src, self.dst)
            && s.address.is_ipv4() != d.address.is_ipv4()
        {
            return Err(format!(
                "the source {s} and the destination {d} are of different address families"
            ));
        }
        if let Some(s) = self.src {
            (f.src, family) = addr_bytes(s.address);
            f.fields |= TRACE_M_SRC;
            if let Some(p) = s.port {
                f.sport = p.to_be();
                f.fields |= TRACE_M_SPORT;
            }
        }
        if let Some(d) = self.dst {
            (f.dst, family) = addr_bytes(d.address);
            f.fields |= TRACE_M_DST;
            if let Some(p) = d.port {
                f.dport = p.to_be();
                f.fields |= TRACE_M_DPORT;
            }
        }
        f.family = family;
        if let Some(p) = &self.proto {
            f.proto = match p.as_str() {
                "tcp" => PROTO_TCP,
                "udp" => PROTO_UDP,
                "icmp" if family == FAMILY_V6 => PROTO_ICMPV6,
                "icmp" if family == FAMILY_V4 => PROTO_ICMP,
                "icmp" => {
                    return Err(
                        "--proto icmp needs an address (SRC or DST) to know ICMP from ICMPv6"
                            .into(),
                    );
                }
                other => {
                    return Err(format!("unknown protocol `{other}`; use tcp, udp or icmp"));
                }
            };
            f.fields |= TRACE_M_PROTO;
        }
        if f.fields & (TRACE_M_SPORT | TRACE_M_DPORT) != 0
            && f.fields & TRACE_M_PROTO != 0
            && f.proto != PROTO_TCP
            && f.proto != PROTO_UDP
        {
            return Err("ports are matched only for tcp and udp".into());
        }
        if let Some(c) = self.count
            && !(1..=MAX_COUNT).contains(&c)
        {
            return Err(format!(
                "--count {c} is out of range; give 1 to {MAX_COUNT}"
            ));
        }
        if let Some(s) = self.seconds
            && !(1..=MAX_SECONDS).contains(&s)
        {
            return Err(format!(
                "--seconds {s} is out of range; give 1 to {MAX_SECONDS}"
            ));
        }
        Ok(f)
    }
}

/// One traced packet: its bytes as it arrived and as hola left them, and
/// what hola decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePacket {
    /// When the packet arrived, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub cpu: u32,
    /// The verdict's reason (a `REASONS` name) and XDP action.
    pub reason: String,
    pub action: String,
    /// The VIP and backend chosen, when the balancing decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    /// The Maglev slot of the flow's hash, for a packet the table placed
    /// (a flow-table hit has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Wire lengths, and the captured bytes (hex; at most the snap length).
    pub before_len: u32,
    pub before: String,
    pub after_len: u32,
    pub after: String,
}

/// How a trace ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEnd {
    /// `count`, `seconds`, or `stopped` (the daemon is shutting down).
    pub why: String,
    pub packets: u64,
    /// Records the program could not write (the ring was full) and
    /// packets seen only half (their other record lost).
    pub lost: u64,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceLine {
    Packet(TracePacket),
    End(TraceEnd),
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The bytes of a hex string (`None` if it is not one).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_becomes_the_filter_the_program_matches() {
        let spec = TraceSpec {
            src: Some(Endpoint::parse("198.18.0.2").expect("src")),
            dst: Some(Endpoint::parse("198.18.1.1:80").expect("dst")),
            proto: Some("tcp".into()),
            ..Default::default()
        };
        let f = spec.filter().expect("filter");
        assert_eq!(
            f.fields,
            TRACE_M_SRC | TRACE_M_DST | TRACE_M_DPORT | TRACE_M_PROTO
        );
        assert_eq!(&f.src[..4], &[198, 18, 0, 2]);
        assert_eq!(&f.dst[..4], &[198, 18, 1, 1]);
        assert_eq!(f.dport, 80u16.to_be());
        assert_eq!((f.family, f.proto, f.enabled), (FAMILY_V4, PROTO_TCP, 0));
        let icmp6 = TraceSpec {
            dst: Some(Endpoint::parse("2001:db8::1").expect("dst")),
            proto: Some("icmp".into()),
            ..Default::default()
        };
        assert_eq!(icmp6.filter().expect("filter").proto, PROTO_ICMPV6);
        let mixed = TraceSpec {
            src: Some(Endpoint::parse("198.18.0.2").expect("src")),
            dst: Some(Endpoint::parse("[2001:db8::1]:80").expect("dst")),
            ..Default::default()
        };
        assert_eq!(
            mixed.filter().expect_err("families"),
            "the source 198.18.0.2 and the destination [2001:db8::1]:80 are of different \
             address families"
        );
        let count = TraceSpec {
            count: Some(0),
            ..Default::default()
        };
        assert_eq!(
            count.filter().expect_err("count"),
            "--count 0 is out of range; give 1 to 1000000"
        );
        assert!(Endpoint::parse("nonsense").is_err());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
