//! The value types of the configuration and how each is written: durations
//! (`"500ms"`, `"2s"`), address prefixes, the metrics address, port ranges,
//! the enums with their TOML spellings, and [`Bounds`], the type of every
//! accepted range. A leaf: it uses nothing else of `config`, so that
//! `defaults` can be built from these types.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ---------------------------------------------------------------------------
// Durations

/// Parses `"<n>ms"` or `"<n>s"`, `n` a decimal number such as `500`, `2`
/// or `1.5` (at most nanosecond precision).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, nanos_per_unit): (&str, u64) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000_000)
    } else {
        return None;
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (num.contains('.') && frac.is_empty()) {
        return None;
    }
    let mut nanos = int.parse::<u64>().ok()?.checked_mul(nanos_per_unit)?;
    let mut scale = nanos_per_unit;
    for b in frac.bytes() {
        scale /= 10;
        let d = u64::from(b - b'0');
        if scale == 0 {
            if d != 0 {
                return None; // finer than a nanosecond
            }
            continue;
        }
        nanos = nanos.checked_add(d * scale)?;
    }
    Some(Duration::from_nanos(nanos))
}

/// The spelling of `d` that [`parse_duration`] reads back: `"2s"`,
/// `"500ms"`, `"1.5ms"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else {
        let frac = format!("{:06}", nanos % 1_000_000);
        format!("{}.{}ms", nanos / 1_000_000, frac.trim_end_matches('0'))
    }
}

/// What is wrong with a string [`parse_duration`] does not read.
pub(super) const DURATION_RULE: &str = "not a duration; write a number of milliseconds or seconds such as \"500ms\", \"2s\" or \"1.5s\"";

/// `s` as a duration, or serde's error naming it.
fn duration_or_error<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    parse_duration(s).ok_or_else(|| E::custom(format!("{s:?}: {DURATION_RULE}")))
}

/// A duration written as a string such as `"60s"`.
pub(super) mod duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration_or_error(&String::deserialize(d)?)
    }
}

/// An optional duration; `None` is not written, and `null` reads as `None`.
pub(super) mod opt_duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| duration_or_error(&s))
            .transpose()
    }
}

// ---------------------------------------------------------------------------
// Accepted ranges

/// How a value is written in messages: as in the file (a duration quoted).
pub trait Spelled: Copy {
    fn spelled(self) -> String;
}

macro_rules! spelled_as_number {
    ($($t:ty),*) => {$(
        impl Spelled for $t {
            fn spelled(self) -> String {
                self.to_string()
            }
        }
    )*};
}
spelled_as_number!(u8, u16, u32, usize);

impl Spelled for Duration {
    fn spelled(self) -> String {
        format!("\"{}\"", format_duration(self))
    }
}

/// The accepted values of a key, `lo..=hi`, and a note shown with them.
/// Error messages print a `Bounds` (`must be 0..=10000 (0 drains the
/// backend)`), so the text cannot drift from the numbers the checks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds<T> {
    pub lo: T,
    pub hi: T,
    note: &'static str,
}

impl<T: Copy + PartialOrd> Bounds<T> {
    pub const fn new(lo: T, hi: T) -> Self {
        Self { lo, hi, note: "" }
    }

    /// The same bounds, printed with `(note)` after them.
    pub const fn noted(self, note: &'static str) -> Self {
        Self { note, ..self }
    }

    pub fn contains(&self, v: T) -> bool {
        self.lo <= v && v <= self.hi
    }
}

impl<T: Spelled> fmt::Display for Bounds<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.lo.spelled(), self.hi.spelled())?;
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Port ranges

/// `"LOW-HIGH"` (spaces around either allowed) as `(LOW, HIGH)`, unchecked.
pub(super) fn split_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// `(LOW, HIGH)` written as `"LOW-HIGH"`, as [`split_port_range`] reads it.
pub fn format_port_range((lo, hi): (u16, u16)) -> String {
    format!("{lo}-{hi}")
}

// ---------------------------------------------------------------------------
// The metrics address

/// `metrics_address`: a socket address, or `""` for none.
pub(super) mod metrics_address_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse_metrics_address(&s).map_err(serde::de::Error::custom)
    }
}

/// A socket address, or `None` for `""`; the error says how to write one.
pub(super) fn parse_metrics_address(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        "not a socket address; write IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\", \
         or \"\" to disable /metrics"
            .to_string()
    })
}

// ---------------------------------------------------------------------------
// Enums

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipMode {
    /// Direct server return: rewrite the destination MAC only.
    Dsr,
    /// IP-in-IP / IPv6 encapsulation to the backend.
    Tunnel,
    /// Destination NAT to the backend, replies translated back: the
    /// balancer is the backends' gateway.
    Nat,
    /// As `Nat`, and the source becomes a balancer address and port, so
    /// that backends need no route through the balancer.
    #[serde(rename = "fullnat")]
    FullNat,
}

impl From<Protocol> for crate::model::Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => crate::model::Proto::Tcp,
            Protocol::Udp => crate::model::Proto::Udp,
        }
    }
}

impl From<VipMode> for crate::model::Mode {
    fn from(m: VipMode) -> Self {
        match m {
            VipMode::Dsr => crate::model::Mode::Dsr,
            VipMode::Tunnel => crate::model::Mode::Tunnel,
            VipMode::Nat => crate::model::Mode::Nat,
            VipMode::FullNat => crate::model::Mode::FullNat,
        }
    }
}

impl VipMode {
    /// `nat` or `fullnat`: hola translates both directions.
    pub fn is_nat(self) -> bool {
        matches!(self, VipMode::Nat | VipMode::FullNat)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashKind {
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Source address only: client affinity.
    #[serde(rename = "source")]
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode, falling back to generic with a warning.
    Auto,
    Driver,
    Generic,
}

/// The type of an active health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 GET answers the expected status (and body).
    Http,
    /// A UDP datagram gets a reply.
    Udp,
    /// A command exits with status 0.
    Exec,
}

/// How a checked backend starts when hola has no saved health for it (a
/// backend added while hola runs, or the first start): `up` takes flows at
/// once (and goes down after `fall` failures), `down` takes none until its
/// check passes `rise` times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    #[default]
    Up,
    Down,
}

impl Initial {
    pub fn is_up(&self) -> bool {
        *self == Initial::Up
    }
}

/// Where a health check is addressed: `vip`, to the VIP and carried to
/// the backend as a client's packet is (dsr: to its MAC; tunnel:
/// encapsulated), so that a backend the data path cannot reach fails it;
/// `backend`, to the backend's own address. Unset: `vip` for dsr and
/// tunnel VIPs (IPv4), `backend` otherwise (nat and fullnat reach the
/// backend's own address anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Through {
    Vip,
    Backend,
}

/// The TOML spelling of each enum value; must agree with the serde renames
/// above (the round-trip test checks it).
pub(super) trait Choice: Copy + PartialEq + 'static {
    const CHOICES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// The value spelled `name`, if any.
    fn named(name: &str) -> Option<Self> {
        Self::CHOICES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Every spelling, quoted: `"tcp", "udp"`.
    fn names() -> String {
        let names: Vec<String> = Self::CHOICES
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect();
        names.join(", ")
    }
}

impl Choice for Protocol {
    const CHOICES: &'static [(&'static str, Self)] = &[("tcp", Self::Tcp), ("udp", Self::Udp)];
}

impl Choice for VipMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("dsr", Self::Dsr),
        ("tunnel", Self::Tunnel),
        ("nat", Self::Nat),
        ("fullnat", Self::FullNat),
    ];
}

impl Choice for HashKind {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("5-tuple", Self::FiveTuple), ("source", Self::Source)];
}

impl Choice for CheckKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("tcp", Self::Tcp),
        ("http", Self::Http),
        ("udp", Self::Udp),
        ("exec", Self::Exec),
    ];
}

impl Choice for Initial {
    const CHOICES: &'static [(&'static str, Self)] = &[("up", Self::Up), ("down", Self::Down)];
}

impl Choice for Through {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("vip", Self::Vip), ("backend", Self::Backend)];
}

impl Choice for XdpMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("driver", Self::Driver),
        ("generic", Self::Generic),
    ];
}

macro_rules! display_choice {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
display_choice!(
    Protocol, VipMode, HashKind, XdpMode, CheckKind, Initial, Through
);

// ---------------------------------------------------------------------------
// Address prefixes

macro_rules! cidr {
    ($name:ident, $addr:ty, $bits:ty, $max:expr, $example:expr) => {
        /// An address prefix, written `ADDRESS/PREFIX`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name {
            pub addr: $addr,
            pub prefix: u8,
        }

        impl $name {
            /// The longest prefix.
            pub const MAX_PREFIX: u8 = $max;

            pub const fn new(addr: $addr, prefix: u8) -> Self {
                Self { addr, prefix }
            }

            /// The network address (host bits cleared), when `prefix` is in range.
            pub fn network(&self) -> Option<$addr> {
                if self.prefix > $max {
                    return None;
                }
                let mask = <$bits>::MAX
                    .checked_shl(u32::from($max - self.prefix))
                    .unwrap_or(0);
                Some(<$addr>::from(<$bits>::from(self.addr) & mask))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let bad = || {
                    format!(
                        "not a CIDR; write ADDRESS/PREFIX with a prefix of 0..={} such as \"{}\"",
                        $max, $example
                    )
                };
                let (a, p) = s.split_once('/').ok_or_else(bad)?;
                let addr = a.parse().map_err(|_| bad())?;
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                if prefix > $max {
                    return Err(bad());
                }
                Ok(Self { addr, prefix })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
cidr!(Ipv4Cidr, Ipv4Addr, u32, 32u8, "198.18.255.0/24");
cidr!(Ipv6Cidr, Ipv6Addr, u128, 128u8, "2001:db8:ffff::/112");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("500ms", 500),
            ("2s", 2000),
            ("1.5s", 1500),
            ("0s", 0),
            ("0.05s", 50),
        ] {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s}");
        }
        for s in [
            "", "1", "s", "ms", "1.s", ".5s", "-1s", "1m", "1 s", "1h", "1.5.5s",
        ] {
            assert_eq!(parse_duration(s), None, "{s:?}");
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_millis(1500),
            Duration::from_micros(1500),
            Duration::from_nanos(1),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn bounds_print_as_in_the_file() {
        assert_eq!(Bounds::new(0u32, 10_000).to_string(), "0..=10000");
        assert_eq!(
            Bounds::new(1u16, 65535).noted("0 = all ports").to_string(),
            "1..=65535 (0 = all ports)"
        );
        let d = Bounds::new(Duration::from_millis(50), Duration::from_secs(3600));
        assert_eq!(d.to_string(), "\"50ms\"..=\"3600s\"");
        assert!(d.contains(Duration::from_millis(50)) && !d.contains(Duration::from_millis(49)));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(split_port_range(" 20000 - 59999 "), Some((20000, 59999)));
        assert_eq!(split_port_range("20000"), None);
        assert_eq!(split_port_range("1-70000"), None);
        assert_eq!(format_port_range((20000, 59999)), "20000-59999");
    }
}
