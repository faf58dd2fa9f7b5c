//! What each command does. `run`, `check-config`, `down`, `decap` and
//! `veth-peer` work locally; the others send one request to the daemon's
//! control socket through [`client`] and hand its answer to [`print`].

use std::{future::Future, net::IpAddr, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use lb_userspace::{
    api::{BackendAdd, BackendDrain, BackendRef, BackendWeight, NodeDrain, VipRef, paths},
    client,
    config::{self, BackendConfig, Config, VipConfig},
    daemon, helpers,
    stats::{BackendReport, Event, FlowAnswer, StatsReport},
};

use super::{
    AttachCmd, BackendCmd, BgpCmd, Cli, Cmd, ConfigCmd, HashArg, ModeArg, NodeCmd, ProtoArg,
    VipCmd, apply,
    drain::{self, Sample, Status, Watch},
    parse_vip,
    print::{self, Changed, DrainWait},
    tools, trace,
};

/// Runs one command line to its end: `Ok` once its answer is printed.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.as_path();
    match cli.cmd {
        Cmd::Run { config, interfaces } => daemon::run(daemon::RunOptions { config, interfaces }),
        Cmd::CheckConfig { file } => {
            let c = load_config(&file)?;
            print!("{}", print::config_ok(&file, &c));
            Ok(())
        }
        Cmd::Down { config, bpffs_dir } => {
            let (dir, sock, bgp) = match config {
                Some(p) => {
                    let c = load_config(&p)?;
                    (c.global.bpffs_dir, c.global.control_socket, c.bgp)
                }
                None => (bpffs_dir, cli.socket.clone(), None),
            };
            daemon::down(&dir, &sock, bgp.as_ref())
        }
        Cmd::Decap {
            cmd: AttachCmd::Attach { iface, pin },
        } => helpers::decap_attach(&iface, &pin),
        Cmd::VethPeer {
            cmd: AttachCmd::Attach { iface, pin },
        } => helpers::veth_peer_attach(&iface, &pin),
        Cmd::Decap {
            cmd: AttachCmd::Detach { pin },
        }
        | Cmd::VethPeer {
            cmd: AttachCmd::Detach { pin },
        } => helpers::detach(&pin),
        Cmd::Vip { cmd } => on_daemon(vip(socket, cmd)),
        Cmd::Backend { cmd } => on_daemon(backend(socket, cmd)),
        Cmd::Stats { json, watch } => on_daemon(stats(socket, json, watch)),
        Cmd::Flow { src, dst, proto } => on_daemon(flow(socket, src, dst, proto)),
        Cmd::Events { json } => on_daemon(events(socket, json)),
        Cmd::Config {
            cmd: ConfigCmd::Dump,
        } => on_daemon(config_dump(socket)),
        Cmd::Doctor(args) => tools::doctor(&args),
        Cmd::Trace(args) => on_daemon(trace::run(socket, args)),
        Cmd::Top { filter } => lb_userspace::top::term::run(socket, filter),
        Cmd::Generate { out } => tools::generate(&out),
        Cmd::Config {
            cmd: ConfigCmd::Diff { file, json },
        } => on_daemon(apply::apply(socket, &file, true, json)),
        Cmd::Apply {
            file,
            dry_run,
            json,
        } => on_daemon(apply::apply(socket, &file, dry_run, json)),
        Cmd::Node { cmd } => on_daemon(node(socket, cmd)),
        Cmd::Bgp {
            cmd: BgpCmd::Config { config },
        } => {
            let c = load_config(&config)?;
            let Some(b) = &c.bgp else {
                bail!(
                    "{} has no [bgp] table: add one with local_as and a [[bgp.peer]] \
                     (docs/cluster.md), then run hola bgp config again",
                    config.display()
                );
            };
            print!(
                "{}",
                lb_userspace::bgp::bird::fragment(b, &config.display().to_string())
            );
            Ok(())
        }
    }
}

/// A configuration file, or every error in it.
fn load_config(file: &Path) -> anyhow::Result<Config> {
    config::load(file).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs a command that talks to the daemon: one request at a time, so one
/// thread does.
fn on_daemon(cmd: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cmd)
}

async fn vip(socket: &Path, cmd: VipCmd) -> anyhow::Result<()> {
    let changed = match cmd {
        VipCmd::Add {
            vip,
            mode,
            hash,
            table_size,
            quic,
        } => {
            let r = parse_vip(&vip)?;
            let mut v = new_vip(r, mode, hash, table_size);
            v.quic = quic;
            client::post(socket, paths::VIPS, &v).await?;
            Changed::VipAdded(r)
        }
        VipCmd::Del { vip } => {
            let r = parse_vip(&vip)?;
            client::post(socket, paths::VIPS_DELETE, &r).await?;
            Changed::VipRemoved(r)
        }
        VipCmd::List => {
            let vips: Vec<VipConfig> = client::get_json(socket, paths::VIPS).await?;
            // The announcements come with the stats (absent without [bgp]).
            let stats: StatsReport = client::get_json(socket, paths::STATS).await?;
            print!("{}", print::vips(&vips, Some(&stats)));
            return Ok(());
        }
    };
    print!("{}", print::changed(&changed));
    Ok(())
}

/// `hola node drain|undrain`.
async fn node(socket: &Path, cmd: NodeCmd) -> anyhow::Result<()> {
    let drained = matches!(cmd, NodeCmd::Drain);
    client::post(socket, paths::NODE_DRAIN, &NodeDrain { drained }).await?;
    print!("{}", print::node_drained(drained));
    Ok(())
}

/// The VIP `hola vip add` asks for: no backends and no checks yet.
fn new_vip(r: VipRef, mode: ModeArg, hash: HashArg, table_size: Option<u32>) -> VipConfig {
    VipConfig {
        address: r.address,
        port: r.port,
        protocol: r.protocol,
        mode: mode.into(),
        hash: hash.into(),
        table_size,
        quic: false,
        health: None,
        agent: None,
        outlier: None,
        backends: Vec::new(),
    }
}

async fn backend(socket: &Path, cmd: BackendCmd) -> anyhow::Result<()> {
    let changed = match cmd {
        BackendCmd::Add {
            vip,
            address,
            weight,
            backup,
            interface,
            port,
            server_id,
        } => {
            let vip = parse_vip(&vip)?;
            let backend = BackendConfig {
                address,
                weight,
                backup,
                interface,
                port,
                server_id,
                drain: false,
                health: None,
                agent: None,
            };
            client::post(socket, paths::BACKENDS, &BackendAdd { vip, backend }).await?;
            Changed::BackendAdded {
                vip,
                backend: address,
            }
        }
        BackendCmd::Del { vip, address } => {
            let vip = parse_vip(&vip)?;
            let body = BackendRef { vip, address };
            client::post(socket, paths::BACKENDS_DELETE, &body).await?;
            Changed::BackendRemoved {
                vip,
                backend: address,
            }
        }
        BackendCmd::SetWeight {
            vip,
            address,
            weight,
        } => {
            let vip = parse_vip(&vip)?;
            let body = BackendWeight {
                vip,
                address,
                weight,
            };
            client::post(socket, paths::BACKENDS_WEIGHT, &body).await?;
            Changed::Weight {
                vip,
                backend: address,
                weight,
            }
        }
        BackendCmd::Drain { vip, address, wait } => {
            // The durations are checked before the drain is made.
            let wait = wait.wait()?;
            let changed = drain(socket, &vip, address, true).await?;
            print!("{}", print::changed(&changed));
            let Some((quiet_for, timeout)) = wait else {
                return Ok(());
            };
            let w = DrainWait {
                vip: parse_vip(&vip)?,
                backend: address,
                quiet_for,
                timeout,
            };
            return wait_drained(socket, &w).await;
        }
        BackendCmd::Undrain { vip, address } => drain(socket, &vip, address, false).await?,
        BackendCmd::List { vip } => {
            let only = vip.as_deref().map(parse_vip).transpose()?;
            let s: StatsReport = client::get_json(socket, paths::STATS).await?;
            print!("{}", print::backends(&s, only.as_ref()));
            return Ok(());
        }
    };
    print!("{}", print::changed(&changed));
    Ok(())
}

/// `hola backend drain` (`drain`) and `undrain`.
async fn drain(socket: &Path, vip: &str, address: IpAddr, drain: bool) -> anyhow::Result<Changed> {
    let vip = parse_vip(vip)?;
    let body = BackendDrain {
        vip,
        address,
        drain,
    };
    client::post(socket, paths::BACKENDS_DRAIN, &body).await?;
    Ok(Changed::Drain {
        vip,
        backend: address,
        drain,
    })
}

/// `hola backend drain --wait`: reads the backend's counters every
/// [`drain::POLL`] until it has been quiet for `w.quiet_for` (`Ok`) or
/// `w.timeout` has passed (the error says what it still saw).
async fn wait_drained(socket: &Path, w: &DrainWait) -> anyhow::Result<()> {
    print!("{}", print::drain_waiting(w));
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(drain::POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::new(w.quiet_for);
    let mut line_at = Duration::ZERO;
    loop {
        // Samples are timed by the schedule, not by when each answer came:
        // exactly a second apart, so a slower answer does not make a quiet
        // period look a few milliseconds short and cost another second.
        let at = ticks.tick().await.saturating_duration_since(start);
        let s: StatsReport = client::get_json(socket, paths::STATS)
            .await
            .with_context(|| {
                format!(
                    "reading the counters of backend {} of {} while waiting for it to drain",
                    w.backend, w.vip
                )
            })?;
        let b = drained_backend(&s, w)?;
        let status = watch.observe(Sample {
            at,
            packets: b.packets,
            new_flows: b.new_flows,
        });
        if status == Status::Done {
            print!("{}", print::drain_done(w, at, watch.total()));
            return Ok(());
        }
        if at >= w.timeout {
            bail!(
                "{}",
                print::drain_timed_out(w, at, watch.total(), watch.quiet())
            );
        }
        if at - line_at >= drain::REPORT_EVERY {
            let seen = watch.take_since_line();
            print!(
                "{}",
                print::drain_progress(w, at - line_at, seen, watch.quiet())
            );
            line_at = at;
        }
    }
}

/// The backend `w` waits for in a stats report; an error if it is gone or
/// takes new flows again (the wait would be meaningless).
fn drained_backend<'a>(s: &'a StatsReport, w: &DrainWait) -> anyhow::Result<&'a BackendReport> {
    let (vip, backend) = (w.vip.to_string(), w.backend.to_string());
    let b = s
        .vips
        .iter()
        .find(|v| v.vip == vip)
        .and_then(|v| v.backends.iter().find(|b| b.address == backend))
        .with_context(|| {
            format!(
                "backend {backend} of {vip} is gone while waiting for it to drain (it or its \
                 VIP was removed): stopped waiting"
            )
        })?;
    if b.state == "active" {
        bail!(
            "backend {backend} of {vip} takes new flows again (undrained while waiting): \
             stopped waiting"
        );
    }
    Ok(b)
}

/// `hola stats`: once, or every `watch` seconds (at least one) until
/// interrupted or the daemon fails to answer.
async fn stats(socket: &Path, json: bool, watch: Option<u64>) -> anyhow::Result<()> {
    loop {
        let text = client::get(socket, paths::STATS).await?;
        if json {
            println!("{text}");
        } else {
            let s: StatsReport = serde_json::from_str(&text)?;
            print!("{}", print::stats(&s));
        }
        match watch {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}

async fn flow(
    socket: &Path,
    src: SocketAddr,
    dst: SocketAddr,
    proto: ProtoArg,
) -> anyhow::Result<()> {
    let q = format!("{}?src={src}&dst={dst}&proto={}", paths::FLOW, proto.name());
    // IPv6 addresses' brackets are not allowed as such in a query.
    let q = q.replace('[', "%5B").replace(']', "%5D");
    let a: FlowAnswer = client::get_json(socket, &q).await?;
    print!("{}", print::flow(src, &a));
    Ok(())
}

async fn events(socket: &Path, json: bool) -> anyhow::Result<()> {
    let text = client::get(socket, paths::EVENTS).await?;
    if json {
        println!("{text}");
    } else {
        let events: Vec<Event> = serde_json::from_str(&text)?;
        print!("{}", print::events(&events));
    }
    Ok(())
}

/// `hola config dump`: the daemon's TOML, as it sent it.
async fn config_dump(socket: &Path) -> anyhow::Result<()> {
    print!("{}", client::get(socket, paths::CONFIG).await?);
    Ok(())
}
