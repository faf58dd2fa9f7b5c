use super::*;
use crate::{
    config::Protocol,
    doctor::{
        Status,
        iface::{Prog, XdpMode},
    },
};

fn link(name: &str, loopback: bool, prog: Option<&str>) -> Iface {
    Iface {
        name: name.into(),
        index: if loopback { 1 } else { 2 },
        mtu: 1500,
        loopback,
        up: true,
        xdp: if prog.is_some() {
            XdpMode::Native
        } else {
            XdpMode::None
        },
        prog: prog.map(|n| Prog {
            id: 9,
            name: n.into(),
            tag: 1,
            jited: true,
        }),
    }
}

const VIP: &str = "198.18.1.2";

/// A tunnel backend set up right.
fn seen() -> Seen {
    let arp = Conf {
        rp_filter: Some(0),
        arp_ignore: Some(1),
        arp_announce: Some(2),
    };
    Seen {
        vip: VipRef {
            address: VIP.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        },
        mode: VipMode::Tunnel,
        addrs: vec![
            ("lo".into(), true, "127.0.0.1".parse().unwrap()),
            ("lo".into(), true, VIP.parse().unwrap()),
            ("eth0".into(), false, "198.18.0.12".parse().unwrap()),
        ],
        interfaces: vec![link("lo", true, None), link("eth0", false, Some(DECAP))],
        conf_all: arp,
        conf: BTreeMap::new(),
        listeners: vec!["0.0.0.0:80".parse().unwrap()],
    }
}

fn failing(s: &Seen) -> Vec<Check> {
    checks(s)
        .into_iter()
        .filter(|c| c.status != Status::Ok)
        .collect()
}

#[test]
fn a_backend_set_up_right_is_all_ok() {
    let c = checks(&seen());
    assert_eq!(failing(&seen()), vec![], "{c:#?}");
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vip 198.18.1.2",
            "arp_ignore eth0",
            "arp_announce eth0",
            "rp_filter eth0",
            "decap",
            "listening 198.18.1.2:80/tcp",
        ]
    );
}

#[test]
fn each_fault_is_named_with_its_fix() {
    let mut s = seen();
    s.addrs.retain(|(_, _, a)| a.to_string() != VIP);
    let f = failing(&s);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].fix.as_deref(),
        Some(
            "ip addr add 198.18.1.2/32 dev lo (and in the host's network configuration, to keep it)"
        )
    );

    let mut s = seen();
    s.addrs.push(("eth0".into(), false, VIP.parse().unwrap()));
    s.addrs
        .retain(|(n, _, a)| !(n == "lo" && a.to_string() == VIP));
    assert!(failing(&s)[0].saw.starts_with("on eth0, not on a loopback"));

    let mut s = seen();
    s.conf_all.arp_ignore = Some(0);
    let f = failing(&s);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].name, "arp_ignore eth0");
    assert_eq!(f[0].status, Status::Fail);

    let mut s = seen();
    s.interfaces[1].prog = None;
    let f = failing(&s);
    assert_eq!(f[0].name, "decap");
    assert_eq!(
        f[0].fix.as_deref(),
        Some("hola decap attach --iface eth0 --pin /sys/fs/bpf/hola-decap/eth0")
    );

    let mut s = seen();
    s.listeners = vec![
        "0.0.0.0:8080".parse().unwrap(),
        "198.18.0.12:80".parse().unwrap(),
    ];
    assert_eq!(failing(&s)[0].name, "listening 198.18.1.2:80/tcp");
}

#[test]
fn modes_choose_the_checks() {
    let mut s = seen();
    s.mode = VipMode::Dsr;
    s.interfaces[1].prog = None;
    assert_eq!(failing(&s), vec![]);
    let mut s = seen();
    s.mode = VipMode::Nat;
    s.addrs.clear();
    s.listeners = vec!["198.18.0.12:80".parse().unwrap()];
    let names: Vec<String> = checks(&s).into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["rp_filter eth0", "listening 198.18.1.2:80/tcp"]);
    assert_eq!(failing(&s), vec![]);
}

#[test]
fn a_v6_wildcard_takes_v4_but_not_the_reverse() {
    let mut s = seen();
    s.listeners = vec!["[::]:80".parse().unwrap()];
    assert_eq!(failing(&s), vec![]);
    s.vip.address = "2001:db8:1::2".parse().unwrap();
    s.addrs.push(("lo".into(), true, s.vip.address));
    s.listeners = vec!["0.0.0.0:80".parse().unwrap()];
    assert_eq!(failing(&s)[0].name, "listening [2001:db8:1::2]:80/tcp");
}
