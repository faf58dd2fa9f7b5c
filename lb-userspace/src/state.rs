//! The state file: every change made through the API is kept there
//! (atomically, the state it replaced beside it as `NAME.prev`), and a
//! start takes its VIPs from it, so that changes survive restarts. What a
//! start does with a state file that cannot be used is decided here too.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::bail;

use crate::config::{self, Config};

/// Where [`persist`] keeps the state a change replaced: `NAME.prev` beside
/// `NAME`.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    path.with_file_name(name)
}

/// Writes `config` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. The state it replaces
/// stays beside it as [`prev_path`] (a hard link made before the rename, so
/// `path` itself is never missing). Writing what `path` already holds does
/// nothing, so that a restart does not overwrite the previous state.
pub fn persist(path: &Path, config: &Config) -> std::io::Result<()> {
    let text = config.to_toml();
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if path.exists() {
        let prev_tmp = dir.join(format!(".{name}.prev.tmp"));
        let _ = std::fs::remove_file(&prev_tmp);
        if std::fs::hard_link(path, &prev_tmp).is_err() {
            // A file system without hard links: a copy, synced.
            std::fs::copy(path, &prev_tmp)?;
            std::fs::File::open(&prev_tmp)?.sync_all()?;
        }
        std::fs::rename(&prev_tmp, prev_path(path))?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The configuration to run with: global settings from `path`, VIPs from the
/// state file when one exists (changes made through the API survive).
///
/// A state file that cannot be used stops the start: running from the
/// configuration file instead would silently undo every change made through
/// the API. The error says what is wrong, where the previous state is
/// ([`prev_path`]) and how to go on.
pub fn effective_config(path: &Path) -> anyhow::Result<Config> {
    let mut c = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = c.global.state_file.clone();
    match read_state(&state, &c) {
        Ok(None) => {}
        Ok(Some(vips)) => {
            tracing::info!("VIPs and backends from the state file {}", state.display());
            if let Some(line) = differs(&state, path, &vips, &c.vips) {
                tracing::warn!("{line}");
            }
            c.vips = vips;
        }
        Err(problem) => bail!(
            "the state file {} cannot be used:\n{problem}\n{}",
            state.display(),
            state_advice(&state, &c, path)
        ),
    }
    Ok(c)
}

/// One line when the state file's VIPs differ from the configuration
/// file's: how, which wins, and how to make the file the desired state.
pub fn differs(
    state: &Path,
    config: &Path,
    state_vips: &[config::VipConfig],
    file_vips: &[config::VipConfig],
) -> Option<String> {
    let d = config::diff::diff(state_vips, file_vips);
    let (s, f) = (state.display(), config.display());
    (!d.is_empty()).then(|| {
        format!(
            "the state file {s} differs from {f} (applying {f} would change: {}); the state \
             file wins, as it holds the changes made since through the API: to make {f} the \
             desired state, see what it would change and move with `hola config diff {f}`, \
             then run `hola apply {f}` or send SIGHUP to hola run",
            d.summary()
        )
    })
}

/// The VIPs of the state file `state`, checked against the global settings
/// of `c`; `None` when there is no state file; `Err` says what is wrong.
fn read_state(state: &Path, c: &Config) -> Result<Option<Vec<config::VipConfig>>, String> {
    let name = state.display().to_string();
    let bytes = match std::fs::read(state) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: cannot read it: {e}")),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{name}: not UTF-8 text (invalid byte at offset {}): the file is corrupt",
            e.utf8_error().valid_up_to()
        )
    })?;
    let s = config::parse(&text, &name).map_err(|e| e.to_string())?;
    let mut checked = c.clone();
    checked.vips = s.vips;
    checked.validate(&name).map_err(|e| e.to_string())?;
    Ok(Some(checked.vips))
}

/// What an operator can do about an unusable state file: the previous
/// state, when there is a usable one, or starting from the configuration.
fn state_advice(state: &Path, c: &Config, config_path: &Path) -> String {
    let prev = prev_path(state);
    let (s, p, cf) = (state.display(), prev.display(), config_path.display());
    let fresh = format!(
        "move {s} away to start from the VIPs in {cf} (changes made through the API since are \
         then lost)"
    );
    match read_state(&prev, c) {
        Ok(Some(vips)) => {
            let backends: usize = vips.iter().map(|v| v.backends.len()).sum();
            format!(
                "The state before the last change is kept at {p} and is valid ({} VIPs, \
                 {backends} backends): look at it, then `mv {p} {s}` to start from it; or \
                 {fresh}. hola does not choose for you.",
                vips.len()
            )
        }
        Ok(None) => {
            format!("There is no previous state ({p} does not exist): fix {s}, or {fresh}.")
        }
        Err(e) => {
            format!("The previous state {p} cannot be used either ({e}): fix {s}, or {fresh}.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{config_with, vip};

    #[test]
    fn persist_keeps_the_replaced_state_beside_and_skips_unchanged_writes() {
        let dir = std::env::temp_dir().join(format!("hola-unit-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state.toml");
        let prev = prev_path(&state);
        assert_eq!(prev, dir.join("state.toml.prev"));
        let c1 = config_with(vec![vip(&[("198.18.0.11", 1, false)])]);
        let c2 = config_with(vec![vip(&[("198.18.0.11", 2, false)])]);
        let c3 = config_with(vec![vip(&[("198.18.0.12", 3, false)])]);
        persist(&state, &c1).expect("first write");
        assert!(!prev.exists(), "nothing was replaced");
        persist(&state, &c1).expect("same state again");
        assert!(!prev.exists(), "an unchanged write replaces nothing");
        persist(&state, &c2).expect("second");
        persist(&state, &c3).expect("third");
        let read = |p: &Path| crate::config::load(p).expect("parses");
        assert_eq!(read(&state), c3);
        assert_eq!(read(&prev), c2, "the state before the last change");
        // Restarting writes the same state: the previous one stays.
        persist(&state, &c3).expect("unchanged");
        assert_eq!(read(&prev), c2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["state.toml", "state.toml.prev"],
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A configuration file with one VIP and its state file in a fresh
    /// directory: (directory, configuration path, state path).
    fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("hola-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let state = dir.join("state.toml");
        let config = dir.join("hola.toml");
        std::fs::write(
            &config,
            format!(
                "[global]\ninterfaces = [\"eth0\"]\nstate_file = \"{}\"\n\n[[vip]]\naddress = \
                 \"198.18.1.1\"\nport = 80\n\n[[vip.backend]]\naddress = \"198.18.0.11\"\n",
                state.display()
            ),
        )
        .expect("config");
        (dir, config, state)
    }

    fn with_backends(config: &Path, n: usize) -> Config {
        let mut c = config::load(config).expect("config");
        let b = c.vips[0].backends[0].clone();
        c.vips[0].backends = (0..n)
            .map(|i| config::BackendConfig {
                address: format!("198.18.0.{}", 11 + i).parse().expect("ip"),
                ..b.clone()
            })
            .collect();
        c
    }

    #[test]
    fn the_state_file_wins_over_the_configuration_file() {
        let (dir, config, state) = setup("state-wins");
        assert_eq!(
            effective_config(&config).expect("no state").vips[0]
                .backends
                .len(),
            1
        );
        persist(&state, &with_backends(&config, 3)).expect("persist");
        assert_eq!(
            effective_config(&config).expect("state").vips[0]
                .backends
                .len(),
            3
        );
        let file = config::load(&config).expect("config").vips;
        let line =
            differs(&state, &config, &with_backends(&config, 3).vips, &file).expect("they differ");
        for needle in [
            "VIPs: 0 added, 0 removed, 1 changed; backends of VIPs in both: 0 added, 2 removed, \
             0 changed"
                .to_string(),
            "the state file wins".into(),
            format!("`hola config diff {}`", config.display()),
            format!("`hola apply {}`", config.display()),
        ] {
            assert!(line.contains(&needle), "{line}\nshould say {needle:?}");
        }
        assert_eq!(differs(&state, &config, &file, &file), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_corrupt_state_file_is_refused_naming_the_previous_state() {
        let (dir, config, state) = setup("corrupt");
        let prev = prev_path(&state);
        persist(&state, &with_backends(&config, 2)).expect("persist");
        persist(&state, &with_backends(&config, 3)).expect("persist");
        let good = std::fs::read_to_string(&state).expect("state");
        let refused = |bytes: &[u8]| {
            std::fs::write(&state, bytes).expect("write");
            let e = effective_config(&config).expect_err("a corrupt state file is refused");
            format!("{e:#}")
        };
        for (bytes, what) in [
            (&b"\xff\xfe\x00garbage"[..], "not UTF-8 text"),
            (&good.as_bytes()[..good.len() / 2], "syntax error"),
            (b"", "global"),
            (
                good.replace("198.18.0.13", "198.18.0.300").as_bytes(),
                "198.18.0.300",
            ),
        ] {
            let msg = refused(bytes);
            for needle in [
                format!("the state file {} cannot be used", state.display()),
                what.to_string(),
                format!(
                    "kept at {} and is valid (1 VIPs, 2 backends)",
                    prev.display()
                ),
                format!("mv {} {}", prev.display(), state.display()),
                format!("to start from the VIPs in {}", config.display()),
            ] {
                assert!(msg.contains(&needle), "{msg}\nshould say {needle:?}");
            }
            assert_eq!(
                std::fs::read(&state).expect("state"),
                bytes,
                "left as found"
            );
        }
        // The previous state bad too, or missing.
        std::fs::write(&prev, "[global]\n").expect("write");
        let msg = refused(b"x");
        assert!(
            msg.contains(&format!(
                "The previous state {} cannot be used either",
                prev.display()
            )),
            "{msg}"
        );
        std::fs::remove_file(&prev).expect("rm");
        let msg = refused(b"x");
        assert!(
            msg.contains(&format!(
                "no previous state ({} does not exist)",
                prev.display()
            )),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
