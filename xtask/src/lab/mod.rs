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

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::{command, is_root, repo_root, run_output, run_status, show, toolchain};

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

/// Prefix of every namespace the lab makes.
const PREFIX: &str = "hola-lab-";
/// Where the lab pins its XDP programs; the balancer pins under `lb/`.
const BPFFS: &str = "/sys/fs/bpf/hola-lab";
/// How long hola may take to answer `stats` after it starts.
const HOLA_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The hosts on the bridge: name, IPv4 address, IPv6 address.
const HOSTS: &[(&str, &str, &str)] = &[
    ("client", "198.18.0.1", "2001:db8::1"),
    ("lb", "198.18.0.2", "2001:db8::2"),
    ("b1", "198.18.0.11", "2001:db8::11"),
    ("b2", "198.18.0.12", "2001:db8::12"),
    ("b3", "198.18.0.13", "2001:db8::13"),
];
const BACKENDS: &[&str] = &["b1", "b2", "b3"];
/// Backend weights in every VIP: b3 gets half of the new flows.
const WEIGHTS: &[u32] = &[1, 1, 2];
const LB_V4: &str = "198.18.0.2";
const LB_V6: &str = "2001:db8::2";
const VIP_NET_V4: &str = "198.18.1.0/24";
const VIP_NET_V6: &str = "2001:db8:1::/64";
/// NAT mode: the backends' own subnet, with the balancer as their gateway.
const NAT_GW_V4: &str = "198.18.2.1";
/// The backends' addresses there, b1..b3.
const NAT_BACKENDS: &[&str] = &["198.18.2.11", "198.18.2.12", "198.18.2.13"];
/// The VIP in NAT mode (routed to the balancer with the others).
const NAT_VIP: &str = "198.18.1.3";
/// The VIP in fullnat mode: backends see the balancer's 198.18.2.1.
const FULLNAT_VIP: &str = "198.18.1.4";
/// Held by every backend on lo.
const VIPS_ON_LO: &[&str] = &[
    "198.18.1.1/32",
    "198.18.1.2/32",
    "2001:db8:1::1/128",
    "2001:db8:1::2/128",
];

pub(crate) fn lab(cmd: Lab) -> Result<()> {
    match cmd {
        Lab::Up { nodes: 1 } => {
            up()?;
            print_next_steps();
            Ok(())
        }
        Lab::Up { nodes } => {
            up_cluster(usize::from(nodes))?;
            print_cluster_steps(usize::from(nodes));
            Ok(())
        }
        Lab::Down => down(),
        Lab::Status => status(),
    }
}

fn ns(host: &str) -> String {
    format!("{PREFIX}{host}")
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

fn config_path() -> PathBuf {
    lab_dir().join("hola.toml")
}

fn socket_path() -> PathBuf {
    lab_dir().join("hola.sock")
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask lab {what}` needs root (network namespaces, XDP, bpffs): run it as root"
        );
    }
    Ok(())
}

/// A process the lab starts: its PID file's stem, and how to recognise it in
/// `/proc/PID/cmdline` (program file name and one argument).
struct Proc {
    stem: String,
    program: &'static str,
    arg: String,
}

fn procs() -> Vec<Proc> {
    // hola first: `lab down` stops it before its backends.
    let mut v = vec![Proc {
        stem: "hola".into(),
        program: "hola",
        arg: "run".into(),
    }];
    // The cluster lab's nodes, each told apart by its configuration.
    v.extend((1..=MAX_NODES).map(|i| Proc {
        stem: format!("hola-n{i}"),
        program: "hola",
        arg: node_config(i).display().to_string(),
    }));
    v.extend(BACKENDS.iter().map(|b| Proc {
        stem: (*b).into(),
        program: "hola-backend",
        arg: (*b).into(),
    }));
    v
}

impl Proc {
    fn pid_file(&self) -> PathBuf {
        lab_dir().join(format!("{}.pid", self.stem))
    }

    fn log_file(&self) -> PathBuf {
        lab_dir().join(format!("{}.log", self.stem))
    }

    /// The PID in the PID file, if there is one.
    fn recorded_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether `pid` is alive and still runs what we started (after
    /// nsenter has exec'd it): a recycled PID is left alone.
    fn is_ours(&self, pid: i32) -> bool {
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let program_ok = args.first().is_some_and(|a0| {
            Path::new(std::str::from_utf8(a0).unwrap_or(""))
                .file_name()
                .is_some_and(|n| n == self.program)
        });
        program_ok && args.contains(&self.arg.as_bytes()) && !is_zombie(pid)
    }

    /// Starts `cmd` (already `nsenter ... PROGRAM ...`) in its own
    /// process group, so that a Ctrl-C meant for `cargo xtask run` reaches
    /// only xtask, with output to the log file; records its PID.
    fn spawn(&self, mut cmd: Command) -> Result<i32> {
        use std::os::unix::process::CommandExt as _;
        let log = fs::File::create(self.log_file())
            .with_context(|| format!("creating {}", self.log_file().display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let pid = i32::try_from(child.id()).context("PID out of range")?;
        fs::write(self.pid_file(), format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.pid_file().display()))?;
        Ok(pid)
    }

    /// Stops the recorded process if it is still ours, and removes the PID file.
    /// Returns what it did, for the summary.
    fn stop(&self) -> Option<String> {
        let pid = match self.recorded_pid() {
            Some(pid) => pid,
            None if self.pid_file().exists() => {
                let _ = fs::remove_file(self.pid_file());
                return Some(format!("removed unreadable {}", self.pid_file().display()));
            }
            None => return None,
        };
        let said = if !self.is_ours(pid) {
            format!(
                "{} had exited (PID {pid} is not {} any more); removed its stale PID file",
                self.stem, self.program
            )
        } else {
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.is_ours(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if self.is_ours(pid) {
                signal(pid, libc::SIGKILL);
                format!(
                    "{} (PID {pid}) ignored SIGTERM for {}s: killed",
                    self.stem,
                    STOP_TIMEOUT.as_secs()
                )
            } else {
                format!("stopped {} (PID {pid})", self.stem)
            }
        };
        let _ = fs::remove_file(self.pid_file());
        Some(said)
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; pid was checked to be our process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A process that has exited but not been reaped (our own child under
/// `cargo xtask run`) counts as stopped.
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The `hola-lab-*` namespaces that exist.
fn lab_namespaces() -> Result<Vec<String>> {
    let out = run_output(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// Whether anything of a previous lab is left.
fn leftovers() -> Result<bool> {
    Ok(!lab_namespaces()?.is_empty()
        || Path::new(BPFFS).exists()
        || procs().iter().any(|p| p.pid_file().exists()))
}

/// `ip ARGS`, failing with the command and its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run_output(Command::new("ip").args(args)).map(drop)
}

/// A command that runs `program` in the network namespace of `host`.
///
/// nsenter enters only the network namespace: `ip netns exec` also gives its
/// command a private mount namespace whose /sys has no bpffs, so pins made
/// there would vanish with the command (and detach what they hold). nsenter
/// execs `program`, so a spawned child's PID is the program's.
fn in_ns(host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns(host)))
        .arg("--")
        .arg(program);
    cmd
}

/// `program args` in the network namespace of `host`, failing with the
/// command and its stderr.
fn ns_exec(host: &str, program: &str, args: &[&str]) -> Result<String> {
    run_output(in_ns(host, program).args(args))
}

fn sysctl(host: &str, kv: &str) -> Result<()> {
    ns_exec(host, "sysctl", &["-qw", kv]).map(drop)
}

pub(crate) fn up() -> Result<()> {
    require_root("up")?;
    toolchain::setup(false)?;
    for (pkg, bin) in [("lb-userspace", "hola"), ("lab-backend", "hola-backend")] {
        run_status(command("cargo").args(["build", "-p", pkg, "--bin", bin]))?;
    }
    if leftovers()? {
        println!("lab: a previous lab is left over; taking it down first");
        down()?;
    }
    // A failure half-way leaves nothing behind (logs in target/lab/ stay).
    if let Err(e) = build_and_start() {
        eprintln!("lab up failed; taking down what it made");
        if let Err(d) = down() {
            eprintln!("lab down after the failure also failed: {d:#}");
        }
        return Err(e);
    }
    Ok(())
}

fn build_and_start() -> Result<()> {
    fs::create_dir_all(lab_dir()).with_context(|| format!("creating {}", lab_dir().display()))?;
    topology().context("building the lab topology")?;
    fs::create_dir_all(BPFFS)
        .with_context(|| format!("creating {BPFFS} (is bpffs mounted on /sys/fs/bpf?)"))?;
    let hola = hola_bin();
    let hola = hola.to_str().context("target dir is not UTF-8")?;
    let backend = backend_bin();

    for b in BACKENDS {
        let p = procs().into_iter().find(|p| p.stem == *b).expect("listed");
        let mut cmd = in_ns(b, &backend);
        cmd.args([
            "--name",
            b,
            "--listen",
            "0.0.0.0:80",
            "--listen",
            "[::]:80",
            "--verbose",
        ]);
        let pid = p.spawn(cmd)?;
        println!(
            "lab: started hola-backend {b} (PID {pid}, log {})",
            p.log_file().display()
        );
        let pin = format!("{BPFFS}/decap-{b}");
        ns_exec(
            b,
            hola,
            &["decap", "attach", "--iface", "eth0", "--pin", &pin],
        )
        .with_context(|| format!("attaching hola-decap to eth0 of {}", ns(b)))?;
    }
    // Frames the balancer sends back out with XDP_TX reach the bridge only if
    // its veth peer runs an XDP program (the peer's NAPI); GRO is not enough.
    let pin = format!("{BPFFS}/peer-p-lb");
    ns_exec(
        "sw",
        hola,
        &["veth-peer", "attach", "--iface", "p-lb", "--pin", &pin],
    )
    .context("attaching the XDP_PASS program to p-lb")?;

    let config = config_path();
    fs::write(&config, config_toml()).with_context(|| format!("writing {}", config.display()))?;
    let _ = fs::remove_file(socket_path());
    // hola prefers its state file to the config: a fresh lab starts from the config.
    let _ = fs::remove_file(lab_dir().join("state.toml"));
    let p = procs()
        .into_iter()
        .find(|p| p.stem == "hola")
        .expect("listed");
    let mut cmd = in_ns("lb", hola);
    // Its log is a file: no colour escapes in it.
    cmd.env("NO_COLOR", "1")
        .args(["run", "--config"])
        .arg(&config);
    let pid = p.spawn(cmd)?;
    println!(
        "lab: started hola run (PID {pid}, log {})",
        p.log_file().display()
    );
    wait_for_hola(&p, pid)
}

/// Waits until `hola stats` answers on the lab's socket.
fn wait_for_hola(p: &Proc, pid: i32) -> Result<()> {
    let deadline = Instant::now() + HOLA_START_TIMEOUT;
    loop {
        let last = match hola_stats() {
            Ok(_) => {
                println!("lab: hola answers on {}", socket_path().display());
                return Ok(());
            }
            Err(e) => e,
        };
        let gone = !p.is_ours(pid);
        if gone || Instant::now() > deadline {
            let why = if gone {
                "hola exited".to_string()
            } else {
                format!(
                    "hola did not answer `stats` within {}s (last error: {last:#})",
                    HOLA_START_TIMEOUT.as_secs()
                )
            };
            bail!(
                "{why}; the end of {}:\n{}",
                p.log_file().display(),
                log_tail(&p.log_file(), 30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn hola_stats() -> Result<String> {
    run_output(
        Command::new(hola_bin())
            .arg("--socket")
            .arg(socket_path())
            .args(["stats", "--json"]),
    )
}

/// The namespaces, the bridge, the veths, addresses, routes and sysctls.
fn topology() -> Result<()> {
    for h in ["sw"].iter().chain(HOSTS.iter().map(|(h, _, _)| h)) {
        ip(&["netns", "add", &ns(h)])?;
        ip(&["-n", &ns(h), "link", "set", "lo", "up"])?;
    }
    let sw = ns("sw");
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    for (h, v4, v6) in HOSTS {
        let (n, port) = (ns(h), format!("p-{h}"));
        ip(&[
            "link", "add", "eth0", "netns", &n, "type", "veth", "peer", "name", &port, "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &port, "up"])?;
        ip(&["-n", &n, "link", "set", "eth0", "up"])?;
        ip(&["-n", &n, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        // nodad: usable at once, no duplicate-address detection wait.
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        for kv in [
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
            "net.ipv4.conf.lo.rp_filter=0",
        ] {
            sysctl(h, kv)?;
        }
    }
    let client = ns("client");
    ip(&["-n", &client, "route", "add", VIP_NET_V4, "via", LB_V4])?;
    ip(&[
        "-n", &client, "-6", "route", "add", VIP_NET_V6, "via", LB_V6,
    ])?;
    // A veth leaves TCP/UDP checksums to "hardware" that does not exist once
    // XDP has moved the frame on: the client's kernel must fill them in, as a
    // real NIC would before the frame reached the balancer.
    ns_exec("client", "ethtool", &["-K", "eth0", "tx", "off"])?;
    for b in BACKENDS {
        for vip in VIPS_ON_LO {
            ip(&["-n", &ns(b), "addr", "add", vip, "dev", "lo"])?;
        }
    }
    // NAT mode: the backends also sit in 198.18.2.0/24 behind the balancer
    // and answer from there through it; their replies get the same checksum
    // treatment as the client's requests.
    ip(&[
        "-n",
        &ns("lb"),
        "addr",
        "add",
        &format!("{NAT_GW_V4}/24"),
        "dev",
        "eth0",
    ])?;
    for (b, addr) in BACKENDS.iter().zip(NAT_BACKENDS) {
        let n = ns(b);
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        // Only what leaves from this address (NAT replies) goes through
        // the balancer: dsr and tunnel replies, from the VIPs, still go
        // straight to the client.
        ip(&["-n", &n, "rule", "add", "from", addr, "table", "100"])?;
        ip(&[
            "-n", &n, "route", "add", "default", "via", NAT_GW_V4, "table", "100",
        ])?;
        ns_exec(b, "ethtool", &["-K", "eth0", "tx", "off"])?;
    }
    Ok(())
}

/// The balancer's configuration (docs/configuration.md).
fn config_toml() -> String {
    let lab = lab_dir();
    let mut s = format!(
        "# Written by `cargo xtask lab up`; the lab's balancer.\n\
         [global]\n\
         interfaces = [\"eth0\"]\n\
         control_socket = \"{}\"\n\
         state_file = \"{}\"\n\
         bpffs_dir = \"{BPFFS}/lb\"\n\
         metrics_address = \"127.0.0.1:9464\"\n\
         flow_capacity_per_cpu = 65536\n\
         fullnat_source_v4 = \"{NAT_GW_V4}\"\n",
        lab.join("hola.sock").display(),
        lab.join("state.toml").display(),
    );
    let v4: Vec<&str> = HOSTS[2..].iter().map(|(_, a, _)| *a).collect();
    let v6: Vec<&str> = HOSTS[2..].iter().map(|(_, _, a)| *a).collect();
    let nat: Vec<&str> = NAT_BACKENDS.to_vec();
    for (vip, proto, mode, backends) in [
        ("198.18.1.1", "tcp", "dsr", &v4),
        (NAT_VIP, "tcp", "nat", &nat),
        (FULLNAT_VIP, "tcp", "fullnat", &nat),
        ("198.18.1.2", "tcp", "tunnel", &v4),
        ("2001:db8:1::1", "tcp", "dsr", &v6),
        ("198.18.1.1", "udp", "dsr", &v4),
    ] {
        s += &format!(
            "\n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"{proto}\"\nmode = \"{mode}\"\n"
        );
        // hola-backend answers HTTP on tcp/80 and any datagram on udp/80.
        let check = if proto == "udp" { "udp" } else { "http" };
        s += &format!(
            "\n[vip.health]\ntype = \"{check}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
        );
        for (addr, weight) in backends.iter().zip(WEIGHTS) {
            s += &format!("\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
        }
    }
    s
}

fn print_next_steps() {
    let hola = relative(&hola_bin());
    let sock = relative(&socket_path());
    println!(
        "\nThe lab is up: hola balances 198.18.1.1:80 (dsr, tcp and udp), 198.18.1.2:80 (tunnel),
198.18.1.3:80 (nat), 198.18.1.4:80 (fullnat) and [2001:db8:1::1]:80 (dsr) over b1, b2, b3
(weights 1, 1, 2). Try:

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

/// `path` relative to the workspace root when it is inside it.
fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
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
    for i in 1..=MAX_NODES {
        let pins = Path::new(BPFFS).join(format!("n{i}"));
        if pins.exists() {
            match hola_down(&pins, &format!("n{i}"), &node_config(i)) {
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
    for n in lab_namespaces()? {
        match ip(&["netns", "del", &n]) {
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
    let mut cmd = if lab_namespaces()?.contains(&ns(host)) {
        in_ns(host, hola_bin())
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
    let namespaces = lab_namespaces()?;
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
    if hola_up {
        let stats = run_output(
            Command::new(hola_bin())
                .arg("--socket")
                .arg(socket_path())
                .arg("stats"),
        );
        match stats {
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

// ---------------------------------------------------------------------------
// The cluster lab: `lab up --nodes 2|3`.
//
//   hola-lab-client 198.18.100.2 ── hola-lab-rt 198.18.100.1 | 198.18.0.1 ─┐
//   hola-lab-n1..n3 198.18.0.2..4 (hola, [cluster])                        ├ hola-lab-sw: br0
//   hola-lab-b1..b3 198.18.0.11..13, VIP 198.18.1.1 on lo                  ┘
//
// The router reaches the VIP through every node (a multipath route hashed
// on the 5-tuple); the backends answer the client through the router.

/// Most nodes `lab up --nodes` makes.
const MAX_NODES: usize = 3;
const CLUSTER_CLIENT: &str = "198.18.100.2";
const CLUSTER_ROUTER_FRONT: &str = "198.18.100.1";
const CLUSTER_ROUTER_BACK: &str = "198.18.0.1";
const CLUSTER_VIP: &str = "198.18.1.1";

fn node_addr(i: usize) -> String {
    format!("198.18.0.{}", 1 + i)
}

fn node_dir(i: usize) -> PathBuf {
    lab_dir().join(format!("n{i}"))
}

fn node_config(i: usize) -> PathBuf {
    node_dir(i).join("hola.toml")
}

fn node_socket(i: usize) -> PathBuf {
    node_dir(i).join("hola.sock")
}

fn up_cluster(nodes: usize) -> Result<()> {
    require_root("up")?;
    toolchain::setup(false)?;
    for (pkg, bin) in [("lb-userspace", "hola"), ("lab-backend", "hola-backend")] {
        run_status(command("cargo").args(["build", "-p", pkg, "--bin", bin]))?;
    }
    if leftovers()? {
        println!("lab: a previous lab is left over; taking it down first");
        down()?;
    }
    if let Err(e) = start_cluster(nodes) {
        eprintln!("lab up failed; taking down what it made");
        if let Err(d) = down() {
            eprintln!("lab down after the failure also failed: {d:#}");
        }
        return Err(e);
    }
    Ok(())
}

fn start_cluster(nodes: usize) -> Result<()> {
    fs::create_dir_all(lab_dir()).with_context(|| format!("creating {}", lab_dir().display()))?;
    cluster_topology(nodes).context("building the cluster lab's topology")?;
    fs::create_dir_all(BPFFS)
        .with_context(|| format!("creating {BPFFS} (is bpffs mounted on /sys/fs/bpf?)"))?;
    let hola = hola_bin();
    let hola = hola.to_str().context("target dir is not UTF-8")?;
    for b in BACKENDS {
        let p = procs().into_iter().find(|p| p.stem == *b).expect("listed");
        let mut cmd = in_ns(b, backend_bin());
        cmd.args(["--name", b, "--listen", "0.0.0.0:80", "--verbose"]);
        let pid = p.spawn(cmd)?;
        println!("lab: started hola-backend {b} (PID {pid})");
    }
    // The key every node shares, fresh for each lab.
    let key_file = lab_dir().join("cluster.key");
    let mut key = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .context("reading /dev/urandom for the cluster key")?;
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&key_file, format!("{key}\n"))
        .with_context(|| format!("writing {}", key_file.display()))?;
    for i in 1..=nodes {
        let n = format!("n{i}");
        let pin = format!("{BPFFS}/peer-p-{n}");
        ns_exec(
            "sw",
            hola,
            &[
                "veth-peer",
                "attach",
                "--iface",
                &format!("p-{n}"),
                "--pin",
                &pin,
            ],
        )
        .with_context(|| format!("attaching the XDP_PASS program to p-{n}"))?;
        fs::create_dir_all(node_dir(i))?;
        let _ = fs::remove_file(node_dir(i).join("state.toml"));
        fs::write(node_config(i), node_config_toml(i, &key_file))
            .with_context(|| format!("writing {}", node_config(i).display()))?;
        let p = procs()
            .into_iter()
            .find(|p| p.stem == format!("hola-{n}"))
            .expect("listed");
        let mut cmd = in_ns(&n, hola);
        cmd.env("NO_COLOR", "1")
            .args(["run", "--config"])
            .arg(node_config(i));
        let pid = p.spawn(cmd)?;
        println!(
            "lab: started hola run on {n} (PID {pid}, log {})",
            relative(&p.log_file())
        );
    }
    let deadline = Instant::now() + HOLA_START_TIMEOUT;
    for i in 1..=nodes {
        loop {
            let ok = Command::new(hola_bin())
                .arg("--socket")
                .arg(node_socket(i))
                .args(["stats", "--json"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                let p = procs()
                    .into_iter()
                    .find(|p| p.stem == format!("hola-n{i}"))
                    .expect("listed");
                bail!(
                    "hola on n{i} did not answer within {}s; the end of {}:\n{}",
                    HOLA_START_TIMEOUT.as_secs(),
                    p.log_file().display(),
                    log_tail(&p.log_file(), 30)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    println!("lab: every node answers");
    Ok(())
}

fn cluster_topology(nodes: usize) -> Result<()> {
    let mut hosts: Vec<(String, String)> = vec![("rt".into(), CLUSTER_ROUTER_BACK.into())];
    hosts.extend((1..=nodes).map(|i| (format!("n{i}"), node_addr(i))));
    hosts.extend(
        BACKENDS
            .iter()
            .zip(&HOSTS[2..])
            .map(|(b, (_, a, _))| ((*b).to_string(), (*a).to_string())),
    );
    for h in ["sw", "client"]
        .into_iter()
        .chain(hosts.iter().map(|(h, _)| h.as_str()))
    {
        ip(&["netns", "add", &ns(h)])?;
        ip(&["-n", &ns(h), "link", "set", "lo", "up"])?;
    }
    let sw = ns("sw");
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    // Announcements reach every port without waiting for IGMP snooping.
    ip(&[
        "-n",
        &sw,
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let (client, rt) = (ns("client"), ns("rt"));
    ip(&[
        "link", "add", "eth0", "netns", &client, "type", "veth", "peer", "name", "eth0", "netns",
        &rt,
    ])?;
    for (n, addr) in [(&client, CLUSTER_CLIENT), (&rt, CLUSTER_ROUTER_FRONT)] {
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    }
    ip(&[
        "-n",
        &client,
        "route",
        "add",
        "default",
        "via",
        CLUSTER_ROUTER_FRONT,
    ])?;
    ns_exec("client", "ethtool", &["-K", "eth0", "tx", "off"])?;
    ns_exec("rt", "ethtool", &["-K", "eth0", "tx", "off"])?;
    for (h, addr) in &hosts {
        let (n, port) = (ns(h), format!("p-{h}"));
        let dev = if h == "rt" { "eth1" } else { "eth0" };
        ip(&[
            "link", "add", dev, "netns", &n, "type", "veth", "peer", "name", &port, "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &port, "up"])?;
        ip(&["-n", &n, "link", "set", dev, "up"])?;
        ip(&["-n", &n, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        for kv in [
            "net.ipv4.conf.all.rp_filter=0".to_string(),
            format!("net.ipv4.conf.{dev}.rp_filter=0"),
        ] {
            sysctl(h, &kv)?;
        }
        ns_exec(h, "ethtool", &["-K", dev, "tx", "off"])?;
    }
    sysctl("rt", "net.ipv4.ip_forward=1")?;
    sysctl("rt", "net.ipv4.fib_multipath_hash_policy=1")?;
    let mut route = vec![
        "-n".to_string(),
        rt.clone(),
        "route".into(),
        "add".into(),
        format!("{CLUSTER_VIP}/32"),
    ];
    for i in 1..=nodes {
        route.extend(["nexthop".into(), "via".into(), node_addr(i)]);
    }
    ip(&route.iter().map(String::as_str).collect::<Vec<_>>())?;
    for b in BACKENDS {
        ip(&[
            "-n",
            &ns(b),
            "addr",
            "add",
            &format!("{CLUSTER_VIP}/32"),
            "dev",
            "lo",
        ])?;
        sysctl(b, "net.ipv4.conf.lo.rp_filter=0")?;
        ip(&[
            "-n",
            &ns(b),
            "route",
            "add",
            "198.18.100.0/24",
            "via",
            CLUSTER_ROUTER_BACK,
        ])?;
    }
    Ok(())
}

fn node_config_toml(i: usize, key_file: &Path) -> String {
    let d = node_dir(i);
    let mut s = format!(
        "# Written by `cargo xtask lab up --nodes N`; node n{i} of the lab's cluster.\n\
         [global]\n\
         interfaces = [\"eth0\"]\n\
         control_socket = \"{}\"\n\
         state_file = \"{}\"\n\
         bpffs_dir = \"{BPFFS}/n{i}\"\n\
         metrics_address = \"\"\n\
         flow_capacity_per_cpu = 65536\n\
         \n[cluster]\n\
         id = \"hola-lab\"\n\
         key_file = \"{}\"\n\
         node = \"n{i}\"\n\
         \n[[vip]]\naddress = \"{CLUSTER_VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
         \n[vip.health]\ntype = \"http\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n",
        d.join("hola.sock").display(),
        d.join("state.toml").display(),
        key_file.display(),
    );
    for (_, addr, _) in &HOSTS[2..] {
        s += &format!("\n[[vip.backend]]\naddress = \"{addr}\"\n");
    }
    s
}

fn print_cluster_steps(nodes: usize) {
    let hola = relative(&hola_bin());
    let sock = |i| relative(&node_socket(i));
    let last = node_addr(nodes);
    println!(
        "\nThe cluster lab is up: {nodes} hola nodes (n1..n{nodes}, 198.18.0.2..) behind the router
hola-lab-rt, which spreads 198.18.1.1:80 over them by 5-tuple; b1, b2, b3 behind them (dsr).
The nodes find each other by multicast and replicate their flows. Try:

  for i in $(seq 8); do ip netns exec hola-lab-client curl -s http://198.18.1.1/; done
  {hola} --socket {} stats --json     # \"cluster\": peers, entries sent and received, lag
  # node n1 fails: the router sends everything to n{nodes}, which knows n1's flows
  ip netns exec hola-lab-rt ip route replace 198.18.1.1/32 via {last}
  cargo xtask lab status
  cargo xtask lab down
",
        sock(1)
    );
}
