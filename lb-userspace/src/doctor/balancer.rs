//! `hola doctor` on the balancer: what was read ([`Seen`]) and the checks
//! over it, in the order they print.

use std::{collections::BTreeMap, path::PathBuf};

use super::{
    Check, host,
    iface::{self, Conf, Iface},
};
pub use crate::dataplane::PinnedMap as MapPin;
use crate::dataplane::PinsPreview;
use crate::stats::StatsReport;

/// The pinned link of one interface: the id of the program it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub iface: String,
    pub path: PathBuf,
    /// `None`: no pin.
    pub prog_id: Option<Result<u32, String>>,
}

/// The control socket as `stat` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSeen {
    Missing,
    NotSocket,
    Socket { mode: u32, uid: u32 },
}

/// The state file: missing, or how many VIPs it holds, or why it cannot
/// be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSeen {
    Missing,
    Vips(usize),
    Unusable(String),
}

/// Everything `hola doctor` reads on a balancer.
#[derive(Clone, Debug)]
pub struct Seen {
    pub release: String,
    pub jit: Option<String>,
    pub btf: bool,
    pub mounts: String,
    /// Each configured interface and what the kernel has of it (`None`:
    /// no such interface).
    pub interfaces: Vec<(String, Option<Iface>)>,
    pub conf_all: Conf,
    pub conf: BTreeMap<String, Conf>,
    pub pin_dir: PathBuf,
    pub maps: Vec<MapPin>,
    /// What the next `hola run` of this build would do to the pins.
    pub pins: PinsPreview,
    pub links: Vec<LinkPin>,
    /// The tag of this build's `hola_lb`, or why it could not be had.
    pub build_tag: Result<u64, String>,
    pub socket_path: PathBuf,
    pub socket: SocketSeen,
    /// The daemon's stats, or why they could not be read.
    pub stats: Result<StatsReport, String>,
    pub state_path: PathBuf,
    pub state: StateSeen,
    /// The largest packet clients send (the tunnel's headroom is counted
    /// from it).
    pub client_mtu: u32,
}

/// The program the balancer's interfaces must run.
pub const PROG: &str = lb_common::maps::PROG_LB;

/// Every check of a balancer, in order.
pub fn checks(s: &Seen) -> Vec<Check> {
    let mut c = vec![
        host::kernel(&s.release),
        host::jit(s.jit.as_deref(), attached_jited(s)),
        host::btf(s.btf),
        host::bpffs(&s.mounts),
    ];
    for (name, i) in &s.interfaces {
        match i {
            Some(i) => c.push(iface::balancer_xdp(i, PROG)),
            None => c.push(Check::fail(
                format!("xdp {name}"),
                format!("no interface {name} in this network namespace"),
                "name an interface `ip link` shows in global.interfaces, or run doctor in \
                 hola's network namespace",
            )),
        }
    }
    for (name, _) in &s.interfaces {
        let own = s.conf.get(name).copied().unwrap_or_default();
        c.push(iface::rp_filter(
            name,
            s.conf_all,
            own,
            "packets hola passes to the kernel (health-check answers, ARP, ICMP, traffic \
             to the balancer itself) are dropped when their source is routed out of \
             another interface; answers to checks through the VIP come from the VIP's \
             address, so strict filtering drops them unless the VIP is routed out of \
             this interface",
        ));
    }
    c.push(maps(s));
    c.extend(links(s));
    c.push(socket(s));
    c.extend(nexthops(&s.stats));
    c.extend(tunnel_headroom(s));
    c.push(state(s));
    c
}

/// The checks that need no configuration, and the configuration's failure:
/// what doctor says when it cannot read the configuration hola runs with.
pub fn unconfigured(s: &Seen, config: &std::path::Path, error: &str) -> Vec<Check> {
    let mut c = vec![
        host::kernel(&s.release),
        host::jit(s.jit.as_deref(), None),
        host::btf(s.btf),
        host::bpffs(&s.mounts),
    ];
    c.push(Check::fail(
        "configuration",
        format!("{}: {error}", config.display()),
        format!(
            "name the configuration hola runs with (--config FILE); `hola check-config {}` \
             lists every error in it",
            config.display()
        ),
    ));
    c
}

/// Whether the program on the first interface that has one is JIT-compiled.
fn attached_jited(s: &Seen) -> Option<bool> {
    s.interfaces
        .iter()
        .find_map(|(_, i)| i.as_ref()?.prog.as_ref())
        .map(|p| p.jited)
}

/// The pinned maps: all there, with the capacities the configuration asks.
fn maps(s: &Seen) -> Check {
    let name = "pinned maps";
    let dir = s.pin_dir.display();
    let missing: Vec<&str> = s
        .maps
        .iter()
        .filter(|m| m.pinned.is_none())
        .map(|m| m.name)
        .collect();
    if missing.len() == s.maps.len() {
        return Check::fail(
            name,
            format!("no map pinned under {dir}: hola has not started with this configuration"),
            "start hola (systemctl start hola); check global.bpffs_dir",
        );
    }
    if let PinsPreview::Refused(why) = &s.pins {
        return Check::fail(
            name,
            format!("the next hola run of this build refuses the pins under {dir}: {why}"),
            "follow the message; doctor checked the layouts only, nothing was changed",
        );
    }
    if let PinsPreview::Upgrade {
        build,
        created,
        converted,
    } = &s.pins
        && missing
            .iter()
            .all(|m| created.iter().chain(converted).any(|c| c == m))
    {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        return Check::warn(
            name,
            format!(
                "pinned by another build ({build}): the next hola run of this build upgrades \
                 them in place, creating {} and converting {} (every flow and counter kept)",
                list(created),
                list(converted)
            ),
            "restart hola with this build (systemctl restart hola) when ready; \
             docs/operations.md, upgrades",
        );
    }
    if !missing.is_empty() {
        return Check::fail(
            name,
            format!("missing under {dir}/maps: {}", missing.join(", ")),
            "restart hola: it pins every map it loads",
        );
    }
    for m in &s.maps {
        match &m.pinned {
            Some(Err(e)) => {
                return Check::fail(
                    name,
                    format!("{dir}/maps/{}: {e}", m.name),
                    "run doctor as root; if the pin is damaged, hola down and start again",
                );
            }
            // A new PEER_FLOWS of the configured size replaces the pinned
            // one on start (see dataplane/load.rs): not a problem.
            Some(Ok(n)) if *n != m.wanted && m.name != lb_common::maps::PEER_FLOWS => {
                return Check::fail(
                    name,
                    format!(
                        "{}: pinned with {n} entries, the configuration asks for {}: the next \
                         hola run refuses to start",
                        m.name, m.wanted
                    ),
                    "restore the old capacity setting, or hola down (this drops every flow) \
                     and start again",
                );
            }
            _ => {}
        }
    }
    Check::ok(
        name,
        format!(
            "{} maps under {dir}/maps, sized as configured",
            s.maps.len()
        ),
    )
}

/// Each interface's pinned link: present, holding the program attached to
/// the interface, of this build.
fn links(s: &Seen) -> Vec<Check> {
    s.links
        .iter()
        .map(|l| {
            let name = format!("pinned link {}", l.iface);
            let attached = s
                .interfaces
                .iter()
                .find(|(n, _)| *n == l.iface)
                .and_then(|(_, i)| i.as_ref())
                .and_then(|i| i.prog.as_ref());
            let id = match &l.prog_id {
                None => {
                    return Check::fail(
                        name,
                        format!(
                            "no link pinned at {}: the program goes away when hola exits",
                            l.path.display()
                        ),
                        "restart hola: it pins the link of every interface it attaches to",
                    );
                }
                Some(Err(e)) => {
                    return Check::fail(
                        name,
                        format!("{}: {e}", l.path.display()),
                        "run doctor as root",
                    );
                }
                Some(Ok(id)) => *id,
            };
            match attached {
                Some(p) if p.id != id => Check::fail(
                    name,
                    format!(
                        "the pin holds program {id} but {} runs program {} ({})",
                        l.iface, p.id, p.name
                    ),
                    format!(
                        "detach the other program (ip link set dev {} xdp off) and restart hola",
                        l.iface
                    ),
                ),
                None => Check::fail(
                    name,
                    format!(
                        "the pin holds program {id}, but nothing runs on {}",
                        l.iface
                    ),
                    "restart hola",
                ),
                Some(p) => match &s.build_tag {
                    Ok(t) if *t == p.tag => Check::ok(
                        name,
                        format!("{PROG} (program {id}, tag {t:016x}), this build's"),
                    ),
                    Ok(t) => Check::warn(
                        name,
                        format!(
                            "program {id} (tag {:016x}) is another build than this hola's (tag \
                             {t:016x}): upgraded but not restarted?",
                            p.tag
                        ),
                        "systemctl restart hola: the new program takes over the pinned maps, \
                         flows and counters stay",
                    ),
                    Err(e) => Check::warn(
                        name,
                        format!("program {id}; this build's tag is unknown: {e}"),
                        "run doctor as root, with the configuration hola runs with",
                    ),
                },
            }
        })
        .collect()
}

/// The control socket: there, a socket, root's only.
fn socket(s: &Seen) -> Check {
    let name = "control socket";
    let p = s.socket_path.display();
    match s.socket {
        SocketSeen::Missing => Check::fail(
            name,
            format!("{p} does not exist: hola is not running"),
            "systemctl start hola (journalctl -u hola says why it stopped)",
        ),
        SocketSeen::NotSocket => Check::fail(
            name,
            format!("{p} is not a socket"),
            format!("remove {p} and restart hola"),
        ),
        SocketSeen::Socket { mode, uid } => {
            let mode = mode & 0o777;
            if mode & 0o077 != 0 || uid != 0 {
                Check::warn(
                    name,
                    format!(
                        "{p}: mode {mode:o}, owner uid {uid}: others than root can change VIPs"
                    ),
                    format!("chown root {p}; chmod 600 {p} (hola makes it so when it binds it)"),
                )
            } else {
                Check::ok(name, format!("{p}: mode {mode:o}, root's"))
            }
        }
    }
}

/// Every backend's next hop: resolved, or its packets are dropped.
pub fn nexthops(stats: &Result<StatsReport, String>) -> Vec<Check> {
    let s = match stats {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::fail(
                "next hops",
                format!("cannot read the daemon's stats: {e}"),
                "start hola, or run doctor as root with --socket naming its socket",
            )];
        }
    };
    let mut c = Vec::new();
    for v in &s.vips {
        for b in &v.backends {
            let name = format!("next hop {} ({})", b.address, v.vip);
            c.push(if b.nexthop_resolved {
                Check::ok(name, "resolved")
            } else {
                Check::fail(
                    name,
                    "not resolved: packets to this backend are dropped (drop_no_nexthop)",
                    format!(
                        "make {} reachable from the balancer: ip route get {} and ip neigh show \
                         {} say where it is sought; check the backend is up and on that link",
                        b.address, b.address, b.address
                    ),
                )
            });
        }
    }
    if c.is_empty() {
        c.push(Check::ok("next hops", "no backend configured"));
    }
    c
}

/// The bytes a tunnel adds to a packet to a backend of this address.
fn tunnel_overhead(backend: &str) -> u32 {
    if backend.contains(':') { 40 } else { 20 }
}

/// Tunnel VIPs: a client's largest packet plus the outer header must fit
/// the MTU of the interfaces hola sends from.
fn tunnel_headroom(s: &Seen) -> Vec<Check> {
    let Ok(stats) = &s.stats else {
        return Vec::new();
    };
    let mtus: Vec<(&str, u32)> = s
        .interfaces
        .iter()
        .filter_map(|(n, i)| Some((n.as_str(), i.as_ref()?.mtu)))
        .collect();
    let mut c = Vec::new();
    for v in stats.vips.iter().filter(|v| v.mode == "tunnel") {
        let need = v
            .backends
            .iter()
            .map(|b| tunnel_overhead(&b.address))
            .max()
            .unwrap_or(20)
            + s.client_mtu;
        let name = format!("tunnel headroom {}", v.vip);
        let short: Vec<String> = mtus
            .iter()
            .filter(|(_, m)| *m < need)
            .map(|(n, m)| format!("{n} mtu {m}"))
            .collect();
        c.push(if short.is_empty() {
            Check::ok(
                name,
                format!(
                    "a {}-byte client packet, encapsulated, is {need} bytes: fits",
                    s.client_mtu
                ),
            )
        } else {
            Check::warn(
                name,
                format!(
                    "a {}-byte client packet, encapsulated, is {need} bytes: larger than {}; \
                     such packets are lost (hola does not send ICMP too-big for them)",
                    s.client_mtu,
                    short.join(", ")
                ),
                format!(
                    "raise the MTU on the path to the backends to {need} or more (ip link set \
                     dev IFACE mtu {need}, and the switches and backends), or clamp the \
                     clients' TCP MSS; --client-mtu tells doctor the clients' real MTU"
                ),
            )
        });
    }
    c
}

fn state(s: &Seen) -> Check {
    let name = "state file";
    let p = s.state_path.display();
    match &s.state {
        StateSeen::Vips(n) => Check::ok(name, format!("{p}: readable, {n} VIPs")),
        StateSeen::Missing => Check::warn(
            name,
            format!(
                "{p} does not exist: hola writes it when it starts, so it has not started \
                 with this configuration"
            ),
            "start hola; check global.state_file and that its directory is writable",
        ),
        StateSeen::Unusable(e) => Check::fail(
            name,
            format!("{p} cannot be used: {e}"),
            "hola refuses to start with it: fix it, or restore the previous state beside it \
             (NAME.prev)",
        ),
    }
}

#[cfg(test)]
#[path = "balancer_tests.rs"]
mod tests;
