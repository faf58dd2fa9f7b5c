//! The cluster lab, `lab up --nodes 2|3`: netlab's cluster topology
//! (`hola-lab-client` behind the router `hola-lab-rt`, which spreads the
//! VIP over the nodes with a multipath route hashed on the 5-tuple), BIRD
//! on the router and every node (the route is learned over BGP, with
//! BFD), and a `hola run` with `[cluster]` and `[bgp]` per node.
//!
//! ```text
//!   hola-lab-client 198.18.100.2 ── hola-lab-rt 198.18.100.1 | 198.18.0.1 ─┐
//!   hola-lab-n1..n3 198.18.0.2..4 (hola, [cluster])                        ├ hola-lab-sw: br0
//!   hola-lab-b1..b3 198.18.0.11..13, VIP 198.18.1.1 on lo                  ┘
//! ```
//!
//! The backends answer the client through the router.

use std::{fs, time::Instant};

use anyhow::{Context as _, Result};
use netlab::cluster::{ClusterSpec, Mode, Routing, node};

use super::{
    BPFFS, bird,
    config::{self, node_config, node_socket},
    hola_bin, lab_dir,
    processes::{self, HOLA_START_TIMEOUT, Proc},
    relative,
    topology::{self, BACKENDS},
};

/// Most nodes `lab up --nodes` makes.
pub(super) const MAX_NODES: usize = 3;

/// Makes the topology and starts the backends and `nodes` hola nodes.
pub(super) fn start(nodes: usize) -> Result<()> {
    fs::create_dir_all(lab_dir()).with_context(|| format!("creating {}", lab_dir().display()))?;
    netlab::cluster::build(&ClusterSpec {
        prefix: topology::PREFIX,
        client: "client",
        nodes,
        backends: BACKENDS,
        mode: Mode::Dsr,
        routing: Routing::Bgp,
    })
    .context("building the cluster lab's topology")?
    .keep();
    fs::create_dir_all(BPFFS)
        .with_context(|| format!("creating {BPFFS} (is bpffs mounted on /sys/fs/bpf?)"))?;
    processes::start_backends(&["0.0.0.0:80"], None, false)?;
    let key_file = config::write_cluster_key()?;
    bird::start_router(nodes)?;
    let mut started = Vec::new();
    for i in 1..=nodes {
        let (n, _) = node(i);
        processes::attach_peer(&n)?;
        config::write_node(i, &key_file)?;
        bird::start_node(i)?;
        let p = Proc::named(&format!("hola-{n}"));
        let pid = processes::start_hola(&p, &n, &node_config(i))?;
        println!(
            "lab: started hola run on {n} (PID {pid}, log {})",
            relative(&p.log_file())
        );
        started.push((i, p, pid));
    }
    let deadline = Instant::now() + HOLA_START_TIMEOUT;
    for (i, p, pid) in &started {
        processes::wait_for_hola(
            &format!("hola on n{i}"),
            p,
            *pid,
            &node_socket(*i),
            deadline,
        )?;
    }
    println!("lab: every node answers");
    bird::wait_for_routes(nodes)
}

pub(super) fn print_steps(nodes: usize) {
    let hola = relative(&hola_bin());
    let sock = |i| relative(&node_socket(i));
    println!(
        "\nThe cluster lab is up: {nodes} hola nodes (n1..n{nodes}, 198.18.0.2..) behind the router
hola-lab-rt, which spreads 198.18.1.1:80 over them by 5-tuple; b1, b2, b3 behind them (dsr).
Each node announces the VIP through BIRD (BGP with BFD) while a backend passes its checks;
the nodes find each other by multicast and replicate their flows. Try:

  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.1/; done
  {hola} --socket {} stats --json     # \"cluster\": peers, entries sent and received, lag
  cargo xtask lab status              # BGP sessions, the router's next hops
  # n1 drained: withdrawn over BGP, its flows continue on the others
  {hola} --socket {} node drain
  ip netns exec hola-lab-rt ip route show 198.18.1.1/32   # no longer via 198.18.0.2
  {hola} --socket {} node undrain
  cargo xtask lab down
",
        sock(1),
        sock(1),
        sock(1)
    );
}
