//! Reading what the checks judge: /proc and /sys, the kernel's links and
//! addresses over rtnetlink, the programs attached, bpffs, the control
//! socket, the state file and the daemon's stats. Everything is read in
//! the caller's network namespace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::Path,
};

use anyhow::Context as _;
use aya::programs::{links::PinnedLink, loaded_programs};
use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkFlags, LinkXdp, XdpAttached},
};

use super::{
    Check, backend,
    balancer::{self, LinkPin, SocketSeen, StateSeen},
    iface::{Conf, Iface, Prog, XdpMode},
};
use crate::{
    api::{VipRef, paths},
    client,
    config::{self, VipMode},
    daemon, dataplane, state,
};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `net.ipv4.conf.NAME.*`
pub fn conf(name: &str) -> Conf {
    let get = |key: &str| {
        read(&format!("/proc/sys/net/ipv4/conf/{name}/{key}")).and_then(|v| v.trim().parse().ok())
    };
    Conf {
        rp_filter: get("rp_filter"),
        arp_ignore: get("arp_ignore"),
        arp_announce: get("arp_announce"),
    }
}

fn release() -> String {
    read("/proc/sys/kernel/osrelease").map_or_else(|| "unknown".into(), |r| r.trim().to_owned())
}

/// Every loaded program by id (only the ids asked for).
fn progs(ids: &[u32]) -> BTreeMap<u32, Prog> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return out;
    }
    for p in loaded_programs().flatten() {
        if ids.contains(&p.id()) {
            out.insert(
                p.id(),
                Prog {
                    id: p.id(),
                    name: p.name_as_str().unwrap_or("").to_owned(),
                    tag: p.tag(),
                    jited: p.size_jitted() > 0,
                },
            );
        }
    }
    out
}

/// Every interface of this network namespace, with its XDP program.
pub async fn interfaces() -> anyhow::Result<Vec<Iface>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    let mut prog_ids = Vec::new();
    while let Some(m) = links.try_next().await.context("listing links")? {
        let mut i = Iface {
            name: String::new(),
            index: m.header.index,
            mtu: 0,
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            up: m.header.flags.contains(LinkFlags::Up),
            xdp: XdpMode::None,
            prog: None,
        };
        let mut id = None;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => i.name.clone_from(n),
                LinkAttribute::Mtu(v) => i.mtu = *v,
                LinkAttribute::Xdp(xs) => {
                    for x in xs {
                        match x {
                            LinkXdp::Attached(XdpAttached::Driver) => i.xdp = XdpMode::Native,
                            LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                                i.xdp = XdpMode::Generic;
                            }
                            LinkXdp::Attached(XdpAttached::Hardware) => i.xdp = XdpMode::Offload,
                            LinkXdp::Attached(XdpAttached::Multiple) => i.xdp = XdpMode::Multi,
                            LinkXdp::ProgId(p) if *p != 0 => id = Some(*p),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        prog_ids.extend(id);
        out.push((i, id));
    }
    task.abort();
    let progs = progs(&prog_ids);
    Ok(out
        .into_iter()
        .map(|(mut i, id)| {
            i.prog = id.map(|id| {
                progs.get(&id).cloned().unwrap_or(Prog {
                    id,
                    name: String::new(),
                    tag: 0,
                    jited: false,
                })
            });
            i
        })
        .collect())
}

/// Every address of this network namespace: (interface, loopback, address).
async fn addresses(ifaces: &[Iface]) -> anyhow::Result<Vec<(String, bool, IpAddr)>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut msgs = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(m) = msgs.try_next().await.context("listing addresses")? {
        let Some(i) = ifaces.iter().find(|i| i.index == m.header.index) else {
            continue;
        };
        for a in &m.attributes {
            if let AddressAttribute::Local(ip) | AddressAttribute::Address(ip) = a {
                let e = (i.name.clone(), i.loopback, *ip);
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
    }
    task.abort();
    Ok(out)
}

/// TCP sockets in LISTEN (state 0A) or bound UDP sockets (state 07) in a
/// `/proc/net/{tcp,tcp6,udp,udp6}` table.
pub fn parse_proc_net(text: &str, want_state: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(st)) = (f.get(1), f.get(3)) else {
            continue;
        };
        if *st != want_state {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        // The kernel prints the address as 32-bit words in host order.
        let words: Option<Vec<u32>> = (0..addr.len() / 8)
            .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
            .collect();
        let ip = match words.as_deref() {
            Some([w]) => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
            Some([a, b, c, d]) => {
                let mut o = [0u8; 16];
                for (i, w) in [a, b, c, d].into_iter().enumerate() {
                    o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => continue,
        };
        out.push(SocketAddr::new(ip, port));
    }
    out
}

fn listeners(proto: config::Protocol) -> Vec<SocketAddr> {
    let (tables, st) = match proto {
        config::Protocol::Tcp => (["tcp", "tcp6"], "0A"),
        config::Protocol::Udp => (["udp", "udp6"], "07"),
    };
    tables
        .iter()
        .filter_map(|t| read(&format!("/proc/self/net/{t}")))
        .flat_map(|text| parse_proc_net(&text, st))
        .collect()
}

fn sysctls(ifaces: &[Iface]) -> BTreeMap<String, Conf> {
    ifaces
        .iter()
        .map(|i| (i.name.clone(), conf(&i.name)))
        .collect()
}

/// What `hola doctor --backend` reads.
pub async fn backend(vip: VipRef, mode: VipMode) -> anyhow::Result<backend::Seen> {
    let interfaces = interfaces().await?;
    Ok(backend::Seen {
        vip,
        mode,
        addrs: addresses(&interfaces).await?,
        conf: sysctls(&interfaces),
        conf_all: conf("all"),
        listeners: listeners(vip.protocol),
        interfaces,
    })
}

fn socket_seen(path: &Path) -> SocketSeen {
    match std::fs::symlink_metadata(path) {
        Err(_) => SocketSeen::Missing,
        Ok(m) if !m.file_type().is_socket() => SocketSeen::NotSocket,
        Ok(m) => SocketSeen::Socket {
            mode: m.mode(),
            uid: m.uid(),
        },
    }
}

fn state_seen(config_path: &Path, state_path: &Path) -> StateSeen {
    if !state_path.exists() {
        return StateSeen::Missing;
    }
    match state::effective_config(config_path) {
        Ok(c) => StateSeen::Vips(c.vips.len()),
        Err(e) => StateSeen::Unusable(format!("{e:#}")),
    }
}

/// The balancer's checks with the configuration at `config_path`, or, when
/// it cannot be read, the checks that need none and its failure.
pub async fn balancer_checks(config_path: &Path, client_mtu: u32) -> anyhow::Result<Vec<Check>> {
    match config::load(config_path) {
        Ok(cfg) => Ok(balancer::checks(
            &balancer(config_path, &cfg, client_mtu).await?,
        )),
        Err(e) => Ok(balancer::unconfigured(
            &unconfigured(),
            config_path,
            &e.to_string(),
        )),
    }
}

/// A [`balancer::Seen`] of the host alone (no configuration to go by).
fn unconfigured() -> balancer::Seen {
    balancer::Seen {
        release: release(),
        jit: read("/proc/sys/net/core/bpf_jit_enable"),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        mounts: read("/proc/self/mounts").unwrap_or_default(),
        interfaces: Vec::new(),
        conf_all: Conf::default(),
        conf: BTreeMap::new(),
        pin_dir: Default::default(),
        maps: Vec::new(),
        pins: crate::dataplane::PinsPreview::Current,
        links: Vec::new(),
        build_tag: Err("no configuration".into()),
        socket_path: Default::default(),
        socket: SocketSeen::Missing,
        stats: Err("no configuration".into()),
        state_path: Default::default(),
        state: StateSeen::Missing,
        client_mtu: 0,
    }
}

/// What `hola doctor` reads on a balancer run with `cfg`, read from
/// `config_path`.
pub async fn balancer(
    config_path: &Path,
    cfg: &config::Config,
    client_mtu: u32,
) -> anyhow::Result<balancer::Seen> {
    let g = &cfg.global;
    let all = interfaces().await?;
    let dp = dataplane::DataplaneConfig::from_config(cfg)?;
    let links = g
        .interfaces
        .iter()
        .map(|n| {
            let path = daemon::link_pin(&g.bpffs_dir, n);
            let prog_id = path.exists().then(|| {
                PinnedLink::from_pin(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|l| {
                        aya::programs::links::FdLink::from(l)
                            .info()
                            .map(|i| i.program_id())
                            .map_err(|e| e.to_string())
                    })
            });
            LinkPin {
                iface: n.clone(),
                path,
                prog_id,
            }
        })
        .collect();
    let stats = client::get_json(&g.control_socket, paths::STATS)
        .await
        .map_err(|e| format!("{e:#}"));
    Ok(balancer::Seen {
        release: release(),
        jit: read("/proc/sys/net/core/bpf_jit_enable"),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        mounts: read("/proc/self/mounts").unwrap_or_default(),
        interfaces: g
            .interfaces
            .iter()
            .map(|n| (n.clone(), all.iter().find(|i| i.name == *n).cloned()))
            .collect(),
        conf_all: conf("all"),
        conf: sysctls(&all),
        pin_dir: g.bpffs_dir.clone(),
        maps: dataplane::pinned_maps(&dp, &g.bpffs_dir)?,
        pins: dataplane::pins_preview(&dp, &g.bpffs_dir),
        links,
        build_tag: dataplane::build_tag(&dp).map_err(|e| e.to_string()),
        socket_path: g.control_socket.clone(),
        socket: socket_seen(&g.control_socket),
        stats,
        state_path: g.state_file.clone(),
        state: state_seen(config_path, &g.state_file),
        client_mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables_give_listening_sockets() {
        // A real /proc/net/tcp (x86: little-endian words): 0.0.0.0:80
        // listening, 198.18.1.1:8080 listening, one established.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 010112C6:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n\
   2: 0B0012C6:0050 010012C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let l = parse_proc_net(tcp, "0A");
        if cfg!(target_endian = "little") {
            assert_eq!(
                l,
                vec![
                    "0.0.0.0:80".parse().unwrap(),
                    "198.18.1.1:8080".parse().unwrap()
                ]
            );
        }
        let tcp6 = "  sl  local_address ...\n\
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n";
        assert_eq!(
            parse_proc_net(tcp6, "0A"),
            vec!["[::]:443".parse().unwrap()]
        );
        assert!(parse_proc_net(tcp6, "07").is_empty());
    }
}
