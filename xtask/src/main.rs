//! `cargo xtask`: the toolchain bootstrap and orchestration for hola. It only
//! runs other programs (cargo, rustup, apt-get, ip, hola); the eBPF object is built by
//! `lb-userspace/build.rs`, never here.

mod bench;
mod fuzz;
mod lab;
mod modgraph;
mod package;
mod run;
mod test;
mod toolchain;
mod upgrade_base;

use std::{
    env,
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Bootstrap, test, run and benchmark hola"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the toolchain and install what is missing (every other subcommand runs this first).
    Setup {
        /// Say what would be installed, install nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run setup, fmt, clippy, unit tests, a bench smoke run, then the privileged tests (needs root).
    Test {
        /// Passed to the privileged test binaries, e.g. a test-name filter: `cargo xtask test -- fixture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start hola: with no arguments, in the lab until Ctrl-C (`lab up`, wait, `lab down`);
    /// `cargo xtask run -- --iface NAME --config FILE` runs `hola run` on a real NIC.
    Run {
        /// Arguments of `hola run`, e.g. `-- --iface eth0 --config /etc/hola/hola.toml`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The lab: hola in front of three backends in network namespaces (needs root).
    Lab {
        #[command(subcommand)]
        cmd: lab::Lab,
    },
    /// Run a benchmark; with no part named, every part there is, then the report.
    Bench {
        /// Only render docs/benchmarks.md and docs/benchmarks.png from the JSON the last runs
        /// wrote under target/bench/ (with a part named: after running it). `cargo xtask bench`
        /// with neither runs every part and then renders.
        #[arg(long)]
        report: bool,
        #[command(subcommand)]
        which: Option<bench::Bench>,
    },
    /// Build the Debian package (target/debian/hola_*.deb) from a release build: hola, its
    /// systemd unit, /etc/hola/hola.toml, man pages and shell completions.
    Package {
        /// Then check it: `dpkg-deb -c` lists every file, `systemd-analyze verify` accepts the unit.
        #[arg(long)]
        check: bool,
        /// The cargo profile whose binary is packaged (`cargo xtask test` checks a package of
        /// the dev build it already has).
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Build the upgrade test's older hola (tests/upgrade-base.txt) into the machine's cache,
    /// /var/cache/hola/upgrade-base/COMMIT, now (`cargo xtask test` otherwise starts it in the
    /// background); waits if another process builds it.
    UpgradeBase,
    /// Print the import graph of lb-userspace's modules, bottom up, and check it has no cycle.
    Modgraph,
    /// Fuzz the balancer: generated and mangled frames through BPF_PROG_TEST_RUN,
    /// each checked against the design (needs root).
    Fuzz {
        /// Number of cases (`cargo xtask test` runs a few thousand).
        #[arg(long, default_value_t = fuzz::DEFAULT_CASES)]
        cases: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup { dry_run } => toolchain::setup(dry_run),
        Cmd::Test { args } => test::test(&args),
        Cmd::Run { args } => run::run(&args),
        Cmd::Lab { cmd } => lab::lab(cmd),
        Cmd::Bench { which, report } => bench::bench(which, report),
        Cmd::Fuzz { cases } => fuzz::fuzz(cases),
        Cmd::Package { check, profile } => toolchain::setup(false)
            .and_then(|()| package::package(&profile))
            .and_then(|deb| if check { package::check(&deb) } else { Ok(()) }),
        Cmd::Modgraph => modgraph::print(repo_root()),
        Cmd::UpgradeBase => upgrade_base::build_now(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest dir has a parent")
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub(crate) fn cargo_bin() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// PATH for every child: ours, with `$CARGO_HOME/bin` appended when it is not
/// there already, so that a bpf-linker installed by setup is found by
/// aya-build even from a shell that never sourced `~/.cargo/env`.
pub(crate) fn child_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A command run from the workspace root with [`child_path`] as its PATH
/// (which is also where `program` itself is looked up).
pub(crate) fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(repo_root()).env("PATH", child_path());
    cmd
}

/// The command line as a person would type it, with the environment it sets
/// (PATH left out).
pub(crate) fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if k != "PATH"
            && let Some(v) = v
        {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub(crate) fn run_status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| {
        format!(
            "could not start `{}` (is it installed and on PATH?)",
            show(cmd)
        )
    })?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; an error carries its stderr.
pub(crate) fn run_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| {
        format!(
            "could not start `{}` (is it installed and on PATH?)",
            show(cmd)
        )
    })?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether we run with effective uid 0 (the `Uid:` line of /proc/self/status
/// is real, effective, saved, filesystem).
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
