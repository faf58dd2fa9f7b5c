//! `hola doctor --backend VIP` on a backend: the VIP on a loopback (dsr,
//! tunnel), ARP kept from answering for it, rp_filter, `hola-decap`
//! (tunnel), and the service listening.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use super::{
    Check,
    iface::{self, Conf, Iface},
};
use crate::{
    api::VipRef,
    config::{Protocol, VipMode},
};

/// The decapsulator tunnel-mode backends run.
pub const DECAP: &str = lb_common::maps::PROG_DECAP;

/// Everything `hola doctor --backend` reads.
#[derive(Clone, Debug)]
pub struct Seen {
    pub vip: VipRef,
    pub mode: VipMode,
    /// Every address of this host: (interface, is it a loopback, address).
    pub addrs: Vec<(String, bool, IpAddr)>,
    pub interfaces: Vec<Iface>,
    pub conf_all: Conf,
    pub conf: BTreeMap<String, Conf>,
    /// Sockets listening (TCP) or bound (UDP) for the VIP's protocol.
    pub listeners: Vec<SocketAddr>,
}

impl Seen {
    /// The interfaces packets come in on: up, not loopbacks.
    fn links(&self) -> impl Iterator<Item = &Iface> {
        self.interfaces.iter().filter(|i| i.up && !i.loopback)
    }

    fn conf(&self, iface: &str) -> Conf {
        self.conf.get(iface).copied().unwrap_or_default()
    }
}

/// Every check of a backend, in order.
pub fn checks(s: &Seen) -> Vec<Check> {
    let on_lo = matches!(s.mode, VipMode::Dsr | VipMode::Tunnel);
    let mut c = Vec::new();
    if on_lo {
        c.push(vip_on_loopback(s));
        if s.vip.address.is_ipv4() {
            for i in s.links() {
                c.extend(arp(&i.name, s.conf_all, s.conf(&i.name)));
            }
        }
    }
    for i in s.links() {
        c.push(iface::rp_filter(
            &i.name,
            s.conf_all,
            s.conf(&i.name),
            "packets from clients whose address is routed out of another interface are \
             dropped (dsr and tunnel packets keep the client's source)",
        ));
    }
    if s.mode == VipMode::Tunnel {
        c.push(decap(s));
    }
    c.push(listening(s));
    c
}

/// dsr and tunnel: the backend answers from the VIP, so it must hold the
/// VIP, on a loopback (on a real interface it would answer ARP for it and
/// take the VIP's traffic from the balancer).
fn vip_on_loopback(s: &Seen) -> Check {
    let a = s.vip.address;
    let name = format!("vip {a}");
    let host = if a.is_ipv4() { 32 } else { 128 };
    let found: Vec<&(String, bool, IpAddr)> = s.addrs.iter().filter(|(_, _, x)| *x == a).collect();
    if let Some((n, _, _)) = found.iter().find(|(_, lo, _)| *lo) {
        return Check::ok(name, format!("on {n}"));
    }
    if let Some((n, _, _)) = found.first() {
        return Check::fail(
            name,
            format!(
                "on {n}, not on a loopback: the backend answers ARP/NDP for the VIP and can \
                 take its traffic away from the balancer"
            ),
            format!("ip addr del {a}/{host} dev {n}; ip addr add {a}/{host} dev lo"),
        );
    }
    Check::fail(
        name,
        format!(
            "{a} is on no interface: the backend drops the packets hola forwards to it (they \
             are addressed to the VIP)"
        ),
        format!(
            "ip addr add {a}/{host} dev lo (and in the host's network configuration, to keep it)"
        ),
    )
}

/// arp_ignore ≥ 1 (answer ARP only for addresses of the interface asked
/// on) and arp_announce ≥ 2 (never use the VIP as an ARP source) on a link.
fn arp(iface: &str, all: Conf, own: Conf) -> [Check; 2] {
    let (ig, _) = iface::effective(all.arp_ignore, own.arp_ignore);
    let (an, _) = iface::effective(all.arp_announce, own.arp_announce);
    let ignore = if ig >= 1 {
        Check::ok(format!("arp_ignore {iface}"), format!("{ig}"))
    } else {
        Check::fail(
            format!("arp_ignore {iface}"),
            format!(
                "{ig}: {iface} answers ARP for the VIP on lo, so the switch or router may send \
                 the VIP's packets here instead of to the balancer"
            ),
            format!(
                "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.{iface}.arp_ignore=1 \
                 (and in /etc/sysctl.d/ to keep it)"
            ),
        )
    };
    let announce = if an >= 2 {
        Check::ok(format!("arp_announce {iface}"), format!("{an}"))
    } else {
        Check::warn(
            format!("arp_announce {iface}"),
            format!(
                "{an}: ARP requests from {iface} may carry the VIP as their source, teaching \
                 neighbours that the VIP is here"
            ),
            format!(
                "sysctl -w net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.{iface}.arp_announce=2 \
                 (and in /etc/sysctl.d/ to keep it)"
            ),
        )
    };
    [ignore, announce]
}

/// tunnel: `hola-decap` on an interface, or the IP-in-IP packets are not
/// unwrapped.
fn decap(s: &Seen) -> Check {
    let on: Vec<String> = s
        .links()
        .filter(|i| i.prog.as_ref().is_some_and(|p| p.name == DECAP))
        .map(|i| i.name.clone())
        .collect();
    if on.is_empty() {
        let first = s.links().next().map_or("eth0", |i| i.name.as_str());
        Check::fail(
            "decap",
            format!(
                "{DECAP} is attached to no interface: the tunnel's IP-in-IP packets are not \
                 unwrapped"
            ),
            format!("hola decap attach --iface {first} --pin /sys/fs/bpf/hola-decap/{first}"),
        )
    } else {
        Check::ok("decap", format!("{DECAP} on {}", on.join(", ")))
    }
}

/// A socket listening on the VIP's port: on the VIP or a wildcard address
/// (nat and fullnat: on any address, the balancer rewrites the VIP).
fn listening(s: &Seen) -> Check {
    let v = s.vip;
    let name = format!("listening {}", v);
    if v.port == 0 {
        return Check::ok(
            name,
            "the VIP takes every port: which service must listen is the backend's choice",
        );
    }
    let any_addr = matches!(s.mode, VipMode::Nat | VipMode::FullNat);
    let hit = s.listeners.iter().find(|l| {
        l.port() == v.port
            && (any_addr || l.ip() == v.address || l.ip().is_unspecified())
            // A v6 wildcard socket takes IPv4 too unless IPV6_V6ONLY; an
            // IPv4 socket never takes IPv6.
            && (v.address.is_ipv4() || l.is_ipv6())
    });
    match hit {
        Some(l) => Check::ok(name, format!("{} socket on {l}", proto_name(v.protocol))),
        None => Check::fail(
            name,
            format!(
                "no {} socket listens on port {} ({}): the backend refuses the VIP's \
                 connections",
                proto_name(v.protocol),
                v.port,
                if any_addr {
                    "any address".to_string()
                } else {
                    format!("{} or a wildcard address", v.address)
                }
            ),
            format!(
                "start the service, listening on {}:{} or 0.0.0.0:{} (ss -lntu shows what \
                 listens)",
                v.address, v.port, v.port
            ),
        ),
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
