//! The cluster topology in test form: netlab's cluster lab (a client `cl`
//! behind a router that spreads the VIP's flows over two or three balancer
//! nodes with a multipath route, the nodes and the backends on one bridge;
//! see `netlab::cluster`), an XDP program on the nodes' bridge ports, and a
//! `hola run` per node (docs/cluster.md).

use aya::Ebpf;
use lb_userspace::programs;
pub use netlab::cluster::Routing;
pub use netlab::cluster::{CLIENT, Mode, ROUTER_BACK, ROUTER_FRONT, VIP, node};
use netlab::{
    cluster::ClusterSpec,
    lab::{SWITCH, port},
};

use crate::{
    daemon::{Daemon, GLOBAL},
    netns::{Topology, must},
    topo::{attach, backend},
};

/// The key every node of the test cluster shares.
pub const KEY: &str = "the lab cluster's shared key";

pub struct ClusterLab {
    pub t: Topology,
    pub nodes: usize,
    pub backends: usize,
    pub mode: Mode,
    _programs: Vec<Ebpf>,
}

impl ClusterLab {
    /// netlab's cluster topology with the client named `cl`, and an XDP
    /// program on every node's bridge port.
    pub fn new(prefix: &str, nodes: usize, backends: usize, mode: Mode) -> Self {
        Self::with_routing(prefix, nodes, backends, mode, Routing::Static)
    }

    /// [`ClusterLab::new`], with the router's routes to the VIP made as
    /// `routing` says (none for BGP: BIRD learns them).
    pub fn with_routing(
        prefix: &str,
        nodes: usize,
        backends: usize,
        mode: Mode,
        routing: Routing,
    ) -> Self {
        let t: Topology = must(netlab::cluster::build(&ClusterSpec {
            prefix,
            client: "cl",
            nodes,
            backends,
            mode,
            routing,
        }))
        .into();
        // A veth takes the frames its peer sends with XDP_TX only while it
        // has an XDP program itself.
        let progs = (1..=nodes)
            .map(|i| {
                let peer: &'static str = port(&node(i).0).leak();
                attach(&t.ns(SWITCH), programs::BENCH, "bench_pass", peer)
            })
            .collect();
        ClusterLab {
            t,
            nodes,
            backends,
            mode,
            _programs: progs,
        }
    }

    /// The router sends the VIP's flows to these nodes (1-based), spread
    /// by 5-tuple: what a routing daemon does as nodes announce or withdraw.
    pub fn route_via(&self, nodes: &[usize]) {
        must(netlab::cluster::route_via(self.t.net(), nodes));
    }

    /// How the backends reach the client: through the router (dsr: replies
    /// go straight back), or spread over these nodes (nat: replies must be
    /// translated back by a node).
    pub fn backends_via(&self, nodes: &[usize]) {
        must(netlab::cluster::backends_via(
            self.t.net(),
            self.mode,
            self.backends,
            nodes,
        ));
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
