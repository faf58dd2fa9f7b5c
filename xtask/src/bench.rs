//! `cargo xtask bench PART`: runs a benchmark binary in release mode.

use std::process::Command;

use anyhow::bail;

use crate::{is_root, run_cmd};

pub fn run(part: &str, args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks load XDP programs: run as root (sudo -E cargo xtask bench {part})");
    }
    match part {
        "dataplane" => run_cmd(
            Command::new(env!("CARGO"))
                .args([
                    "run",
                    "--release",
                    "-p",
                    "hola-tests",
                    "--bin",
                    "bench-dataplane",
                    "--",
                ])
                .args(args),
        ),
        other => bail!(
            "unknown benchmark part {other:?}; available: dataplane (forward, proxy and control arrive with the benchmarks issue)"
        ),
    }
}
