//! BIRD 2 in the cluster lab (`lab up --nodes 2|3`, docs/cluster.md): one
//! BIRD on the router `hola-lab-rt` (a BGP session with BFD per node, the
//! nodes' routes merged into one multipath route) and one per node, whose
//! configuration is the lab's base plus what `hola bgp config` prints for
//! the node's hola.toml. Each BIRD has its configuration, control socket
//! and log in `target/lab/bird/<host>/`, runs in the foreground (`-f`) and
//! is tracked by its PID file like every process of the lab.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netlab::{
    bird,
    cluster::{ROUTER, ROUTER_BACK, VIP, node},
};

use super::{
    config::node_config,
    hola_bin, lab_dir,
    processes::{Proc, spawn_in},
    relative,
    topology::ns_exec,
};
use crate::run_output;

/// BIRD's directory for `host` (`rt`, `n1`, ...).
pub(super) fn dir(host: &str) -> PathBuf {
    lab_dir().join("bird").join(host)
}

pub(super) fn conf(host: &str) -> PathBuf {
    dir(host).join("bird.conf")
}

pub(super) fn socket(host: &str) -> PathBuf {
    dir(host).join("bird.ctl")
}

/// How long the router may take to learn every node's route.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(40);

/// Writes `text` as `host`'s bird.conf, has BIRD check it, starts it.
fn start(host: &str, text: &str) -> Result<()> {
    fs::create_dir_all(dir(host)).with_context(|| format!("creating {}", dir(host).display()))?;
    fs::write(conf(host), text).with_context(|| format!("writing {}", conf(host).display()))?;
    run_output(
        std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(conf(host)),
    )
    .with_context(|| format!("BIRD refuses {}", conf(host).display()))?;
    let p = Proc::named(&format!("bird-{host}"));
    let pid = spawn_in(
        &p,
        host,
        "bird",
        &[
            "-f".into(),
            "-c".into(),
            conf(host).display().to_string(),
            "-s".into(),
            socket(host).display().to_string(),
        ],
    )?;
    println!(
        "lab: started BIRD on {host} (PID {pid}, log {})",
        relative(&dir(host).join("bird.log"))
    );
    Ok(())
}

/// The router's BIRD, with a session per node `1..=nodes`.
pub(super) fn start_router(nodes: usize) -> Result<()> {
    let peers: Vec<(String, String)> = (1..=nodes).map(node).collect();
    start(
        ROUTER,
        &bird::router_config(ROUTER_BACK, &peers, &dir(ROUTER).join("bird.log")),
    )
}

/// Node `i`'s BIRD: the base and `hola bgp config` for its hola.toml.
pub(super) fn start_node(i: usize) -> Result<()> {
    let host = node(i).0;
    let fragment = run_output(
        std::process::Command::new(hola_bin())
            .args(["bgp", "config", "--config"])
            .arg(node_config(i)),
    )
    .context("hola bgp config")?;
    start(
        &host,
        &(bird::node_base(&dir(&host).join("bird.log")) + &fragment),
    )
}

/// The router's next hops for the VIP.
fn router_hops() -> Result<Vec<String>> {
    let out = ns_exec(ROUTER, "ip", &["route", "show", &format!("{VIP}/32")])?;
    Ok(bird::nexthops(&out))
}

/// Waits until the router's route to the VIP goes through every node.
pub(super) fn wait_for_routes(nodes: usize) -> Result<()> {
    let mut want: Vec<String> = (1..=nodes).map(|i| node(i).1).collect();
    want.sort();
    let deadline = Instant::now() + ROUTE_TIMEOUT;
    loop {
        let now = router_hops()?;
        if now == want {
            println!(
                "lab: the router learned {VIP} over BGP with next hops {}",
                now.join(", ")
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the router's route to {VIP} goes through {now:?}, not {want:?}, {}s after the \
                 nodes started; `cargo xtask lab status` shows the BGP sessions, and the BIRD \
                 logs are in {}",
                ROUTE_TIMEOUT.as_secs(),
                relative(&lab_dir().join("bird"))
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lab status`: the router's sessions and its route to the VIP.
pub(super) fn status() {
    if !socket(ROUTER).exists() {
        return;
    }
    match bird::birdc(&socket(ROUTER), &["show", "protocols"]) {
        Ok(out) => println!(
            "BGP sessions on the router (birdc show protocols):\n{}",
            out.trim_end()
        ),
        Err(e) => println!("BGP sessions on the router: {e}"),
    }
    match ns_exec(ROUTER, "ip", &["route", "show", &format!("{VIP}/32")]) {
        Ok(out) if out.trim().is_empty() => {
            println!("the router's route to {VIP}: none (no node announces it)")
        }
        Ok(out) => println!(
            "the router's route to {VIP} (next hops {}):\n{}",
            bird::nexthops(&out).join(", "),
            out.trim_end()
        ),
        Err(e) => println!("the router's route to {VIP}: {e:#}"),
    }
}
