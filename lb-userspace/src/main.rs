//! `hola`: the daemon and its CLI.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use lb_userspace::{
    api::{BackendAdd, BackendDrain, BackendRef, BackendWeight, VipRef},
    client, config,
    config::{BackendConfig, HashKind, Protocol, VipConfig, VipMode},
    daemon, helpers,
    owner::FlowAnswer,
    stats::StatsReport,
};

#[derive(Parser)]
#[command(name = "hola", version, about = "An XDP layer-4 load balancer")]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = "/run/hola/hola.sock")]
    socket: PathBuf,
    /// Log format of `hola run`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load, attach and serve: runs until SIGTERM; the data plane stays.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Interfaces to attach to (overrides global.interfaces).
        #[arg(long = "iface")]
        interfaces: Vec<String>,
    },
    /// Validate a configuration file without touching the kernel.
    CheckConfig { file: PathBuf },
    /// Remove everything hola put in the kernel (stop `hola run` first).
    Down {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The pin directory, when no configuration is at hand.
        #[arg(long, default_value = "/sys/fs/bpf/hola")]
        bpffs_dir: PathBuf,
    },
    /// VIPs: add, del, list.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Backends of a VIP.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Counters per VIP and backend, and per verdict reason.
    Stats {
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Which backend a flow goes to, and why.
    Flow {
        src: SocketAddr,
        dst: SocketAddr,
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
    },
    /// Recent backend state changes (health checks).
    Events {
        #[arg(long)]
        json: bool,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// hola-decap on a tunnel-mode backend.
    Decap {
        #[command(subcommand)]
        cmd: AttachCmd,
    },
    /// An XDP_PASS program on the peer of a veth the balancer runs on.
    VethPeer {
        #[command(subcommand)]
        cmd: AttachCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective state as TOML (check-config accepts it).
    Dump,
}

#[derive(Subcommand)]
enum AttachCmd {
    Attach {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: PathBuf,
    },
    Detach {
        #[arg(long)]
        pin: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Dsr,
    Tunnel,
    Nat,
    Fullnat,
}

#[derive(Clone, Copy, ValueEnum)]
enum HashArg {
    #[value(name = "5-tuple")]
    FiveTuple,
    Source,
}

#[derive(Subcommand)]
enum VipCmd {
    /// Add a VIP, e.g. `hola vip add 198.18.1.1:80/tcp --mode dsr`.
    Add {
        vip: String,
        #[arg(long, value_enum)]
        mode: ModeArg,
        #[arg(long, value_enum, default_value_t = HashArg::FiveTuple)]
        hash: HashArg,
        // Negative numbers are values, refused for what they are.
        #[arg(long, allow_negative_numbers = true)]
        table_size: Option<u32>,
    },
    /// Remove a VIP and its backends.
    Del { vip: String },
    /// List VIPs and their backends.
    List,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        vip: String,
        address: std::net::IpAddr,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        weight: u32,
        #[arg(long)]
        backup: bool,
        #[arg(long)]
        interface: Option<String>,
        /// NAT mode: the port the backend listens on (default: the VIP's).
        #[arg(long, allow_negative_numbers = true)]
        port: Option<u16>,
    },
    /// Remove a backend (its flows are re-balanced).
    Del {
        vip: String,
        address: std::net::IpAddr,
    },
    /// Change a backend's weight.
    SetWeight {
        vip: String,
        address: std::net::IpAddr,
        #[arg(allow_negative_numbers = true)]
        weight: u32,
    },
    /// No new flows; established flows stay.
    Drain {
        vip: String,
        address: std::net::IpAddr,
    },
    /// Undo drain.
    Undrain {
        vip: String,
        address: std::net::IpAddr,
    },
    /// List the backends of one VIP or all.
    List { vip: Option<String> },
}

/// Parses "198.18.1.1:80/tcp" or "[2001:db8::1]:443/udp" (protocol defaults to tcp).
fn parse_vip(s: &str) -> anyhow::Result<VipRef> {
    let (addr, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (s, "tcp"),
    };
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => bail!("VIP {s}: protocol {other:?} is not tcp or udp"),
    };
    let sa: SocketAddr = addr.parse().with_context(|| {
        format!(
            "VIP {s:?} is not ADDRESS:PORT/PROTO (e.g. 198.18.1.1:80/tcp, [2001:db8::1]:80/tcp)"
        )
    })?;
    Ok(VipRef {
        address: sa.ip(),
        port: sa.port(),
        protocol,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = real_main(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hola: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only on a terminal: logs redirected to a file stay plain.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.clone();
    match cli.cmd {
        Cmd::Run { config, interfaces } => {
            init_logs(cli.log_format);
            daemon::run(daemon::RunOptions { config, interfaces })
        }
        Cmd::CheckConfig { file } => {
            let c = config::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {backends} backends)",
                file.display(),
                c.vips.len()
            );
            Ok(())
        }
        Cmd::Down { config, bpffs_dir } => {
            let (dir, sock) = match config {
                Some(p) => {
                    let c = config::load(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
                    (c.global.bpffs_dir, c.global.control_socket)
                }
                None => (bpffs_dir, socket),
            };
            daemon::down(&dir, &sock)
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
        other => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(client_cmd(&socket, other)),
    }
}

async fn post<T: serde::Serialize>(
    socket: &std::path::Path,
    path: &str,
    body: &T,
) -> anyhow::Result<()> {
    client::ok(
        socket,
        Method::POST,
        path,
        Some(serde_json::to_string(body)?),
    )
    .await
    .map(drop)
}

async fn client_cmd(socket: &std::path::Path, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Vip { cmd } => match cmd {
            VipCmd::Add {
                vip,
                mode,
                hash,
                table_size,
            } => {
                let r = parse_vip(&vip)?;
                let v = VipConfig {
                    address: r.address,
                    port: r.port,
                    protocol: r.protocol,
                    mode: match mode {
                        ModeArg::Dsr => VipMode::Dsr,
                        ModeArg::Tunnel => VipMode::Tunnel,
                        ModeArg::Nat => VipMode::Nat,
                        ModeArg::Fullnat => VipMode::FullNat,
                    },
                    hash: match hash {
                        HashArg::FiveTuple => HashKind::FiveTuple,
                        HashArg::Source => HashKind::Source,
                    },
                    table_size,
                    health: None,
                    agent: None,
                    outlier: None,
                    backends: Vec::new(),
                };
                post(socket, "/v1/vips", &v).await?;
                println!("VIP {r} added");
            }
            VipCmd::Del { vip } => {
                let r = parse_vip(&vip)?;
                post(socket, "/v1/vips/delete", &r).await?;
                println!("VIP {r} removed");
            }
            VipCmd::List => {
                let vips: Vec<VipConfig> = serde_json::from_str(
                    &client::ok(socket, Method::GET, "/v1/vips", None).await?,
                )?;
                for v in vips {
                    let r = VipRef {
                        address: v.address,
                        port: v.port,
                        protocol: v.protocol,
                    };
                    println!(
                        "{r} mode={:?} hash={:?} backends={}",
                        v.mode,
                        v.hash,
                        v.backends.len()
                    );
                }
            }
        },
        Cmd::Backend { cmd } => match cmd {
            BackendCmd::Add {
                vip,
                address,
                weight,
                backup,
                interface,
                port,
            } => {
                let r = parse_vip(&vip)?;
                let backend = BackendConfig {
                    address,
                    weight,
                    backup,
                    interface,
                    port,
                    drain: false,
                    health: None,
                    agent: None,
                };
                post(socket, "/v1/backends", &BackendAdd { vip: r, backend }).await?;
                println!("backend {address} added to {r}");
            }
            BackendCmd::Del { vip, address } => {
                let r = parse_vip(&vip)?;
                post(
                    socket,
                    "/v1/backends/delete",
                    &BackendRef { vip: r, address },
                )
                .await?;
                println!("backend {address} removed from {r}");
            }
            BackendCmd::SetWeight {
                vip,
                address,
                weight,
            } => {
                let r = parse_vip(&vip)?;
                post(
                    socket,
                    "/v1/backends/weight",
                    &BackendWeight {
                        vip: r,
                        address,
                        weight,
                    },
                )
                .await?;
                println!("backend {address} of {r}: weight {weight}");
            }
            BackendCmd::Drain { vip, address } => {
                let r = parse_vip(&vip)?;
                post(
                    socket,
                    "/v1/backends/drain",
                    &BackendDrain {
                        vip: r,
                        address,
                        drain: true,
                    },
                )
                .await?;
                println!("backend {address} of {r}: draining (no new flows)");
            }
            BackendCmd::Undrain { vip, address } => {
                let r = parse_vip(&vip)?;
                post(
                    socket,
                    "/v1/backends/drain",
                    &BackendDrain {
                        vip: r,
                        address,
                        drain: false,
                    },
                )
                .await?;
                println!("backend {address} of {r}: taking new flows again");
            }
            BackendCmd::List { vip } => {
                let filter = vip.as_deref().map(parse_vip).transpose()?;
                let s: StatsReport = serde_json::from_str(
                    &client::ok(socket, Method::GET, "/v1/stats", None).await?,
                )?;
                for v in &s.vips {
                    if let Some(f) = &filter
                        && f.to_string() != v.vip
                    {
                        continue;
                    }
                    for b in &v.backends {
                        let last = b
                            .last_check
                            .as_ref()
                            .map(|p| {
                                format!(" last_check=\"{}\" latency_ms={}", p.detail, p.latency_ms)
                            })
                            .unwrap_or_default();
                        let changed = b
                            .last_change_ms
                            .map(|ms| format!(" changed={}", format_ms(ms)))
                            .unwrap_or_default();
                        let agent = b
                            .agent
                            .as_ref()
                            .map(|a| {
                                let said = a
                                    .last_check
                                    .as_ref()
                                    .map(|p| format!(" agent_check=\"{}\"", p.detail))
                                    .unwrap_or_default();
                                format!(" agent={}% agent_mode={}{said}", a.percent, a.mode)
                            })
                            .unwrap_or_default();
                        println!(
                            "{} {} weight={} effective={} state={} health={}{last}{changed}{agent} nexthop={}",
                            v.vip,
                            b.address,
                            b.weight,
                            b.effective_weight,
                            b.state,
                            b.health,
                            if b.nexthop_resolved {
                                "resolved"
                            } else {
                                "unresolved"
                            }
                        );
                    }
                }
            }
        },
        Cmd::Stats { json, watch } => loop {
            let text = client::ok(socket, Method::GET, "/v1/stats", None).await?;
            if json {
                println!("{text}");
            } else {
                let s: StatsReport = serde_json::from_str(&text)?;
                print_stats(&s);
            }
            match watch {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
                None => break,
            }
        },
        Cmd::Flow { src, dst, proto } => {
            let p = match proto {
                ProtoArg::Tcp => "tcp",
                ProtoArg::Udp => "udp",
            };
            let q = format!("/v1/flow?src={src}&dst={dst}&proto={p}");
            let q = q.replace('[', "%5B").replace(']', "%5D");
            let a: FlowAnswer =
                serde_json::from_str(&client::ok(socket, Method::GET, &q, None).await?)?;
            match a.backend {
                Some(b) => println!("{src} -> {} goes to {b}: {}", a.vip, a.reason),
                None => println!("{src} -> {}: no backend: {}", a.vip, a.reason),
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Dump,
        } => {
            print!(
                "{}",
                client::ok(socket, Method::GET, "/v1/config", None).await?
            );
        }
        Cmd::Events { json } => {
            let text = client::ok(socket, Method::GET, "/v1/events", None).await?;
            if json {
                println!("{text}");
            } else {
                let events: Vec<lb_userspace::owner::Event> = serde_json::from_str(&text)?;
                if events.is_empty() {
                    println!("no backend state changes since hola started");
                }
                for e in events {
                    println!(
                        "{} {} {} {} ({})",
                        format_ms(e.timestamp_ms),
                        e.vip,
                        e.backend,
                        e.state,
                        e.detail
                    );
                }
            }
        }
        _ => unreachable!("handled in real_main"),
    }
    Ok(())
}

fn print_stats(s: &StatsReport) {
    for v in &s.vips {
        println!(
            "{} {} packets={} bytes={} new_flows={} no_backend={} pps={:.1}",
            v.vip,
            v.mode,
            v.packets,
            v.bytes,
            v.new_flows,
            v.no_backend,
            v.rates.packets_per_second
        );
        for b in &v.backends {
            println!(
                "  {} {} weight={} effective={} packets={} bytes={} new_flows={}",
                b.address, b.state, b.weight, b.effective_weight, b.packets, b.bytes, b.new_flows
            );
        }
    }
    let reasons: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(r, c)| format!("{r}={}", c.packets))
        .collect();
    println!("reasons: {}", reasons.join(" "));
}

/// A Unix time in milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_ms_is_utc() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_ms(1_795_889_508_330),
            "2026-11-28T18:11:48.330Z"
        );
        assert_eq!(
            super::format_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
