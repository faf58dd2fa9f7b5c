//! `cargo xtask lab up|down|status`: a live topology in network namespaces
//! with the `hola` daemon in front of three backends, for a person to try.
//!
//! ```text
//!   hola-lab-client  eth0 198.18.0.1   2001:db8::1  ─┐
//!   hola-lab-lb      eth0 198.18.0.2   2001:db8::2  ─┤  hola-lab-sw: br0
//!   hola-lab-b1..b3  eth0 198.18.0.11  2001:db8::11 ─┘  (ports p-client, p-lb, p-b1..p-b3)
//!                    ..13  ..13; VIPs on lo: 198.18.1.1, 198.18.1.2, 2001:db8:1::1, 2001:db8:1::2
//! ```
//!
//! Everything it makes is named `hola-lab-*` (namespaces, /sys/fs/bpf/hola-lab)
//! or lives in `target/lab/`; the processes it starts are recorded in PID
//! files there, and `lab down` stops only those, and only while
//! `/proc/PID/cmdline` is still the program it started. `lab down` works
//! after a crash and twice in a row.
//!
//! - this file: the entry points (`up`, `down`, `status`, `cargo xtask run`)
//!   and where things live;
//! - [`topology`]: the namespaces, veths, bridge, addresses and routes
//!   (netlab's lab, plus the NAT subnet);
//! - [`processes`]: hola, hola-backend and the XDP programs it attaches,
//!   their PID files, and stopping only what the lab started;
//! - [`config`]: the hola.toml files the lab writes;
//! - [`cluster`]: `lab up --nodes 2|3`, hola nodes behind an ECMP router;
//! - [`bird`]: BIRD 2 on that router and on every node (BGP with BFD).

mod bird;
mod cluster;
mod config;
mod processes;
mod topology;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use self::{
    config::{config_path, socket_path},
    processes::{Proc, procs},
};
use crate::{command, is_root, repo_root, run_output, run_status, toolchain};

#[derive(Subcommand)]
pub(crate) enum Lab {
    /// Build hola and hola-backend, make the topology, start the backends and hola.
    Up {
        /// Balancer nodes: 1 (the default) is one hola in front of the
        /// backends; 2 or 3 is a cluster of hola nodes behind a router that
        /// spreads the VIP's flows over them (ECMP), replicating their flows
        /// to each other (docs/cluster.md).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
        nodes: u8,
    },
    /// Stop what `lab up` started and remove the namespaces and pins (idempotent).
    Down,
    /// Which namespaces exist, which processes run, and hola's counters.
    Status,
}

/// Where the lab pins its XDP programs; the balancer pins under `lb/`.
const BPFFS: &str = "/sys/fs/bpf/hola-lab";

pub(crate) fn lab(cmd: Lab) -> Result<()> {
    match cmd {
        Lab::Up { nodes: 1 } => {
            up()?;
            print_next_steps();
            Ok(())
        }
        Lab::Up { nodes } => {
            let nodes = usize::from(nodes);
            up_with(|| cluster::start(nodes))?;
            cluster::print_steps(nodes);
            Ok(())
        }
        Lab::Down => down(),
        Lab::Status => status(),
    }
}

/// `target/`, or `$CARGO_TARGET_DIR` when set.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// `target/lab/`: the config, the socket, logs and PID files.
fn lab_dir() -> PathBuf {
    target_dir().join("lab")
}

pub(crate) fn hola_bin() -> PathBuf {
    target_dir().join("debug/hola")
}

fn backend_bin() -> PathBuf {
    target_dir().join("debug/hola-backend")
}

/// `path` relative to the workspace root when it is inside it.
fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask lab {what}` needs root (network namespaces, XDP, bpffs): run it as root"
        );
    }
    Ok(())
}

/// Whether anything of a previous lab is left.
fn leftovers() -> Result<bool> {
    Ok(!topology::namespaces()?.is_empty()
        || Path::new(BPFFS).exists()
        || procs().iter().any(|p| p.pid_file().exists()))
}

pub(crate) fn up() -> Result<()> {
    up_with(start)
}

/// Builds hola and hola-backend, takes down what a previous lab left, and
/// runs `start`; a failure half-way leaves nothing behind (logs in
/// target/lab/ stay).
fn up_with(start: impl FnOnce() -> Result<()>) -> Result<()> {
    require_root("up")?;
    toolchain::setup(false)?;
    for (pkg, bin) in [("lb-userspace", "hola"), ("lab-backend", "hola-backend")] {
        run_status(command("cargo").args(["build", "-p", pkg, "--bin", bin]))?;
    }
    if leftovers()? {
        println!("lab: a previous lab is left over; taking it down first");
        down()?;
    }
    if let Err(e) = start() {
        eprintln!("lab up failed; taking down what it made");
        if let Err(d) = down() {
            eprintln!("lab down after the failure also failed: {d:#}");
        }
        return Err(e);
    }
    Ok(())
}

/// The single-balancer lab: the topology, the backends with hola-decap,
/// the XDP program on the balancer's bridge port, and hola.
fn start() -> Result<()> {
    fs::create_dir_all(lab_dir()).with_context(|| format!("creating {}", lab_dir().display()))?;
    topology::build().context("building the lab topology")?;
    fs::create_dir_all(BPFFS)
        .with_context(|| format!("creating {BPFFS} (is bpffs mounted on /sys/fs/bpf?)"))?;
    processes::start_backends(&["0.0.0.0:80", "[::]:80"], Some(config::QUIC_LISTEN), true)?;
    processes::attach_peer("lb")?;

    let config = config_path();
    fs::write(&config, config::balancer())
        .with_context(|| format!("writing {}", config.display()))?;
    let _ = fs::remove_file(socket_path());
    // hola prefers its state file to the config: a fresh lab starts from the config.
    let _ = fs::remove_file(lab_dir().join("state.toml"));
    let p = Proc::named("hola");
    let pid = processes::start_hola(&p, "lb", &config)?;
    println!(
        "lab: started hola run (PID {pid}, log {})",
        p.log_file().display()
    );
    let deadline = Instant::now() + processes::HOLA_START_TIMEOUT;
    processes::wait_for_hola("hola", &p, pid, &socket_path(), deadline)?;
    println!("lab: hola answers on {}", socket_path().display());
    Ok(())
}

fn print_next_steps() {
    let hola = relative(&hola_bin());
    let sock = relative(&socket_path());
    println!(
        "\nThe lab is up: hola balances 198.18.1.1:80 (dsr, tcp and udp), 198.18.1.2:80 (tunnel),
198.18.1.3:80 (nat), 198.18.1.4:80 (fullnat) and [2001:db8:1::1]:80 (dsr) over b1, b2, b3
(weights 1, 1, 2), and QUIC on 198.18.1.1:443/udp (dsr, quic = true: b1, b2, b3 have server
IDs 1, 2, 3, carried in their connection IDs; ALPN hola-echo). Try:

  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.1/; done
  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.2/; done
  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.3/; done
  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.4/; done
  ip netns exec hola-lab-client curl -s -g 'http://[2001:db8:1::1]/'
  ip netns exec hola-lab-client bash -c 'exec 3<>/dev/udp/198.18.1.1/80; echo hi >&3; timeout 1 head -n 1 <&3'
  {hola} --socket {sock} stats --json
  {hola} --socket {sock} backend list      # health, last check, effective weight
  kill <PID of b2 from `cargo xtask lab status`>; {hola} --socket {sock} events
  cargo xtask lab status
  cargo xtask lab down
"
    );
}

pub(crate) fn down() -> Result<()> {
    require_root("down")?;
    let mut did: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let (holas, others): (Vec<Proc>, Vec<Proc>) =
        procs().into_iter().partition(|p| p.program == "hola");
    // Every hola first, then what its pins refer to.
    for hola in &holas {
        did.extend(hola.stop());
    }
    let lb_pins = Path::new(BPFFS).join("lb");
    if lb_pins.exists() {
        match hola_down(&lb_pins, "lb", &config_path()) {
            Ok(()) => did.push("ran hola down (the balancer's pins)".into()),
            Err(e) => problems.push(format!("hola down: {e:#}")),
        }
    }
    for i in 1..=cluster::MAX_NODES {
        let pins = Path::new(BPFFS).join(format!("n{i}"));
        if pins.exists() {
            match hola_down(&pins, &format!("n{i}"), &config::node_config(i)) {
                Ok(()) => did.push(format!("ran hola down (node n{i}'s pins)")),
                Err(e) => problems.push(format!("hola down on n{i}: {e:#}")),
            }
        }
    }
    for p in others {
        did.extend(p.stop());
    }
    if Path::new(BPFFS).exists() {
        // Unpinning a link detaches its program (nothing else holds it).
        match fs::remove_dir_all(BPFFS) {
            Ok(()) => did.push(format!("removed {BPFFS}")),
            Err(e) => problems.push(format!("removing {BPFFS}: {e}")),
        }
    }
    for n in topology::namespaces()? {
        match netlab::netns::delete(&n) {
            Ok(()) => did.push(format!("deleted namespace {n}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if socket_path().exists() {
        let _ = fs::remove_file(socket_path());
        // hola prefers its state file to the config: a fresh lab starts from the config.
        let _ = fs::remove_file(lab_dir().join("state.toml"));
    }
    if did.is_empty() && problems.is_empty() {
        println!("lab down: nothing to do");
    }
    for d in &did {
        println!("lab down: {d}");
    }
    if !problems.is_empty() {
        bail!("lab down left things behind:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// `hola down` for a balancer (`host` is its namespace's short name), with
/// its config when that is there and inside its namespace when that still
/// exists.
fn hola_down(pins: &Path, host: &str, config: &Path) -> Result<()> {
    if !hola_bin().exists() {
        bail!(
            "{} is not built; the pins in {} are removed without it",
            hola_bin().display(),
            pins.display()
        );
    }
    let mut cmd = if topology::namespaces()?.contains(&topology::ns(host)) {
        topology::in_ns(host, hola_bin())
    } else {
        Command::new(hola_bin())
    };
    cmd.arg("down");
    if config.exists() {
        cmd.arg("--config").arg(config);
    } else {
        cmd.arg("--bpffs-dir").arg(pins);
    }
    run_output(&mut cmd).map(drop)
}

fn status() -> Result<()> {
    let namespaces = topology::namespaces()?;
    if namespaces.is_empty() {
        println!("namespaces: none (the lab is down; `cargo xtask lab up` brings it up)");
    } else {
        println!("namespaces: {}", namespaces.join(" "));
    }
    let mut hola_up = false;
    for p in procs() {
        let what = if p.stem == "hola" {
            "hola run".to_string()
        } else if p.program == "hola" {
            // Cluster nodes are listed only when they were started.
            if p.recorded_pid().is_none() {
                continue;
            }
            format!("hola run on {}", &p.stem["hola-".len()..])
        } else if p.program == "bird" {
            if p.recorded_pid().is_none() {
                continue;
            }
            format!("BIRD on {}", &p.stem["bird-".len()..])
        } else {
            format!("hola-backend {}", p.stem)
        };
        match p.recorded_pid() {
            Some(pid) if p.is_ours(pid) => {
                println!(
                    "{what}: running (PID {pid}, log {})",
                    relative(&p.log_file())
                );
                hola_up |= p.stem == "hola";
            }
            Some(pid) => println!(
                "{what}: not running (stale PID file {} names PID {pid})",
                relative(&p.pid_file())
            ),
            None => println!("{what}: not running"),
        }
    }
    bird::status();
    if hola_up {
        match processes::hola_stats(&socket_path(), false) {
            Ok(stats) => println!("hola stats:\n{}", stats.trim_end()),
            Err(e) => println!("hola stats: {e:#}"),
        }
    }
    Ok(())
}

/// `cargo xtask run` without `--iface`: `lab up`, wait for Ctrl-C (or
/// SIGTERM), `lab down`.
pub(crate) fn run_lab() -> Result<()> {
    up()?;
    print_next_steps();
    println!("Press Ctrl-C to take the lab down.");
    wait_for_interrupt()?;
    println!("\nlab: taking the lab down");
    down()
}

/// Blocks until SIGINT or SIGTERM. The lab's processes are already running
/// with their own signal mask, which this does not change.
fn wait_for_interrupt() -> Result<()> {
    // SAFETY: sigset_t is plain data and is initialised by sigemptyset before
    // use; pthread_sigmask and sigwait only read and write it and `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "blocking SIGINT/SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        let mut sig = 0;
        let rc = libc::sigwait(&raw const set, &raw mut sig);
        // Unblocked again, so that the commands `lab down` runs (and a
        // second Ctrl-C) behave as usual.
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "waiting for Ctrl-C: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    }
    Ok(())
}
