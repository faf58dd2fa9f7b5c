//! The processes the lab starts (hola, hola-backend) and the XDP programs
//! it attaches with hola's CLI (hola-decap on the backends, an XDP_PASS
//! program on the balancers' bridge ports): PID files in `target/lab/`,
//! and stopping only what the lab started.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    BPFFS, backend_bin,
    cluster::MAX_NODES,
    config::node_config,
    hola_bin, lab_dir,
    topology::{backends, in_ns, ns, ns_exec},
};
use crate::{run_output, show};

/// How long hola may take to answer `stats` after it starts.
pub(super) const HOLA_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A process the lab starts: its PID file's stem, and how to recognise it in
/// `/proc/PID/cmdline` (program file name and one argument).
pub(super) struct Proc {
    pub(super) stem: String,
    pub(super) program: &'static str,
    arg: String,
}

/// Every process any lab starts.
pub(super) fn procs() -> Vec<Proc> {
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
    // BIRD on the cluster lab's router and nodes, each told apart by its
    // configuration file.
    let hosts = std::iter::once(netlab::cluster::ROUTER.to_string())
        .chain((1..=MAX_NODES).map(|i| netlab::cluster::node(i).0));
    v.extend(hosts.map(|h| Proc {
        stem: format!("bird-{h}"),
        program: "bird",
        arg: super::bird::conf(&h).display().to_string(),
    }));
    v.extend(backends().map(|b| Proc {
        stem: b.clone(),
        program: "hola-backend",
        arg: b,
    }));
    v
}

impl Proc {
    /// The process whose PID file is `<stem>.pid`.
    pub(super) fn named(stem: &str) -> Proc {
        procs()
            .into_iter()
            .find(|p| p.stem == stem)
            .expect("every process the lab starts is listed in procs()")
    }

    pub(super) fn pid_file(&self) -> PathBuf {
        lab_dir().join(format!("{}.pid", self.stem))
    }

    pub(super) fn log_file(&self) -> PathBuf {
        lab_dir().join(format!("{}.log", self.stem))
    }

    /// The PID in the PID file, if there is one.
    pub(super) fn recorded_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether `pid` is alive and still runs what we started (after
    /// nsenter has exec'd it): a recycled PID is left alone.
    pub(super) fn is_ours(&self, pid: i32) -> bool {
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
    pub(super) fn stop(&self) -> Option<String> {
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

/// `hola` as a `&str` argument (it runs inside the namespaces).
fn hola_path() -> Result<String> {
    hola_bin()
        .to_str()
        .map(str::to_string)
        .context("target dir is not UTF-8")
}

/// Starts hola-backend on every backend, listening on `listen`, and
/// serving QUIC on `quic` (if any) with server ID `i` on backend `bi`;
/// with `decap`, also attaches hola-decap to each backend's eth0 (tunnel
/// mode).
pub(super) fn start_backends(listen: &[&str], quic: Option<&str>, decap: bool) -> Result<()> {
    let hola = hola_path()?;
    for (i, b) in backends().enumerate() {
        let p = Proc::named(&b);
        let mut cmd = in_ns(&b, backend_bin());
        cmd.args(["--name", &b]);
        for l in listen {
            cmd.args(["--listen", l]);
        }
        if let Some(q) = quic {
            cmd.args(["--quic", q, "--server-id", &(i + 1).to_string()]);
        }
        cmd.arg("--verbose");
        let pid = p.spawn(cmd)?;
        println!(
            "lab: started hola-backend {b} (PID {pid}, log {})",
            p.log_file().display()
        );
        if decap {
            let pin = format!("{BPFFS}/decap-{b}");
            ns_exec(
                &b,
                &hola,
                &["decap", "attach", "--iface", "eth0", "--pin", &pin],
            )
            .with_context(|| format!("attaching hola-decap to eth0 of {}", ns(&b)))?;
        }
    }
    Ok(())
}

/// Frames a balancer on `host` sends back out with XDP_TX reach the bridge
/// only if its veth peer (`p-<host>`) runs an XDP program (the peer's NAPI);
/// GRO is not enough.
pub(super) fn attach_peer(host: &str) -> Result<()> {
    let port = netlab::lab::port(host);
    let pin = format!("{BPFFS}/peer-{port}");
    ns_exec(
        netlab::lab::SWITCH,
        &hola_path()?,
        &["veth-peer", "attach", "--iface", &port, "--pin", &pin],
    )
    .with_context(|| format!("attaching the XDP_PASS program to {port}"))
    .map(drop)
}

/// Starts `program args` on `host` as process `p`; returns its PID.
pub(super) fn spawn_in(p: &Proc, host: &str, program: &str, args: &[String]) -> Result<i32> {
    let mut cmd = in_ns(host, program);
    cmd.args(args);
    p.spawn(cmd)
}

/// Starts `hola run --config CONFIG` on `host` as process `p`; returns its PID.
pub(super) fn start_hola(p: &Proc, host: &str, config: &Path) -> Result<i32> {
    let mut cmd = in_ns(host, hola_bin());
    // Its log is a file: no colour escapes in it.
    cmd.env("NO_COLOR", "1")
        .args(["run", "--config"])
        .arg(config);
    p.spawn(cmd)
}

/// Waits until `hola stats` answers on `socket`, failing with the end of
/// its log when `who` (process `p`, PID `pid`) exits or the deadline passes.
pub(super) fn wait_for_hola(
    who: &str,
    p: &Proc,
    pid: i32,
    socket: &Path,
    deadline: Instant,
) -> Result<()> {
    loop {
        let last = match hola_stats(socket, true) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let gone = !p.is_ours(pid);
        if gone || Instant::now() > deadline {
            let why = if gone {
                format!("{who} exited")
            } else {
                format!(
                    "{who} did not answer `stats` within {}s (last error: {last:#})",
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

/// `hola stats [--json]` on `socket`.
pub(super) fn hola_stats(socket: &Path, json: bool) -> Result<String> {
    let mut cmd = Command::new(hola_bin());
    cmd.arg("--socket").arg(socket).arg("stats");
    if json {
        cmd.arg("--json");
    }
    run_output(&mut cmd)
}
