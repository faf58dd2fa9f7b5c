//! The `hola` command line: its arguments (clap types) and the parsing
//! helpers for values clap does not know (a VIP written `ADDR:PORT/PROTO`).
//! [`dispatch`] runs a command; [`print`] renders the answers as text.

mod apply;
mod dispatch;
mod drain;
mod print;
mod tools;
mod trace;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_userspace::{
    api::VipRef,
    config::{HashKind, Protocol, VipMode, defaults, format_duration, parse_duration},
};

pub use dispatch::run;

#[derive(Parser)]
#[command(name = "hola", version, about = "An XDP layer-4 load balancer")]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = defaults::CONTROL_SOCKET)]
    socket: PathBuf,
    /// Log format of `hola run`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// The log format when the command is `hola run`; `None` for the other
    /// commands, which print their answer and errors and log nothing.
    pub fn daemon_log_format(&self) -> Option<LogFormat> {
        matches!(self.cmd, Cmd::Run { .. }).then_some(self.log_format)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
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
        #[arg(long, default_value = defaults::BPFFS_DIR)]
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
        #[arg(long, value_enum, default_value_t = ProtoArg::from(defaults::PROTOCOL))]
        proto: ProtoArg,
    },
    /// Recent backend state changes (health checks).
    Events {
        #[arg(long)]
        json: bool,
    },
    /// Make FILE's VIPs, backends and checks the desired state, as one
    /// change (all or nothing); prints what changed and what moved.
    Apply {
        file: PathBuf,
        /// Only print what would change and move; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// This node's BGP announcements: `hola node drain` withdraws every
    /// VIP (forwarding goes on), `undrain` announces them again.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// BGP through BIRD 2: `hola bgp config` prints the BIRD fragment.
    Bgp {
        #[command(subcommand)]
        cmd: BgpCmd,
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
    /// Check this balancer's set-up, or with --backend a backend's.
    ///
    /// Each check prints ok, warn or fail, what it saw and the fix. Exits 0
    /// (all ok), 1 (a warning) or 2 (a failure). Needs root.
    Doctor(tools::DoctorArgs),
    /// A live view of VIPs and backends.
    ///
    /// Packets, bytes and new flows per second, each backend's share of new
    /// flows against the share its effective weight intends, health, last
    /// event; refreshed every second. Keys: s sort, r reverse, / filter, q
    /// quit.
    Top {
        /// Show only VIPs whose address or a backend's contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Capture the packets that match at the XDP hook, with what hola did.
    ///
    /// One line per packet, as tcpdump prints it, then the verdict's
    /// reason and action, the VIP, the backend, flow-table hit or Maglev
    /// slot, and the bytes hola changed. -w writes each packet before and
    /// after hola's change to a pcap file. Ends at --count, --seconds or
    /// Ctrl-C; the daemon then switches the filter off.
    Trace(trace::TraceArgs),
    /// Write the man pages and shell completions into a directory (for
    /// packaging).
    #[command(hide = true)]
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every VIP from BGP; what still arrives is forwarded.
    Drain,
    /// Announce the VIPs again (each as its backends allow).
    Undrain,
}

#[derive(Subcommand)]
enum BgpCmd {
    /// Print the BIRD 2 configuration fragment for this node, from [bgp].
    Config {
        #[arg(long, default_value = "/etc/hola/hola.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective state as TOML (check-config accepts it).
    Dump,
    /// What `hola apply FILE` would change and move (as `--dry-run`).
    Diff {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
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

/// A protocol as the command line names it: `tcp`, `udp` (the names the
/// API's JSON uses too).
#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

impl ProtoArg {
    /// The name on the command line, which the API's `/v1/flow` query takes.
    fn name(self) -> String {
        self.to_possible_value()
            .expect("no protocol is skipped on the command line")
            .get_name()
            .to_owned()
    }
}

impl From<Protocol> for ProtoArg {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => ProtoArg::Tcp,
            Protocol::Udp => ProtoArg::Udp,
        }
    }
}

impl From<ProtoArg> for Protocol {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => Protocol::Tcp,
            ProtoArg::Udp => Protocol::Udp,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Dsr,
    Tunnel,
    Nat,
    Fullnat,
}

impl From<ModeArg> for VipMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Dsr => VipMode::Dsr,
            ModeArg::Tunnel => VipMode::Tunnel,
            ModeArg::Nat => VipMode::Nat,
            ModeArg::Fullnat => VipMode::FullNat,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum HashArg {
    #[value(name = "5-tuple")]
    FiveTuple,
    Source,
}

impl From<HashKind> for HashArg {
    fn from(h: HashKind) -> Self {
        match h {
            HashKind::FiveTuple => HashArg::FiveTuple,
            HashKind::Source => HashArg::Source,
        }
    }
}

impl From<HashArg> for HashKind {
    fn from(h: HashArg) -> Self {
        match h {
            HashArg::FiveTuple => HashKind::FiveTuple,
            HashArg::Source => HashKind::Source,
        }
    }
}

#[derive(Subcommand)]
enum VipCmd {
    /// Add a VIP, e.g. `hola vip add 198.18.1.1:80/tcp --mode dsr`.
    Add {
        vip: String,
        #[arg(long, value_enum)]
        mode: ModeArg,
        #[arg(long, value_enum, default_value_t = HashArg::from(defaults::HASH))]
        hash: HashArg,
        // Negative numbers are values, refused for what they are.
        #[arg(long, allow_negative_numbers = true)]
        table_size: Option<u32>,
        /// UDP dsr/tunnel VIP of QUIC servers: short headers go to the
        /// backend whose --server-id their connection ID carries.
        #[arg(long)]
        quic: bool,
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
        #[arg(long, default_value_t = defaults::WEIGHT, allow_negative_numbers = true)]
        weight: u32,
        #[arg(long)]
        backup: bool,
        #[arg(long)]
        interface: Option<String>,
        /// NAT mode: the port the backend listens on (default: the VIP's).
        #[arg(long, allow_negative_numbers = true)]
        port: Option<u16>,
        /// QUIC VIPs: the server ID (1..=65535, unique within the VIP) the
        /// backend's connection IDs carry.
        #[arg(long, allow_negative_numbers = true)]
        server_id: Option<u16>,
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
    /// No new flows; established flows stay. With --wait, returns once no
    /// packet has reached the backend for --quiet-for.
    Drain {
        vip: String,
        address: std::net::IpAddr,
        #[command(flatten)]
        wait: DrainWaitArgs,
    },
    /// Undo drain.
    Undrain {
        vip: String,
        address: std::net::IpAddr,
    },
    /// List the backends of one VIP or all.
    List { vip: Option<String> },
}

/// `hola backend drain --wait [--quiet-for D] [--timeout D]`.
#[derive(Args)]
struct DrainWaitArgs {
    /// After draining, wait until the backend is empty: no packet has
    /// reached it (its packet counter) for --quiet-for. Prints every few
    /// seconds the packets and new flows it still sees; exits non-zero
    /// after --timeout if it still sees packets (it stays drained).
    #[arg(long)]
    wait: bool,
    /// With --wait: how long no packet may reach the backend ("10s",
    /// "1.5s"; at least 1s, the time between two readings).
    #[arg(long, requires = "wait", value_parser = duration_arg, default_value = drain::QUIET_FOR)]
    quiet_for: Duration,
    /// With --wait: how long to wait at most (longer than --quiet-for).
    #[arg(long, requires = "wait", value_parser = duration_arg, default_value = drain::TIMEOUT)]
    timeout: Duration,
}

impl DrainWaitArgs {
    /// The wait asked for, if any; an error if the durations cannot work.
    fn wait(&self) -> anyhow::Result<Option<(Duration, Duration)>> {
        if !self.wait {
            return Ok(None);
        }
        let (q, t) = (self.quiet_for, self.timeout);
        if q < drain::POLL {
            bail!(
                "--quiet-for {} is shorter than the {} between two readings of the backend's \
                 counters; give at least {}",
                format_duration(q),
                format_duration(drain::POLL),
                format_duration(drain::POLL)
            );
        }
        if t <= q {
            bail!(
                "--timeout {} must be longer than --quiet-for {}: the backend must be seen \
                 quiet for --quiet-for before the wait can end",
                format_duration(t),
                format_duration(q)
            );
        }
        Ok(Some((q, t)))
    }
}

/// A duration on the command line, written as in the configuration.
fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| {
        format!("{s:?} is not a duration; write a number of seconds or milliseconds such as \"10s\", \"1.5s\" or \"500ms\"")
    })
}

/// Parses "198.18.1.1:80/tcp" or "[2001:db8::1]:443/udp" (without a
/// protocol, the configuration's default, tcp).
fn parse_vip(s: &str) -> anyhow::Result<VipRef> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((addr, proto)) => match ProtoArg::from_str(proto, false) {
            Ok(p) => (addr, Protocol::from(p)),
            Err(_) => bail!("VIP {s}: protocol {proto:?} is not tcp or udp"),
        },
        None => (s, defaults::PROTOCOL),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_vip_reads_address_port_and_protocol() {
        let v = parse_vip("[2001:db8::1]:443/udp").unwrap();
        assert_eq!(
            v.address,
            "2001:db8::1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(v.port, 443);
        assert_eq!(v.protocol, Protocol::Udp);
        let v = parse_vip("198.18.1.1:80").unwrap();
        assert_eq!(v.to_string(), "198.18.1.1:80/tcp");
    }

    #[test]
    fn parse_vip_errors_name_the_value() {
        assert_eq!(
            parse_vip("198.18.1.1:80/sctp").unwrap_err().to_string(),
            "VIP 198.18.1.1:80/sctp: protocol \"sctp\" is not tcp or udp"
        );
        // The protocol is matched exactly, as the API's JSON matches it.
        assert!(parse_vip("198.18.1.1:80/TCP").is_err());
        assert_eq!(
            format!("{:#}", parse_vip("198.18.1.1/tcp").unwrap_err()),
            "VIP \"198.18.1.1/tcp\" is not ADDRESS:PORT/PROTO (e.g. 198.18.1.1:80/tcp, \
             [2001:db8::1]:80/tcp): invalid socket address syntax"
        );
    }

    /// The name serde gives a configuration value ("5-tuple", "fullnat").
    fn config_name<T: serde::Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The name clap gives a command-line value.
    fn cli_name<T: ValueEnum>(v: T) -> String {
        v.to_possible_value().unwrap().get_name().to_owned()
    }

    #[test]
    fn defaults_are_the_configuration_defaults() {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        let default = |sub: &[&str], arg: &str| {
            let mut c = &cmd;
            for s in sub {
                c = c.find_subcommand(s).unwrap();
            }
            let a = c.get_arguments().find(|a| a.get_id() == arg).unwrap();
            a.get_default_values()[0].to_string_lossy().into_owned()
        };
        assert_eq!(default(&[], "socket"), defaults::CONTROL_SOCKET);
        assert_eq!(default(&["down"], "bpffs_dir"), defaults::BPFFS_DIR);
        assert_eq!(
            default(&["backend", "add"], "weight"),
            defaults::WEIGHT.to_string()
        );
        assert_eq!(
            default(&["vip", "add"], "hash"),
            config_name(defaults::HASH)
        );
        assert_eq!(default(&["flow"], "proto"), config_name(defaults::PROTOCOL));
    }

    #[test]
    fn values_are_named_as_in_the_configuration() {
        for m in ModeArg::value_variants() {
            assert_eq!(cli_name(*m), config_name(VipMode::from(*m)));
        }
        for h in HashArg::value_variants() {
            assert_eq!(cli_name(*h), config_name(HashKind::from(*h)));
        }
        for p in ProtoArg::value_variants() {
            assert_eq!(p.name(), config_name(Protocol::from(*p)));
        }
    }
}
