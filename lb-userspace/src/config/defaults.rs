//! Every default and every accepted range of the configuration, once.
//!
//! The schema's serde defaults, the TOML front end and the checks all read
//! these constants, and error messages print the [`Bounds`] themselves, so
//! a message cannot name another range than the one checked.
//! docs/configuration.md repeats the values for people.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::values::{Bounds, HashKind, Ipv4Cidr, Ipv6Cidr, Protocol, VipMode, XdpMode};

// ---------------------------------------------------------------------------
// [global]

pub const XDP_MODE: XdpMode = XdpMode::Auto;
pub const FLOW_CAPACITY_PER_CPU: u32 = 1 << 20;
pub const FLOW_CAPACITY_RANGE: Bounds<u32> = Bounds::new(1, 1 << 24);
pub const MAX_VIPS: u32 = 256;
pub const MAX_VIPS_RANGE: Bounds<u32> = Bounds::new(1, 65535);
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_BACKENDS_RANGE: Bounds<u32> = Bounds::new(1, 1 << 20);
pub const RING_CAPACITY: u32 = 1_048_592;
/// What a `u32` holds but 0; it must also hold the VIPs' tables (checked apart).
pub const RING_CAPACITY_RANGE: Bounds<u32> = Bounds::new(1, u32::MAX);
pub const NAT_CAPACITY: u32 = 1 << 20;
pub const NAT_CAPACITY_RANGE: Bounds<u32> = Bounds::new(1, 1 << 26);
pub const NAT_TCP_TIMEOUT: Duration = Duration::from_secs(900);
pub const NAT_UDP_TIMEOUT: Duration = Duration::from_secs(60);
/// Accepted `nat_tcp_timeout` and `nat_udp_timeout`.
pub const NAT_TIMEOUT_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_secs(1), Duration::from_secs(86_400));
/// How long a VIP keeps its previous Maglev table after a change, for
/// non-SYN packets that miss the flow table (0: not at all).
pub const TABLE_GRACE: Duration = Duration::from_secs(60);
pub const TABLE_GRACE_RANGE: Bounds<Duration> =
    Bounds::new(Duration::ZERO, Duration::from_secs(3600));
/// New flows each CPU records per second at most (Katran's default);
/// 0: no limit.
pub const NEW_FLOW_RATE: u32 = 125_000;
pub const NEW_FLOW_RATE_RANGE: Bounds<u32> = Bounds::new(0, 100_000_000);
pub const NAT_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
pub const NAT_CLOSED_TIMEOUT_RANGE: Bounds<Duration> =
    Bounds::new(Duration::ZERO, Duration::from_secs(3600));
/// fullnat: the source ports, `(LOW, HIGH)`; written `"20000-59999"`.
pub const FULLNAT_PORTS: (u16, u16) = (20000, 59999);
/// fullnat: where LOW and HIGH may lie (the privileged ports are left out).
pub const FULLNAT_PORT_RANGE: Bounds<u16> = Bounds::new(1024, u16::MAX);
pub const DEFAULT_TABLE_SIZE: u32 = crate::maglev::DEFAULT_TABLE_SIZE;
/// Smallest and largest Maglev table size accepted (both prime).
pub const TABLE_SIZE_RANGE: Bounds<u32> = Bounds::new(7, 16_777_259);
pub const CONTROL_SOCKET: &str = "/run/hola/hola.sock";
pub const METRICS_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9464));
pub const STATE_FILE: &str = "/var/lib/hola/state.toml";
pub const BPFFS_DIR: &str = "/sys/fs/bpf/hola";
pub const TUNNEL_SOURCE_V4: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(198, 18, 255, 0), 24);
pub const TUNNEL_SOURCE_V6: Ipv6Cidr =
    Ipv6Cidr::new(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0), 112);
/// The balancer varies only the last 32 bits of a tunnel source.
pub const TUNNEL_SOURCE_V6_PREFIX_RANGE: Bounds<u8> = Bounds::new(96, Ipv6Cidr::MAX_PREFIX);
/// Interface names (the kernel's IFNAMSIZ, less the NUL).
pub const IFNAME_LEN_RANGE: Bounds<usize> = Bounds::new(1, 15);

// ---------------------------------------------------------------------------
// [[vip]] and [[vip.backend]]

pub const PROTOCOL: Protocol = Protocol::Tcp;
pub const MODE: VipMode = VipMode::Dsr;
pub const HASH: HashKind = HashKind::FiveTuple;
/// A VIP's port; 0 is every port.
pub const VIP_PORT_RANGE: Bounds<u16> = Bounds::new(0, u16::MAX).noted("0 = all ports");
/// A port that must be given (a backend's, an agent's, the cluster's).
pub const PORT_RANGE: Bounds<u16> = Bounds::new(1, u16::MAX);
pub const WEIGHT: u32 = 1;
pub const WEIGHT_RANGE: Bounds<u32> = Bounds::new(0, 10_000).noted("0 drains the backend");

// ---------------------------------------------------------------------------
// Health and agent checks

pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Accepted health-check and agent intervals.
pub const HEALTH_INTERVAL_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_millis(50), Duration::from_secs(3600)).noted("one hour");
/// Capped at the interval when that is shorter: see [`timeout_for`].
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest health-check timeout (the longest is the interval).
pub const HEALTH_MIN_TIMEOUT: Duration = Duration::from_millis(10);
pub const HEALTH_RISE: u32 = 2;
pub const HEALTH_FALL: u32 = 3;
/// Accepted `rise` and `fall`.
pub const HEALTH_COUNT_RANGE: Bounds<u32> = Bounds::new(1, 100);
/// A check's own port (without one, the check uses the VIP's).
pub const HEALTH_PORT_RANGE: Bounds<u16> = PORT_RANGE.noted("remove it to use the VIP's port");
pub const HEALTH_PATH: &str = "/";
pub const HEALTH_EXPECT_STATUS: u16 = 200;
pub const EXPECT_STATUS_RANGE: Bounds<u16> = Bounds::new(100, 599);
pub const HEALTH_SEND: &str = "hola-health";
pub const SLOW_START_RANGE: Bounds<Duration> =
    Bounds::new(Duration::ZERO, Duration::from_secs(3600)).noted("one hour");
pub const AGENT_MIN_PERCENT: u32 = 10;
pub const AGENT_MAX_PERCENT: u32 = 100;
/// Accepted agent `min_percent` and `max_percent`.
pub const AGENT_PERCENT_RANGE: Bounds<u32> = Bounds::new(1, 1000);

/// The timeout of a health or agent check that does not set one.
pub fn timeout_for(interval: Duration) -> Duration {
    HEALTH_TIMEOUT.min(interval)
}

// ---------------------------------------------------------------------------
// [vip.outlier]

pub const OUTLIER_FAILURES: u32 = 5;
pub const OUTLIER_FAILURES_RANGE: Bounds<u32> = Bounds::new(1, 1000);
pub const OUTLIER_WINDOW: Duration = Duration::from_secs(10);
pub const OUTLIER_COOLDOWN: Duration = Duration::from_secs(30);
/// Accepted `window` and `cooldown`.
pub const OUTLIER_PERIOD_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_secs(1), Duration::from_secs(3600));
pub const OUTLIER_SYN_TIMEOUT: Duration = Duration::from_secs(1);
pub const SYN_TIMEOUT_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_millis(100), Duration::from_secs(60));

// ---------------------------------------------------------------------------
// [cluster]

/// UDP (announcements) and TCP (replication) port.
pub const CLUSTER_PORT: u16 = 7947;
/// An administratively scoped group (RFC 2365); sent with TTL 1, it never
/// leaves the link.
pub const CLUSTER_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 18, 1);
pub const CLUSTER_MULTICAST: bool = true;
pub const CLUSTER_REPLICATE: bool = true;
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
pub const ANNOUNCE_INTERVAL_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_millis(100), Duration::from_secs(60));
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CLUSTER_QUEUE: u32 = 1 << 16;
pub const CLUSTER_QUEUE_RANGE: Bounds<u32> = Bounds::new(1, 1 << 24);
/// `peer_flow_capacity`: entries of `PEER_FLOWS`, in total (it has one LRU
/// list for all CPUs). Without the key it is as large as `FLOWS4`
/// (`flow_capacity_per_cpu` × possible CPUs), which depends on the machine,
/// so it has no constant here. The top is what `FLOWS4` holds at the
/// largest `flow_capacity_per_cpu` on 64 CPUs.
pub const PEER_FLOW_CAPACITY_RANGE: Bounds<u32> = Bounds::new(1, 1 << 30);
/// Length of a cluster id and of a node name.
pub const NAME_LEN_RANGE: Bounds<usize> = Bounds::new(1, 64);
/// Shortest cluster key.
pub const CLUSTER_KEY_MIN_LEN: usize = 16;

// ---------------------------------------------------------------------------
// [bgp]

/// The routing table hola writes the routes of announced VIPs to.
pub const BGP_TABLE: u32 = 201;
/// 0 is no table; 253..=255 are the kernel's `default`, `main` and `local`.
pub const BGP_TABLE_RANGE: Bounds<u32> =
    Bounds::new(1, u32::MAX).noted("not 253, 254 or 255: default, main and local");
/// The route protocol number hola's routes carry (`ip route ... proto 201`).
pub const BGP_ROUTE_PROTOCOL: u8 = 201;
/// 0..=4 are the kernel's own (unspec, redirect, kernel, boot, static).
pub const BGP_ROUTE_PROTOCOL_RANGE: Bounds<u8> =
    Bounds::new(5, 255).noted("not 12: BIRD's own routes carry it");
/// BIRD's route protocol number: BIRD treats routes with it as its own.
pub const BIRD_ROUTE_PROTOCOL: u8 = 12;
/// Private and public AS numbers: 0, 23456 (AS_TRANS) and 4294967295 are
/// reserved.
pub const AS_RANGE: Bounds<u32> = Bounds::new(1, u32::MAX - 1).noted("not 23456 (AS_TRANS)");
pub const AS_TRANS: u32 = 23456;
pub const BFD_INTERVAL: Duration = Duration::from_millis(100);
pub const BFD_INTERVAL_RANGE: Bounds<Duration> =
    Bounds::new(Duration::from_millis(10), Duration::from_secs(10));
pub const BFD_MULTIPLIER: u32 = 3;
pub const BFD_MULTIPLIER_RANGE: Bounds<u32> = Bounds::new(1, 255);
pub const WITHDRAW_ON_STOP: bool = false;
/// How long a VIP must serve before it is announced (again).
pub const ANNOUNCE_DELAY: Duration = Duration::from_secs(3);
pub const ANNOUNCE_DELAY_RANGE: Bounds<Duration> =
    Bounds::new(Duration::ZERO, Duration::from_secs(600));

/// Serde's `default = "..."` takes a function: one per defaulted key of
/// the schema, each returning the constant above.
pub(super) mod fns {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::values::{
        HashKind, Ipv4Cidr, Ipv6Cidr, Protocol, VipMode, XdpMode, format_port_range,
    };

    macro_rules! fns {
        ($($name:ident: $t:ty = $value:expr;)*) => {$(
            pub fn $name() -> $t {
                $value
            }
        )*};
    }

    fns! {
        xdp_mode: XdpMode = super::XDP_MODE;
        flow_capacity_per_cpu: u32 = super::FLOW_CAPACITY_PER_CPU;
        max_vips: u32 = super::MAX_VIPS;
        max_backends: u32 = super::MAX_BACKENDS;
        ring_capacity: u32 = super::RING_CAPACITY;
        nat_capacity: u32 = super::NAT_CAPACITY;
        nat_tcp_timeout: Duration = super::NAT_TCP_TIMEOUT;
        nat_udp_timeout: Duration = super::NAT_UDP_TIMEOUT;
        nat_closed_timeout: Duration = super::NAT_CLOSED_TIMEOUT;
        table_grace: Duration = super::TABLE_GRACE;
        new_flow_rate: u32 = super::NEW_FLOW_RATE;
        fullnat_ports: String = format_port_range(super::FULLNAT_PORTS);
        default_table_size: u32 = super::DEFAULT_TABLE_SIZE;
        control_socket: PathBuf = super::CONTROL_SOCKET.into();
        metrics_address: Option<SocketAddr> = Some(super::METRICS_ADDRESS);
        state_file: PathBuf = super::STATE_FILE.into();
        bpffs_dir: PathBuf = super::BPFFS_DIR.into();
        tunnel_source_v4: Ipv4Cidr = super::TUNNEL_SOURCE_V4;
        tunnel_source_v6: Ipv6Cidr = super::TUNNEL_SOURCE_V6;
        protocol: Protocol = super::PROTOCOL;
        mode: VipMode = super::MODE;
        hash: HashKind = super::HASH;
        weight: u32 = super::WEIGHT;
        health_rise: u32 = super::HEALTH_RISE;
        health_fall: u32 = super::HEALTH_FALL;
        health_path: String = super::HEALTH_PATH.into();
        health_expect_status: u16 = super::HEALTH_EXPECT_STATUS;
        health_send: String = super::HEALTH_SEND.into();
        agent_min_percent: u32 = super::AGENT_MIN_PERCENT;
        agent_max_percent: u32 = super::AGENT_MAX_PERCENT;
        outlier_failures: u32 = super::OUTLIER_FAILURES;
        outlier_window: Duration = super::OUTLIER_WINDOW;
        outlier_cooldown: Duration = super::OUTLIER_COOLDOWN;
        outlier_syn_timeout: Duration = super::OUTLIER_SYN_TIMEOUT;
        cluster_port: u16 = super::CLUSTER_PORT;
        cluster_group: Ipv4Addr = super::CLUSTER_GROUP;
        cluster_multicast: bool = super::CLUSTER_MULTICAST;
        cluster_replicate: bool = super::CLUSTER_REPLICATE;
        announce_interval: Duration = super::ANNOUNCE_INTERVAL;
        peer_timeout: Duration = super::PEER_TIMEOUT;
        cluster_queue: u32 = super::CLUSTER_QUEUE;
        bgp_table: u32 = super::BGP_TABLE;
        bgp_route_protocol: u8 = super::BGP_ROUTE_PROTOCOL;
        bfd_interval: Duration = super::BFD_INTERVAL;
        bfd_multiplier: u32 = super::BFD_MULTIPLIER;
        announce_delay: Duration = super::ANNOUNCE_DELAY;
    }
}
