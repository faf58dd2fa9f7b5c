//! `hola`: the daemon and its CLI.

#![warn(clippy::too_many_lines)]

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Some(format) = cli.daemon_log_format() {
        init_logs(format);
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hola: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs of `hola run` go to stderr, filtered by `RUST_LOG` (default: info).
fn init_logs(format: cli::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs redirected to a file stay plain.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        cli::LogFormat::Human => b.init(),
        cli::LogFormat::Json => b.json().init(),
    }
}
