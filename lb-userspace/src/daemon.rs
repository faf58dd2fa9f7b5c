//! `hola run`: load (or re-adopt) the data plane, attach it, serve the
//! control API until SIGTERM/SIGINT. On exit the data plane stays attached
//! and keeps forwarding; a new `hola run` adopts it without dropping a
//! packet. `hola down` removes it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::programs::xdp::XdpMode as AyaMode;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api,
    config::{self, Config, XdpMode},
    dataplane::{Dataplane, DataplaneConfig},
    owner::{self, Owner},
};

pub struct RunOptions {
    pub config: PathBuf,
    pub interfaces: Vec<String>,
}

/// The data-plane settings a configuration asks for.
pub fn dataplane_config(c: &Config) -> DataplaneConfig {
    let g = &c.global;
    DataplaneConfig {
        flow_capacity_per_cpu: g.flow_capacity_per_cpu,
        max_vips: g.max_vips,
        max_backends: g.max_backends,
        ring_capacity: g.ring_capacity,
        tunnel_src_v4: (g.tunnel_source_v4.addr, g.tunnel_source_v4.prefix),
        tunnel_src_v6: (g.tunnel_source_v6.addr, g.tunnel_source_v6.prefix),
        nat_capacity: g.nat_capacity,
        nat_tcp_idle: g.nat_tcp_timeout,
        nat_udp_idle: g.nat_udp_timeout,
        nat_closed_linger: g.nat_closed_timeout,
        fullnat_src_v4: g.fullnat_source_v4,
        fullnat_src_v6: g.fullnat_source_v6,
        fullnat_ports: crate::config::parse_port_range(&g.fullnat_ports).unwrap_or((20000, 59999)),
        ..DataplaneConfig::default()
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted there already.
///
/// Pins must outlive this process, so they must live in a bpffs that other
/// processes see. `ip netns exec` gives its command a private mount
/// namespace without /sys/fs/bpf: a bpffs mounted there would vanish with
/// the process (and the data plane with it), hence the warning.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let bpf_mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if bpf_mounted {
        return Ok(());
    }
    tracing::warn!(
        "bpffs was not mounted at /sys/fs/bpf: mounting it; if hola runs in a private mount namespace \
         (ip netns exec makes one) the pins vanish when it exits: enter only the network namespace \
         (nsenter --net=/run/netns/NAME) or mount bpffs on the host first"
    );
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs at /sys/fs/bpf: {} (mount -t bpf bpf /sys/fs/bpf)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn interface_index(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!(
            "interface {name} not found (ip link shows: {})",
            interface_names().join(", ")
        );
    }
    Ok(idx)
}

/// The interfaces of this network namespace (if_nameindex follows the
/// caller's namespace; /sys/class/net may show another one's).
fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed with if_freenameindex; names are NUL-terminated C strings.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// The link pin of interface `iface` under `bpffs_dir`.
pub fn link_pin(bpffs_dir: &Path, iface: &str) -> PathBuf {
    bpffs_dir.join("links").join(iface)
}

/// The configuration to run with: global settings from `path`, VIPs from the
/// state file when one exists (changes made through the API survive).
///
/// A state file that cannot be used stops the start: running from the
/// configuration file instead would silently undo every change made through
/// the API. The error says what is wrong, where the previous state is
/// ([`owner::prev_path`]) and how to go on.
pub fn effective_config(path: &Path) -> anyhow::Result<Config> {
    let mut c = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = c.global.state_file.clone();
    match read_state(&state, &c) {
        Ok(None) => {}
        Ok(Some(vips)) => {
            tracing::info!("VIPs and backends from the state file {}", state.display());
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
    let prev = owner::prev_path(state);
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

/// The control socket at `path`, root only (mode 0600): its directory
/// made, whatever was at the path replaced.
fn bind_control_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the control socket {} root-only", path.display()))?;
    Ok(listener)
}

/// Watches the control socket's path: when the file is removed (or
/// replaced by something else) under the running daemon, the daemon binds
/// it again and says so, so that the CLI keeps working.
async fn keep_socket(path: PathBuf, tx: mpsc::Sender<crate::owner::Request>) {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let mut ours = ino(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ino(&path) == ours {
            continue;
        }
        match bind_control_socket(&path) {
            Ok(listener) => {
                tracing::warn!(socket = %path.display(), "the control socket was removed or replaced under the running daemon; listening on it again");
                ours = ino(&path);
                let api = api::serve(listener, api::router(tx.clone()));
                tokio::spawn(async move {
                    if let Err(e) = api.await {
                        tracing::warn!(error = %e, "control API on the re-created socket");
                    }
                });
            }
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %format!("{e:#}"), "the control socket was removed and cannot be created again; the CLI cannot reach this daemon until it is restarted (the data plane keeps forwarding)");
                ours = ino(&path);
            }
        }
    }
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut cfg = effective_config(&opts.config)?;
    if !opts.interfaces.is_empty() {
        cfg.global.interfaces = opts.interfaces.clone();
    }
    let ifindexes: Vec<u32> = cfg
        .global
        .interfaces
        .iter()
        .map(|i| interface_index(i))
        .collect::<Result<_, _>>()?;
    ensure_bpffs()?;
    let bpffs = cfg.global.bpffs_dir.clone();
    let mut dp = Dataplane::load_pinned(dataplane_config(&cfg), &bpffs)
        .with_context(|| format!("loading the data plane (pins under {})", bpffs.display()))?;
    let modes: &[AyaMode] = match cfg.global.xdp_mode {
        XdpMode::Auto => &[AyaMode::Driver, AyaMode::Skb],
        XdpMode::Driver => &[AyaMode::Driver],
        XdpMode::Generic => &[AyaMode::Skb],
    };
    for iface in &cfg.global.interfaces {
        let (how, driver_error) = dp.attach_pinned(iface, modes, &link_pin(&bpffs, iface))?;
        if let Some(why) = driver_error {
            tracing::warn!(interface = %iface, reason = %why, "attached in generic (skb) mode because driver mode failed; expect lower throughput");
        } else {
            tracing::info!(interface = %iface, mode = %how, "attached");
        }
    }
    // Every attached interface can be a redirect target: a NAT reply that
    // comes in on the backends' side leaves on the clients'.
    for (iface, ifindex) in cfg.global.interfaces.iter().zip(&ifindexes) {
        dp.add_tx_port(*ifindex)
            .with_context(|| format!("adding {iface} to the redirect map"))?;
    }
    // The cluster is off unless configured (the switch is a pinned map and
    // outlives a daemon that had one).
    if cfg.cluster.is_none() {
        dp.set_cluster(false)
            .context("switching cluster replication off in the data plane")?;
    }
    let cluster_settings = crate::cluster::settings(&cfg)?;
    let state_file = cfg.global.state_file.clone();
    let mut owner = Owner::new(dp, cfg.clone(), state_file.clone(), ifindexes[0]);
    owner
        .reconcile(&cfg, Duration::from_secs(2))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    owner::persist(&state_file, &cfg)
        .with_context(|| format!("writing the state file {}", state_file.display()))?;
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Vec::new());
    owner.check_with(targets_tx);
    let (tx, rx) = mpsc::channel();
    let cluster = match cluster_settings {
        Some(settings) => {
            let main = &cfg.global.interfaces[0];
            let mac = crate::neigh::link_mac(main)
                .with_context(|| format!("cluster: reading the MAC address of {main}"))?;
            let (events_tx, events_rx) = tokio::sync::mpsc::channel(crate::cluster::EVENT_CAPACITY);
            let shared = crate::cluster::Shared::new(settings, events_tx);
            owner
                .with_cluster(shared.clone(), mac)
                .context("switching cluster replication on in the data plane")?;
            Some((shared, events_rx))
        }
        None => None,
    };
    let owner_thread = std::thread::Builder::new()
        .name("dataplane-owner".into())
        .spawn(move || owner.serve(rx))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sock = cfg.global.control_socket.clone();
        let listener = bind_control_socket(&sock)?;
        tracing::info!(socket = %sock.display(), "control API listening");
        let api = api::serve(listener, api::router(tx.clone()));
        tokio::spawn(keep_socket(sock.clone(), tx.clone()));
        let (shutdown, tracker) = start_tasks(cluster, tx.clone()).await?;
        tokio::spawn(crate::health::supervise(targets_rx, tx.clone()));
        let metrics = match cfg.global.metrics_address {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                tracing::info!(%addr, "metrics on /metrics");
                Some(axum::serve(l, api::metrics_router(tx.clone())))
            }
            None => None,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let result = match metrics {
            Some(m) => tokio::select! {
                r = api => r.map_err(anyhow::Error::from),
                r = m.into_future() => r.map_err(anyhow::Error::from),
                () = stop => Ok(()),
            },
            None => tokio::select! {
                r = api => r.map_err(anyhow::Error::from),
                () = stop => Ok(()),
            },
        };
        let _ = std::fs::remove_file(&sock);
        tracing::info!("stopping; the data plane stays attached (hola down removes it)");
        stop_tasks(&shutdown, &tracker).await;
        result
    })?;
    drop(rt);
    let _ = tx.send(crate::owner::Request::Shutdown);
    drop(tx);
    let _ = owner_thread.join();
    Ok(())
}

/// Starts the daemon's tracked tasks (the cluster's, if configured, with
/// the bridge below) under a new shutdown token: the token and the tracker
/// to give [`stop_tasks`] on exit.
async fn start_tasks(
    cluster: Option<(
        std::sync::Arc<crate::cluster::Shared>,
        tokio::sync::mpsc::Receiver<crate::cluster::ClusterEvent>,
    )>,
    to_owner: mpsc::Sender<owner::Request>,
) -> anyhow::Result<(CancellationToken, TaskTracker)> {
    let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
    if let Some((shared, events)) = cluster {
        tracker.spawn(forward_cluster_events(events, to_owner, shutdown.clone()));
        crate::cluster::start(shared, shutdown.clone(), &tracker).await?;
    }
    Ok((shutdown, tracker))
}

/// Stops every task started under `shutdown` and waits until each on
/// `tracker` has ended.
async fn stop_tasks(shutdown: &CancellationToken, tracker: &TaskTracker) {
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}

/// TEMPORARY bridge, until the owner receives `ClusterEvent`s from the
/// bounded channel itself (issue 14): hands each to the owner's channel as
/// the `Request` it used to be. The owner's channel is unbounded, so while
/// this bridge stands the bound gives no back-pressure yet.
async fn forward_cluster_events(
    mut events: tokio::sync::mpsc::Receiver<crate::cluster::ClusterEvent>,
    to_owner: mpsc::Sender<owner::Request>,
    shutdown: CancellationToken,
) {
    use crate::cluster::ClusterEvent;
    while let Some(Some(event)) = shutdown.run_until_cancelled(events.recv()).await {
        let request = match event {
            ClusterEvent::Snapshot(reply) => owner::Request::ClusterSnapshot(reply),
            ClusterEvent::PeerEntries { node, entries } => {
                owner::Request::PeerEntries { node, entries }
            }
        };
        if to_owner.send(request).is_err() {
            return;
        }
    }
}

/// `hola down`: removes every pin (links first: the program detaches at
/// once), leaving nothing of hola in the kernel once no process holds it.
pub fn down(bpffs_dir: &Path, control_socket: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(control_socket).is_ok() {
        bail!(
            "hola run is still running (its control socket {} answers); stop it first (SIGTERM), then run hola down",
            control_socket.display()
        );
    }
    let removed = crate::dataplane::unpin_all(bpffs_dir)
        .with_context(|| format!("removing the pins under {}", bpffs_dir.display()))?;
    if removed.is_empty() {
        println!("nothing to remove: no pins under {}", bpffs_dir.display());
    } else {
        for p in removed {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        owner::persist(&state, &with_backends(&config, 3)).expect("persist");
        assert_eq!(
            effective_config(&config).expect("state").vips[0]
                .backends
                .len(),
            3
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_corrupt_state_file_is_refused_naming_the_previous_state() {
        let (dir, config, state) = setup("corrupt");
        let prev = owner::prev_path(&state);
        owner::persist(&state, &with_backends(&config, 2)).expect("persist");
        owner::persist(&state, &with_backends(&config, 3)).expect("persist");
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
