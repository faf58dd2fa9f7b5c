use std::path::PathBuf;

use super::*;
use crate::{
    doctor::{
        Status,
        iface::{Prog, XdpMode},
    },
    stats::{BackendReport, VipReport},
};

fn eth0(mtu: u32) -> Iface {
    Iface {
        name: "eth0".into(),
        index: 2,
        mtu,
        loopback: false,
        up: true,
        xdp: XdpMode::Native,
        prog: Some(Prog {
            id: 41,
            name: PROG.into(),
            tag: 0xabc,
            jited: true,
        }),
    }
}

fn backend(address: &str, resolved: bool) -> BackendReport {
    BackendReport {
        address: address.into(),
        nexthop_resolved: resolved,
        ..BackendReport::default()
    }
}

/// A healthy balancer: every check ok.
fn seen() -> Seen {
    let stats = StatsReport {
        vips: vec![
            VipReport {
                vip: "198.18.1.1:80/tcp".into(),
                mode: "dsr".into(),
                backends: vec![backend("198.18.0.11", true)],
                ..VipReport::default()
            },
            VipReport {
                vip: "198.18.1.2:80/tcp".into(),
                mode: "tunnel".into(),
                backends: vec![backend("198.18.0.12", true)],
                ..VipReport::default()
            },
        ],
        ..StatsReport::default()
    };
    Seen {
        release: "6.12.0".into(),
        jit: Some("1\n".into()),
        btf: true,
        mounts: "bpf /sys/fs/bpf bpf rw 0 0\n".into(),
        interfaces: vec![("eth0".into(), Some(eth0(1520)))],
        conf_all: Conf::default(),
        conf: BTreeMap::new(),
        pin_dir: "/sys/fs/bpf/hola".into(),
        maps: vec![MapPin {
            name: "FLOWS",
            wanted: 100,
            pinned: Some(Ok(100)),
        }],
        pins: crate::dataplane::PinsPreview::Current,
        links: vec![LinkPin {
            iface: "eth0".into(),
            path: "/sys/fs/bpf/hola/links/eth0".into(),
            prog_id: Some(Ok(41)),
        }],
        build_tag: Ok(0xabc),
        socket_path: "/run/hola/hola.sock".into(),
        socket: SocketSeen::Socket {
            mode: 0o140600,
            uid: 0,
        },
        stats: Ok(stats),
        state_path: PathBuf::from("/var/lib/hola/state.toml"),
        state: StateSeen::Vips(2),
        client_mtu: 1500,
    }
}

fn failing(s: &Seen) -> Vec<Check> {
    checks(s)
        .into_iter()
        .filter(|c| c.status != Status::Ok)
        .collect()
}

#[test]
fn a_healthy_balancer_is_all_ok() {
    let c = checks(&seen());
    assert_eq!(failing(&seen()), vec![], "{c:#?}");
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "bpf jit",
            "btf",
            "bpffs",
            "xdp eth0",
            "rp_filter eth0",
            "pinned maps",
            "pinned link eth0",
            "control socket",
            "next hop 198.18.0.11 (198.18.1.1:80/tcp)",
            "next hop 198.18.0.12 (198.18.1.2:80/tcp)",
            "tunnel headroom 198.18.1.2:80/tcp",
            "state file",
        ]
    );
}

#[test]
fn an_unresolved_next_hop_fails_with_its_backend() {
    let mut s = seen();
    if let Ok(st) = &mut s.stats {
        st.vips[0].backends.push(backend("198.18.0.99", false));
    }
    let f = failing(&s);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].name, "next hop 198.18.0.99 (198.18.1.1:80/tcp)");
    assert_eq!(f[0].status, Status::Fail);
    assert!(
        f[0].fix
            .as_ref()
            .unwrap()
            .contains("ip neigh show 198.18.0.99")
    );
}

#[test]
fn tunnel_headroom_counts_the_outer_header() {
    let mut s = seen();
    s.interfaces = vec![("eth0".into(), Some(eth0(1500)))];
    let f = failing(&s);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].name, "tunnel headroom 198.18.1.2:80/tcp");
    assert_eq!(f[0].status, Status::Warn);
    assert!(
        f[0].saw.contains("1520 bytes: larger than eth0 mtu 1500"),
        "{}",
        f[0].saw
    );
    s.client_mtu = 1480;
    assert_eq!(failing(&s), vec![]);
}

#[test]
fn pins_missing_resized_or_of_another_build() {
    let mut s = seen();
    s.maps[0].pinned = None;
    assert!(failing(&s)[0].saw.starts_with("no map pinned under"));
    let mut s = seen();
    s.maps[0].pinned = Some(Ok(50));
    let f = failing(&s);
    assert_eq!(
        f[0].saw,
        "FLOWS: pinned with 50 entries, the configuration asks for 100: the next hola run \
         refuses to start"
    );
    // Pins of an older build that lack a map this build adds: the next
    // hola run upgrades them (a warning naming what it does), unless it
    // refuses them (a failure with its reason).
    let mut s = seen();
    s.maps.push(MapPin {
        name: "VIP_DIRECT4",
        wanted: 4096,
        pinned: None,
    });
    s.pins = crate::dataplane::PinsPreview::Upgrade {
        build: "0123456789abcdef".into(),
        created: vec!["VIP_DIRECT4".into()],
        converted: vec!["FLOWS".into()],
    };
    let f = failing(&s);
    assert_eq!(f[0].status, Status::Warn);
    assert_eq!(
        f[0].saw,
        "pinned by another build (0123456789abcdef): the next hola run of this build upgrades \
         them in place, creating VIP_DIRECT4 and converting FLOWS (every flow and counter kept)"
    );
    s.pins = crate::dataplane::PinsPreview::Upgrade {
        build: "0123456789abcdef".into(),
        created: vec![],
        converted: vec![],
    };
    let f = failing(&s);
    assert_eq!(f[0].status, Status::Fail);
    assert_eq!(f[0].saw, "missing under /sys/fs/bpf/hola/maps: VIP_DIRECT4");
    s.pins = crate::dataplane::PinsPreview::Refused("no converter for FLOWS".into());
    let f = failing(&s);
    assert_eq!(f[0].status, Status::Fail);
    assert_eq!(
        f[0].saw,
        "the next hola run of this build refuses the pins under /sys/fs/bpf/hola: no \
         converter for FLOWS"
    );
    let mut s = seen();
    s.build_tag = Ok(0xdef);
    let f = failing(&s);
    assert_eq!(f[0].name, "pinned link eth0");
    assert_eq!(f[0].status, Status::Warn);
    let mut s = seen();
    s.links[0].prog_id = None;
    assert_eq!(failing(&s)[0].status, Status::Fail);
}

#[test]
fn socket_and_state() {
    let mut s = seen();
    s.socket = SocketSeen::Socket {
        mode: 0o140666,
        uid: 0,
    };
    assert_eq!(
        failing(&s)[0].saw,
        "/run/hola/hola.sock: mode 666, owner uid 0: others than root can change VIPs"
    );
    let mut s = seen();
    s.socket = SocketSeen::Missing;
    s.stats = Err("cannot reach".into());
    let f = failing(&s);
    assert_eq!(
        f.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["control socket", "next hops"]
    );
    let mut s = seen();
    s.state = StateSeen::Unusable("bad TOML".into());
    assert_eq!(failing(&s)[0].status, Status::Fail);
}

#[test]
fn strict_rp_filter_and_a_missing_interface() {
    let mut s = seen();
    s.conf_all.rp_filter = Some(1);
    let f = failing(&s);
    assert_eq!(f[0].name, "rp_filter eth0");
    assert_eq!(f[0].status, Status::Warn);
    let mut s = seen();
    s.interfaces = vec![("eth9".into(), None)];
    assert_eq!(
        failing(&s)[0].saw,
        "no interface eth9 in this network namespace"
    );
}

#[test]
fn without_a_configuration_the_host_is_still_checked() {
    let c = unconfigured(
        &seen(),
        std::path::Path::new("/etc/hola/hola.toml"),
        "not found",
    );
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["kernel", "bpf jit", "btf", "bpffs", "configuration"]
    );
    assert_eq!(c[4].status, Status::Fail);
    assert_eq!(c[4].saw, "/etc/hola/hola.toml: not found");
}
