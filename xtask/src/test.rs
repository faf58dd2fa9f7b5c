//! `cargo xtask test`: every check and test, in the order a failure is
//! cheapest to find. Privileged tests run last so that their summary closes
//! the output.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{is_root, run_cmd};

fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("\n==> {name}");
    run_cmd(cmd).with_context(|| format!("step '{name}' failed"))
}

fn cargo() -> Command {
    Command::new(env!("CARGO"))
}

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask test loads XDP programs and builds network namespaces: run it as root (sudo -E cargo xtask test)"
        );
    }
    step("format", cargo().args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    step(
        "unit tests (no root needed)",
        cargo().args([
            "test",
            "-p",
            "lb-common",
            "-p",
            "lb-userspace",
            "-p",
            "xtask",
        ]),
    )?;
    step(
        "benchmark smoke run: dataplane",
        cargo().args([
            "run",
            "--release",
            "-p",
            "hola-tests",
            "--bin",
            "bench-dataplane",
            "--",
            "--smoke",
            "--out",
            "target/bench/dataplane-smoke.json",
        ]),
    )?;
    step(
        "privileged tests: packet fixtures and attach tests",
        cargo()
            .args(["test", "-p", "hola-tests", "--", "--test-threads=1"])
            .args(extra),
    )?;
    println!("\ncargo xtask test: every step passed");
    Ok(())
}
