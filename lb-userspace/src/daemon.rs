//! `hola run`: load (or re-adopt) the data plane, attach it, serve the
//! control API until SIGTERM/SIGINT. On exit the data plane stays attached
//! and keeps forwarding; a new `hola run` adopts it without dropping a
//! packet. `hola down` removes it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::programs::xdp::XdpMode as AyaMode;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api,
    config::{Config, XdpMode},
    dataplane::{Dataplane, DataplaneConfig},
    neigh,
    owner::{self, Owner, Request},
    state,
};

pub struct RunOptions {
    pub config: PathBuf,
    pub interfaces: Vec<String>,
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

/// Watches the control socket's path until `shutdown`: when the file is
/// removed (or replaced by something else) under the running daemon, the
/// daemon binds it again and says so, so that the CLI keeps working.
async fn keep_socket(
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let mut ours = ino(&path);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if ino(&path) == ours {
            continue;
        }
        match bind_control_socket(&path) {
            Ok(listener) => {
                tracing::warn!(socket = %path.display(), "the control socket was removed or replaced under the running daemon; listening on it again");
                ours = ino(&path);
                let api = api::serve(listener, api::router(requests.clone()), shutdown.clone());
                tracker.spawn(async move {
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

/// Loads (or adopts) and attaches the data plane as `cfg` says; the owner
/// of it, with the configuration in the kernel (next hops follow).
fn start_owner(cfg: &Config, ifindexes: &[u32]) -> anyhow::Result<Owner> {
    ensure_bpffs()?;
    let bpffs = cfg.global.bpffs_dir.clone();
    let mut dp = Dataplane::load_pinned(DataplaneConfig::from_config(cfg)?, &bpffs)
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
    // The new program runs everywhere: an upgrade's new maps take the old
    // ones' place, and the layout is recorded for the next start.
    dp.finish_pinned().with_context(|| {
        format!(
            "finishing the pinned maps' upgrade under {}",
            bpffs.display()
        )
    })?;
    // Every attached interface can be a redirect target: a NAT reply that
    // comes in on the backends' side leaves on the clients'.
    for (iface, ifindex) in cfg.global.interfaces.iter().zip(ifindexes) {
        dp.add_tx_port(*ifindex)
            .with_context(|| format!("adding {iface} to the redirect map"))?;
    }
    // Tunnel "too big" needs the egress MTUs (followed every second after).
    dp.refresh_egress_mtus()
        .context("writing the egress interfaces' MTUs to EGRESS_MTU")?;
    // The cluster is off unless configured (the switch is a pinned map and
    // outlives a daemon that had one).
    if cfg.cluster.is_none() {
        dp.set_cluster(false)
            .context("switching cluster replication off in the data plane")?;
    }
    // Checks through the VIP: without the program they go to the backends'
    // own addresses (and say so once).
    let egress = &cfg.global.interfaces[0];
    let probe = dp
        .attach_probe(ifindexes[0], egress)
        .map_err(|e| format!("attaching hola_probe to lo and {egress}: {e}"))
        .and_then(|()| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("a runtime for netlink: {e}"))?;
            rt.block_on(crate::health::through::install_route())?;
            Ok(rt.block_on(crate::health::through::install_route_v6(ifindexes[0])))
        });
    match &probe {
        Err(e) => tracing::warn!(
            error = %e,
            "health checks go to the backends' own addresses, not through the VIP"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "health checks of IPv6 VIPs go to the backends' own addresses, not through the VIP"
        ),
        Ok(Ok(())) => {}
    }
    let state_file = cfg.global.state_file.clone();
    let mut owner = Owner::new(dp, cfg.clone(), state_file.clone(), ifindexes[0]);
    if let Ok(v6) = &probe {
        owner.through_vip(v6.is_ok());
    }
    owner.start().map_err(|e| anyhow::anyhow!("{e}"))?;
    state::persist(&state_file, cfg)
        .with_context(|| format!("writing the state file {}", state_file.display()))?;
    Ok(owner)
}

/// A SIGHUP came before `serve` could apply it.
static EARLY_HUP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_early_hup(_: libc::c_int) {
    EARLY_HUP.store(true, Ordering::Relaxed);
}

/// How long tasks get to stop once the daemon is told to.
const STOP_WAIT: Duration = Duration::from_secs(5);

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // A SIGHUP sent while the data plane loads (a 4,000,000-entry flow
    // table takes seconds) would end hola by its default action: until
    // `serve` installs the handler that applies the file, it is noted, and
    // `serve` applies the file once then.
    // SAFETY: the handler only stores to an atomic (async-signal-safe); no
    // other thread exists yet.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            note_early_hup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let mut cfg = state::effective_config(&opts.config)?;
    if !opts.interfaces.is_empty() {
        cfg.global.interfaces = opts.interfaces.clone();
    }
    let ifindexes: Vec<u32> = cfg
        .global
        .interfaces
        .iter()
        .map(|i| interface_index(i))
        .collect::<Result<_, _>>()?;
    let cluster_settings = crate::cluster::settings(&cfg)?;
    let mut owner = start_owner(&cfg, &ifindexes)?;
    let (senders, inputs) = owner::channels();
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Vec::new());
    owner.check_with(targets_tx);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Tasks stop at `shutdown`; the owner, which they talk to, after them.
    let shutdown = CancellationToken::new();
    let owner_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let neigh_task = {
        let _enter = rt.enter();
        let (resolver, task) = neigh::spawn(ifindexes[0], senders.neigh.clone(), shutdown.clone());
        owner.resolve_with(resolver);
        task
    };
    let cluster = match cluster_settings {
        Some(settings) => {
            let main = &cfg.global.interfaces[0];
            let mac = neigh::link_mac(main)
                .with_context(|| format!("cluster: reading the MAC address of {main}"))?;
            let shared = crate::cluster::Shared::new(settings, senders.cluster.clone());
            owner
                .with_cluster(shared.clone(), mac)
                .context("switching cluster replication on in the data plane")?;
            Some(shared)
        }
        None => None,
    };
    let bgp_task = cfg.bgp.clone().map(|b| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        owner.announce_with(b.clone(), tx, drain_marker(&cfg.global.state_file));
        rt.spawn(crate::bgp::run(b, rx, shutdown.clone()))
    });
    let stop = owner_stop.clone();
    let owner_thread = std::thread::Builder::new()
        .name("dataplane-owner".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime for the owner");
            rt.block_on(owner.run(inputs, stop));
        })?;

    let result = rt.block_on(serve(
        &cfg,
        &opts.config,
        &senders,
        cluster,
        targets_rx,
        &shutdown,
        &tracker,
    ));
    rt.block_on(async {
        shutdown.cancel();
        tracker.close();
        // Every task stops at the token; a client that holds a connection
        // open without finishing its request must not hold up the exit.
        if tokio::time::timeout(STOP_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tracker.len(),
                "tasks still running {} s after the stop; leaving them",
                STOP_WAIT.as_secs()
            );
        }
        let _ = tokio::time::timeout(STOP_WAIT, neigh_task).await;
        if let Some(t) = bgp_task {
            let _ = tokio::time::timeout(STOP_WAIT, t).await;
        }
    });
    owner_stop.cancel();
    let _ = owner_thread.join();
    drop(rt);
    result
}

/// Everything but the owner, until SIGTERM/SIGINT or a server fails: the
/// control API (opened once the next hops are known, or after a bound),
/// the health checker, the cluster's tasks, the metrics listener; SIGHUP
/// applies `config_path` ([`reload`]).
async fn serve(
    cfg: &Config,
    config_path: &Path,
    senders: &owner::Senders,
    cluster: Option<std::sync::Arc<crate::cluster::Shared>>,
    targets: tokio::sync::watch::Receiver<Vec<crate::health::Job>>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    // First: until it is installed, SIGHUP's default action ends hola.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    if senders.requests.send(Request::Ready(ready)).await.is_ok() {
        let _ = is_ready.await;
    }
    if EARLY_HUP.swap(false, Ordering::Relaxed) {
        tracing::info!("SIGHUP came while the data plane was loading; applying the file now");
        tracker.spawn(reload(
            config_path.to_path_buf(),
            cfg.global.clone(),
            senders.requests.clone(),
        ));
    }
    tracker.spawn(crate::health::supervise(
        targets,
        senders.checks.clone(),
        shutdown.clone(),
    ));
    if let Some(shared) = cluster {
        crate::cluster::start(shared, shutdown.clone(), tracker).await?;
    }
    let sock = cfg.global.control_socket.clone();
    let listener = bind_control_socket(&sock)?;
    tracing::info!(socket = %sock.display(), "control API listening");
    let api = tracker.spawn(api::serve(
        listener,
        api::router(senders.requests.clone()),
        shutdown.clone(),
    ));
    tracker.spawn(keep_socket(
        sock.clone(),
        senders.requests.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    let metrics = match cfg.global.metrics_address {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            tracing::info!(%addr, "metrics on /metrics");
            let server = axum::serve(l, api::metrics_router(senders.requests.clone()))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            Some(tracker.spawn(server.into_future()))
        }
        None => None,
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let metrics = async move {
        match metrics {
            Some(m) => m.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(api, metrics);
    let result = loop {
        tokio::select! {
            r = &mut api => break r.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)),
            r = &mut metrics => break r.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => {
                tracker.spawn(reload(config_path.to_path_buf(), cfg.global.clone(), senders.requests.clone()));
            }
        }
    };
    let _ = std::fs::remove_file(&sock);
    tracing::info!("stopping; the data plane stays attached (hola down removes it)");
    result
}

/// SIGHUP: the VIPs, backends and checks of `path` become the desired
/// state, as `hola apply` makes them (the owner logs what changed and
/// moved). A file with an error changes nothing; its errors are logged
/// with their lines. Global settings take effect only at a start: a
/// difference is logged.
async fn reload(path: PathBuf, running: crate::config::Global, requests: mpsc::Sender<Request>) {
    let file = path.display().to_string();
    tracing::info!("SIGHUP: applying {file}");
    let c = match crate::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                "SIGHUP: {file} not applied, nothing was changed: fix it (`hola check-config \
                 {file}`), then send SIGHUP again"
            );
            return;
        }
    };
    let mut global = c.global.clone();
    global.interfaces.clone_from(&running.interfaces);
    if global != running {
        tracing::warn!(
            "SIGHUP: the [global] settings of {file} differ from the running ones; they take \
             effect only when hola run starts again (VIPs, backends and checks are applied now)"
        );
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = Request::Apply {
        file: file.clone(),
        vips: c.vips,
        dry_run: false,
        reply,
    };
    if requests.send(req).await.is_err() {
        return;
    }
    match answer.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            for line in e.to_string().lines() {
                tracing::error!("SIGHUP: {line}");
            }
        }
        Err(_) => tracing::error!("SIGHUP: the data-plane owner stopped before answering"),
    }
}

/// Where `hola node drain` leaves its marker: beside the state file, so
/// that a restarted node stays drained.
pub fn drain_marker(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".drained");
    PathBuf::from(name)
}

/// `hola down` with `[bgp]`: withdraws every VIP first (hola's routes
/// deleted from its table), as nothing will forward to them.
fn withdraw_on_down(b: &crate::config::BgpConfig) -> anyhow::Result<()> {
    let t = crate::bgp::Table::of(b);
    let gone = crate::bgp::withdraw_all_blocking(t)
        .with_context(|| format!("bgp: withdrawing the VIPs (routes in table {})", t.table))?;
    for a in &gone {
        println!("withdrew {a} (route in table {} deleted)", t.table);
    }
    Ok(())
}

/// `hola down`: withdraws every VIP from BGP (with `[bgp]`), then removes
/// every pin (links first: the program detaches at once) and the routing
/// rule and table of checks through the VIP, leaving nothing of hola in
/// the kernel once no process holds it.
pub fn down(
    bpffs_dir: &Path,
    control_socket: &Path,
    bgp: Option<&crate::config::BgpConfig>,
) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(control_socket).is_ok() {
        bail!(
            "hola run is still running (its control socket {} answers); stop it first (SIGTERM), then run hola down",
            control_socket.display()
        );
    }
    if let Some(b) = bgp {
        withdraw_on_down(b)?;
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
    // Checks through the VIP left their routing rule and table (only
    // marked packets use them; nothing does once hola is down).
    let routes = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for netlink")?
        .block_on(crate::health::through::remove_route())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for r in routes {
        println!("removed {r}");
    }
    Ok(())
}
