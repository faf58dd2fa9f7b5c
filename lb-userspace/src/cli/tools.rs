//! The operator's tools: `hola doctor`, and `hola generate` (man pages and
//! shell completions for the package). `hola top` lives in the library
//! (`lb_userspace::top`), where tests can draw it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use lb_userspace::doctor::{self, Report};

use super::{Cli, ModeArg, parse_vip};

/// Where the package puts the configuration, which doctor reads by default.
pub const CONFIG_FILE: &str = "/etc/hola/hola.toml";

/// `hola doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// The configuration hola runs with (its interfaces, pins, socket and
    /// state file are checked).
    #[arg(long, default_value = CONFIG_FILE)]
    config: PathBuf,
    /// Check this host as a backend of VIP (ADDRESS:PORT/PROTO) instead of
    /// as a balancer.
    #[arg(long, value_name = "VIP")]
    backend: Option<String>,
    /// With --backend: the VIP's mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Dsr)]
    mode: ModeArg,
    /// The largest packet clients send: a tunnel VIP needs this plus the
    /// outer header on the path to its backends.
    #[arg(long, default_value_t = 1500)]
    client_mtu: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the checks, prints them and exits with 0, 1 or 2 (ok, warn, fail).
pub fn doctor(a: &DoctorArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "hola doctor reads BPF programs, pins and the control socket, which takes root: run \
             it as root (sudo hola doctor ...)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = match &a.backend {
        Some(vip) => {
            let vip = parse_vip(vip)?;
            let seen = rt.block_on(doctor::read::backend(vip, a.mode.into()))?;
            doctor::backend::checks(&seen)
        }
        None => rt
            .block_on(doctor::read::balancer_checks(&a.config, a.client_mtu))
            .with_context(|| format!("reading the set-up of {}", a.config.display()))?,
    };
    let report = Report::new(checks);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.text())?;
    }
    out.flush()?;
    let code = report.status.exit_code();
    if code != 0 {
        std::process::exit(i32::from(code));
    }
    Ok(())
}

/// `hola generate --out DIR`: DIR/man/hola.1 and a page per command
/// (hola-vip-add.1, ...), DIR/completions/{hola.bash,_hola,hola.fish}.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let mut pages = 0;
    let mut stack = vec![("hola".to_owned(), cmd.clone())];
    while let Some((name, c)) = stack.pop() {
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        let page = c.name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        let path = man.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        pages += 1;
    }
    let comp = out.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "hola", &comp)
            .with_context(|| format!("writing the {shell} completions into {}", comp.display()))?;
    }
    println!(
        "{pages} man pages in {}, completions for bash, zsh and fish in {}",
        man.display(),
        comp.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");

    /// The package's /etc/hola/hola.toml is valid as shipped: it attaches
    /// to the interface it names and serves no VIP until one is added.
    #[test]
    fn the_packaged_configuration_is_valid() {
        let c = lb_userspace::config::load(&Path::new(PACKAGING).join("hola.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.global.interfaces, ["eth0"]);
        assert!(c.vips.is_empty());
    }

    /// The unit starts hola with the file doctor reads by default, and
    /// reloads it with SIGHUP.
    #[test]
    fn the_unit_runs_the_packaged_configuration() {
        let unit = std::fs::read_to_string(Path::new(PACKAGING).join("hola.service")).unwrap();
        let line = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in the unit"))
                .to_owned()
        };
        assert_eq!(
            line("ExecStart="),
            format!("/usr/bin/hola run --config {CONFIG_FILE}")
        );
        assert_eq!(line("ExecReload="), "/bin/kill -HUP $MAINPID");
        assert_eq!(
            line("CapabilityBoundingSet="),
            "CAP_BPF CAP_PERFMON CAP_NET_ADMIN"
        );
    }

    #[test]
    fn man_pages_and_completions_are_generated() {
        let dir = std::env::temp_dir().join(format!("hola-generate-{}", std::process::id()));
        generate(&dir).unwrap();
        let page = std::fs::read_to_string(dir.join("man/hola-doctor.1")).unwrap();
        assert!(page.contains("\\-\\-backend"), "{page}");
        for f in [
            "man/hola.1",
            "man/hola-vip-add.1",
            "man/hola-top.1",
            "completions/hola.bash",
            "completions/_hola",
            "completions/hola.fish",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        // The hidden command has no page.
        assert!(!dir.join("man/hola-generate.1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
