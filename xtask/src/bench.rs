//! `cargo xtask bench`: runs a benchmark binary of the tests crate in release
//! mode. The binaries measure and write their JSON under target/bench/;
//! `--report` runs bench-report, which renders docs/benchmarks.md and its plot
//! from that JSON.

use anyhow::{Context as _, Result};
use clap::Subcommand;

use crate::{command, run_status, show, toolchain};

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// Program cost per packet through BPF_PROG_TEST_RUN (needs root); writes target/bench/dataplane.json.
    Dataplane {
        /// Passed to bench-dataplane, e.g. `--rounds 5 --calls 100000` or `--smoke`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Packets per second through a veth: hola against the XDP_TX ceiling (needs root); writes target/bench/forward.json.
    Forward {
        /// Passed to bench-forward, e.g. `--rounds 3 --seconds 1`, `--contenders hola_dsr --flows 1000,syn` or `--smoke`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// HTTP requests through the balancer over real TCP: hola against nftables DNAT and HAProxy (needs root; wrk, haproxy); writes target/bench/proxy.json.
    Proxy {
        /// Passed to bench-proxy, e.g. `--rounds 3 --seconds 5 --connections 32` or `--smoke`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Control plane: Maglev build times, flows moved by an add or remove, backend add to first packet (needs root); writes target/bench/control.json.
    Control {
        /// Passed to bench-control, e.g. `--rounds 7 --flows 1000000` or `--smoke`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub(crate) fn bench(which: Option<Bench>, report: bool) -> Result<()> {
    toolchain::setup(false)?;
    let report = match which {
        Some(which) => {
            run(which)?;
            report
        }
        // `--report` alone renders what the last runs wrote.
        None if report => true,
        None => {
            let start = std::time::Instant::now();
            for part in [
                Bench::Dataplane { args: Vec::new() },
                Bench::Forward { args: Vec::new() },
                Bench::Proxy { args: Vec::new() },
                Bench::Control { args: Vec::new() },
            ] {
                run(part)?;
            }
            println!(
                "==> every part ran in {:.1} min; rendering docs/benchmarks.md",
                start.elapsed().as_secs_f64() / 60.0
            );
            true
        }
    };
    if report {
        let mut cmd = command("cargo");
        cmd.args([
            "run",
            "--release",
            "-p",
            "hola-tests",
            "--bin",
            "bench-report",
        ]);
        println!("==> bench-report: {}", show(&cmd));
        run_status(&mut cmd).context("bench-report failed")?;
    }
    Ok(())
}

fn run(which: Bench) -> Result<()> {
    let (bin, args) = match which {
        Bench::Dataplane { args } => ("bench-dataplane", args),
        Bench::Control { args } => ("bench-control", args),
        Bench::Forward { args } => ("bench-forward", args),
        Bench::Proxy { args } => ("bench-proxy", args),
    };
    let mut cmd = command("cargo");
    cmd.args(["run", "--release", "-p", "hola-tests", "--bin", bin, "--"])
        .args(&args);
    println!("==> {bin}: {}", show(&cmd));
    run_status(&mut cmd).with_context(|| format!("{bin} failed"))
}
