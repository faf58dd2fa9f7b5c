//! The cluster topology in test form: a client behind a router that spreads
//! the VIP's flows over two or three balancer nodes with a multipath route
//! (ECMP, hashed on the 5-tuple), the nodes and the backends on one
//! bridge, and a `hola run` per node (docs/cluster.md).
//!
//! ```text
//!  cl 198.18.100.2 ── rt 198.18.100.1 / 198.18.0.1 ── br0 ── n1 198.18.0.2
//!                                                        ├── n2 198.18.0.3
//!                                                        ├── (n3 198.18.0.4)
//!                                                        └── b1.. 198.18.0.11..
//! ```
//!
//! In `dsr` mode the backends answer the client through the router; in
//! `nat` mode their replies go back through the nodes, spread by a
//! multipath route of their own (so a reply may reach another node than
//! its request: only replication makes that work).

use aya::Ebpf;
use lb_userspace::programs;

use crate::{
    daemon::{Daemon, GLOBAL},
    netns::{Topology, ns_cmd},
    topo::{attach, backend},
};

pub const CLIENT: &str = "198.18.100.2";
pub const ROUTER_FRONT: &str = "198.18.100.1";
pub const ROUTER_BACK: &str = "198.18.0.1";
pub const VIP: &str = "198.18.1.1";
/// The key every node of the test cluster shares.
pub const KEY: &str = "the lab cluster's shared key";

/// Node `i` (1-based): name and address.
pub fn node(i: usize) -> (String, String) {
    (format!("n{i}"), format!("198.18.0.{}", 1 + i))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dsr,
    Nat,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        }
    }
}

pub struct ClusterLab {
    pub t: Topology,
    pub nodes: usize,
    pub backends: usize,
    pub mode: Mode,
    _programs: Vec<Ebpf>,
}

impl ClusterLab {
    pub fn new(prefix: &str, nodes: usize, backends: usize, mode: Mode) -> Self {
        let mut hosts = vec!["sw".to_string(), "cl".to_string(), "rt".to_string()];
        hosts.extend((1..=nodes).map(|i| node(i).0));
        hosts.extend((1..=backends).map(|i| backend(i).0));
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let t = Topology::new(prefix, &refs);
        t.ip("sw", &["link", "add", "br0", "type", "bridge"]);
        // Announcements go to every port (no IGMP snooping to wait for).
        ns_cmd(
            &t.ns("sw"),
            "ip",
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        t.ip("sw", &["link", "set", "br0", "up"]);

        t.link("cl", "eth0", "rt", "eth0");
        t.ip(
            "cl",
            &["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"],
        );
        t.ip("cl", &["route", "add", "default", "via", ROUTER_FRONT]);
        t.ip(
            "rt",
            &["addr", "add", &format!("{ROUTER_FRONT}/24"), "dev", "eth0"],
        );

        let mut on_bridge: Vec<(String, String, &str)> =
            vec![("rt".into(), ROUTER_BACK.into(), "eth1")];
        on_bridge.extend((1..=nodes).map(|i| {
            let (n, a) = node(i);
            (n, a, "eth0")
        }));
        on_bridge.extend((1..=backends).map(|i| {
            let (b, a) = backend(i);
            (b, a, "eth0")
        }));
        for (h, addr, dev) in &on_bridge {
            let port = format!("p-{h}");
            t.link(h, dev, "sw", &port);
            t.ip("sw", &["link", "set", &port, "master", "br0"]);
            t.ip(h, &["addr", "add", &format!("{addr}/24"), "dev", dev]);
            t.sysctl(h, "net.ipv4.conf.all.rp_filter=0");
            t.sysctl(h, &format!("net.ipv4.conf.{dev}.rp_filter=0"));
            // XDP moves frames on: no checksum offload left to finish.
            ns_cmd(&t.ns(h), "ethtool", &["-K", dev, "tx", "off"]);
        }
        ns_cmd(&t.ns("cl"), "ethtool", &["-K", "eth0", "tx", "off"]);
        ns_cmd(&t.ns("rt"), "ethtool", &["-K", "eth0", "tx", "off"]);
        t.sysctl("rt", "net.ipv4.ip_forward=1");
        t.sysctl("rt", "net.ipv4.fib_multipath_hash_policy=1");
        let all: Vec<usize> = (1..=nodes).collect();
        let lab = ClusterLab {
            t,
            nodes,
            backends,
            mode,
            _programs: Vec::new(),
        };
        lab.route_via(&all);
        let mut progs = Vec::new();
        for i in 1..=backends {
            let (b, _) = backend(i);
            lab.t.sysctl(&b, "net.ipv4.fib_multipath_hash_policy=1");
            match mode {
                Mode::Dsr => {
                    lab.t
                        .ip(&b, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                    lab.t.sysctl(&b, "net.ipv4.conf.lo.rp_filter=0");
                }
                Mode::Nat => {}
            }
        }
        lab.backends_via(&all);
        // A veth takes the frames its peer sends with XDP_TX only while it
        // has an XDP program itself.
        for i in 1..=nodes {
            progs.push(attach(
                &lab.t.ns("sw"),
                programs::BENCH,
                "bench_pass",
                Box::leak(format!("p-{}", node(i).0).into_boxed_str()),
            ));
        }
        ClusterLab {
            _programs: progs,
            ..lab
        }
    }

    /// The router sends the VIP's flows to these nodes (1-based), spread
    /// by 5-tuple: what a routing daemon does as nodes announce or withdraw.
    pub fn route_via(&self, nodes: &[usize]) {
        let mut args = vec!["route".to_string(), "replace".into(), format!("{VIP}/32")];
        if nodes.len() == 1 {
            args.extend(["via".into(), node(nodes[0]).1]);
        } else {
            for i in nodes {
                args.extend(["nexthop".into(), "via".into(), node(*i).1]);
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.t.ip("rt", &refs);
    }

    /// How the backends reach the client: through the router (dsr: replies
    /// go straight back), or spread over these nodes (nat: replies must be
    /// translated back by a node).
    pub fn backends_via(&self, nodes: &[usize]) {
        let mut args = vec![
            "route".to_string(),
            "replace".into(),
            "198.18.100.0/24".into(),
        ];
        match self.mode {
            Mode::Dsr => args.extend(["via".into(), ROUTER_BACK.into()]),
            Mode::Nat if nodes.len() == 1 => args.extend(["via".into(), node(nodes[0]).1]),
            Mode::Nat => {
                for i in nodes {
                    args.extend(["nexthop".into(), "via".into(), node(*i).1]);
                }
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        for i in 1..=self.backends {
            self.t.ip(&backend(i).0, &refs);
        }
    }

    /// The configuration of node `i`: the VIP with `backends` backends (the
    /// first ones), and a `[cluster]` with `key` and `replicate`.
    pub fn config(&self, i: usize, backends: usize, key: &str, replicate: bool) -> String {
        let mut c = format!(
            r#"{GLOBAL}
[cluster]
id = "lab"
key = "{key}"
node = "{}"
announce_interval = "200ms"
peer_timeout = "1s"
replicate = {replicate}

[[vip]]
address = "{VIP}"
port = 80
protocol = "tcp"
mode = "{}"
"#,
            node(i).0,
            self.mode.name()
        );
        for b in 1..=backends {
            c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend(b).1);
        }
        c
    }

    /// Starts `hola run` on node `i`.
    pub fn start(&self, prefix: &str, i: usize, config: &str) -> Daemon {
        Daemon::start(
            &format!("{prefix}-{}", node(i).0),
            &self.t.ns(&node(i).0),
            config,
        )
    }

    /// Node `i` dies: its daemon is killed and its link goes down (the
    /// data plane, pinned, would otherwise keep forwarding).
    pub fn kill(&self, i: usize, d: &mut Daemon) {
        d.kill(libc::SIGKILL);
        self.t.ip(&node(i).0, &["link", "set", "eth0", "down"]);
    }
}
