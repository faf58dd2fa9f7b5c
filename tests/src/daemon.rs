//! Running the real `hola` binary in a test: built once, started in a
//! namespace, driven through its CLI, stopped and cleaned up on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The `[global]` table of a daemon under test: its socket, state file and
/// pins in the places [`Daemon::start`] gives it, no `/metrics`, a flow
/// table of 65,536 entries per CPU. More `[global]` keys may follow it.
pub const GLOBAL: &str = r#"[global]
interfaces = ["eth0"]
control_socket = "@DIR@/hola.sock"
state_file = "@DIR@/state.toml"
bpffs_dir = "@BPFFS@"
metrics_address = ""
flow_capacity_per_cpu = 65536
"#;

/// A configuration of [`GLOBAL`] and the lab's dsr VIP 198.18.1.1:80/tcp
/// with an HTTP health check of the given timing; backend `i` (0-based) is
/// 198.18.0.(11 + i) with its (weight, backup).
pub fn checked_dsr_config(
    interval_ms: u64,
    timeout_ms: u64,
    fall: u64,
    rise: u64,
    backends: &[(u32, bool)],
) -> String {
    let mut c = format!(
        r#"{GLOBAL}
[[vip]]
address = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "dsr"

[vip.health]
type = "http"
interval = "{interval_ms}ms"
timeout = "{timeout_ms}ms"
fall = {fall}
rise = {rise}
path = "/"
"#
    );
    for (i, (w, backup)) in backends.iter().enumerate() {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\nbackup = {backup}\n",
            11 + i
        );
    }
    c
}

/// Wall-clock milliseconds since the Unix epoch (what the daemon's events
/// and stats use).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The `hola` binary, built on first use with the same cargo that runs the
/// tests.
pub fn hola_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "lb-userspace", "--bin", "hola"])
            .status()
            .expect("running cargo build for the hola binary");
        assert!(
            status.success(),
            "cargo build -p lb-userspace --bin hola failed"
        );
        // target/debug/deps/<test> → target/debug/hola
        let exe = std::env::current_exe().expect("test executable path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("hola");
        assert!(
            bin.exists(),
            "{} not found after building it",
            bin.display()
        );
        bin
    })
}

/// Waits (at most 10 s) until process `pid` has a handler for `sig`
/// (its bit in `SigCgt` of /proc/PID/status).
fn wait_until_caught(pid: u32, sig: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (sig - 1)) != 0);
        if caught {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not catch signal {sig} within 10 s:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A daemon under test and the files it uses.
pub struct Daemon {
    pub ns: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    /// The `hola` it runs: [`hola_bin`] but in upgrade tests.
    pub bin: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Writes `config_toml` (with `@DIR@` and `@BPFFS@` replaced) and starts
    /// `hola run` in namespace `ns`; returns once the API answers.
    pub fn start(name: &str, ns: &str, config_toml: &str) -> Self {
        Self::start_with(hola_bin(), name, ns, config_toml)
    }

    /// [`Daemon::start`] with another build of `hola` (CLI and daemon).
    pub fn start_with(bin: &Path, name: &str, ns: &str, config_toml: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/hola-test-{name}"));
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/hola-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        // Pins left by a crashed run would be adopted: start clean.
        let _ = Command::new(hola_bin())
            .args(["down", "--bpffs-dir"])
            .arg(&bpffs)
            .output();
        let _ = std::fs::remove_dir_all(&bpffs);
        std::fs::create_dir_all(&dir).expect("test directory");
        let config = dir.join("hola.toml");
        let text = config_toml
            .replace("@DIR@", &dir.display().to_string())
            .replace("@BPFFS@", &bpffs.display().to_string());
        std::fs::write(&config, text).expect("write config");
        let mut d = Daemon {
            ns: ns.to_string(),
            socket: dir.join("hola.sock"),
            dir,
            config,
            bpffs,
            bin: bin.to_path_buf(),
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts `hola run` (again) and waits for its API.
    pub fn spawn(&mut self) {
        self.spawn_signalled(None);
    }

    /// Starts `hola run`, sends it `early` (if any) as soon as the process
    /// catches that signal (before its API answers: while it loads), and
    /// waits for its API.
    pub fn spawn_signalled(&mut self, early: Option<i32>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hola.log"))
            .expect("log file");
        // nsenter enters only the network namespace: `ip netns exec` would
        // also give hola a private mount namespace without the host's bpffs,
        // and the pins must outlive the process.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting hola run");
        if let Some(sig) = early {
            wait_until_caught(child.id(), sig);
            // SAFETY: kill on a PID we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["stats", "--json"]).status.success() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "hola run exited with {status} before its API answered:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "hola run did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hola.log")).unwrap_or_default()
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs hola, so the child's PID is hola's.
            // SAFETY: kill on a PID we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    /// Sends `signal` to the daemon, which goes on running.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill on a PID we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// `hola --socket S ARGS...`
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the hola CLI")
    }

    /// `hola ARGS...`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "hola {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The stats report.
    pub fn stats(&self) -> lb_userspace::stats::StatsReport {
        serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats JSON")
    }

    /// Stops the daemon and removes what it put in the kernel.
    pub fn down(&mut self) -> Output {
        self.kill(libc::SIGTERM);
        self.hola_down().expect("hola down")
    }

    /// `hola down --config` in the daemon's network namespace, where its
    /// BGP routes (if any) are; where that namespace is gone already, in
    /// this one (the pins are removed all the same).
    fn hola_down(&self) -> std::io::Result<Output> {
        let ns = format!("/run/netns/{}", self.ns);
        let mut c = if Path::new(&ns).exists() {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg(hola_bin());
            c
        } else {
            Command::new(hola_bin())
        };
        c.args(["down", "--config"]).arg(&self.config).output()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill(libc::SIGTERM);
        let _ = self.hola_down();
    }
}
