//! Running the tools that build a topology (`ip`, `sysctl`, `ethtool`, ...)
//! and saying what failed.

use std::process::{Command, ExitStatus};

/// A command that could not be started, failed, or said something that
/// could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "could not start `{command}`: {source} (is it installed? `cargo xtask setup` installs it)"
    )]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed {output:?}, which does not hold {what}")]
    Output {
        command: String,
        what: &'static str,
        output: String,
    },
}

/// The command line as a person would type it.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` and returns its stdout; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output().map_err(|source| Error::Start {
        command: show(cmd),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: show(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program args`, run as [`run`] does.
pub(crate) fn run_args(program: &str, args: &[&str]) -> Result<String, Error> {
    run(Command::new(program).args(args))
}
