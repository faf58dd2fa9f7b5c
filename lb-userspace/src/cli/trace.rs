//! `hola trace`: asks the daemon to trace the packets that match, prints
//! one line per packet as they come (or their JSON), and with `-w` writes
//! each packet before and after hola's change to a pcap file. The trace
//! ends at `--count` packets, after `--seconds`, or at Ctrl-C / SIGTERM:
//! the connection closes and the daemon switches the filter off.

use std::{
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use http_body_util::BodyExt as _;
use lb_common::trace::TRACE_SNAP;
use lb_userspace::{
    api::{ErrorBody, paths},
    client,
    trace::{Endpoint, TraceEnd, TraceLine, TraceSpec, decode, pcap::PcapWriter, unhex},
};
use tokio::signal::unix::{SignalKind, signal};

/// `hola trace`.
#[derive(Args)]
pub struct TraceArgs {
    /// The packets' source: ADDR or ADDR:PORT ([V6ADDR]:PORT).
    #[arg(value_parser = Endpoint::parse)]
    src: Option<Endpoint>,
    /// Their destination: ADDR or ADDR:PORT.
    #[arg(value_parser = Endpoint::parse)]
    dst: Option<Endpoint>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    proto: Option<TraceProto>,
    /// Only packets to this VIP (ADDR or ADDR:PORT; instead of DST).
    #[arg(long, value_parser = Endpoint::parse, conflicts_with = "dst")]
    vip: Option<Endpoint>,
    /// Stop after this many packets.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (at most an hour, the default).
    #[arg(long)]
    seconds: Option<u64>,
    /// Write each packet, as it arrived and as hola sent it on, to this
    /// pcap file (Wireshark, tcpdump -r).
    #[arg(short = 'w', long = "write", value_name = "FILE.pcap")]
    write: Option<PathBuf>,
    /// Print each packet as a JSON object (one a line).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum TraceProto {
    Tcp,
    Udp,
    Icmp,
}

/// Runs the trace to its end.
pub async fn run(socket: &Path, a: TraceArgs) -> anyhow::Result<()> {
    let spec = TraceSpec {
        src: a.src,
        dst: a.vip.or(a.dst),
        proto: a.proto.map(|p| {
            match p {
                TraceProto::Tcp => "tcp",
                TraceProto::Udp => "udp",
                TraceProto::Icmp => "icmp",
            }
            .to_string()
        }),
        count: a.count,
        seconds: a.seconds,
        vip: a.vip.is_some(),
    };
    // Checked here too, so that a mistake is said before the daemon is asked.
    spec.filter().map_err(anyhow::Error::msg)?;
    let mut pcap = match &a.write {
        Some(p) => {
            let f = std::fs::File::create(p)
                .with_context(|| format!("creating the pcap file {}", p.display()))?;
            Some(PcapWriter::new(BufWriter::new(f), TRACE_SNAP as u32)?)
        }
        None => None,
    };
    let resp = client::post_stream(socket, paths::TRACE, &spec).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let msg = serde_json::from_str::<ErrorBody>(&text).map_or(text, |e| e.error);
        bail!("{msg}");
    }
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut buf = Vec::new();
    let mut end = None;
    let mut stdout = std::io::stdout().lock();
    'read: loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = int.recv() => break,
            _ = term.recv() => break,
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let l: TraceLine =
                serde_json::from_slice(&line).context("reading the daemon's trace stream")?;
            match l {
                TraceLine::Packet(p) => {
                    if a.json {
                        writeln!(stdout, "{}", serde_json::to_string(&p)?)?;
                    } else {
                        writeln!(stdout, "{}", decode::line(&p))?;
                    }
                    stdout.flush()?;
                    if let Some(w) = pcap.as_mut() {
                        let before = unhex(&p.before).unwrap_or_default();
                        let after = unhex(&p.after).unwrap_or_default();
                        w.packet(p.time_ns, &before, p.before_len)?;
                        w.packet(p.time_ns, &after, p.after_len)?;
                    }
                }
                TraceLine::End(e) => {
                    end = Some(e);
                    break 'read;
                }
            }
        }
    }
    // Closing the connection (dropping the body) ends the trace in the
    // daemon if it is still running (Ctrl-C).
    drop(body);
    if let Some(w) = pcap.as_mut() {
        w.flush()?;
    }
    report(end.as_ref(), a.json);
    Ok(())
}

/// How the trace ended, on stderr (stdout holds only packets).
fn report(end: Option<&TraceEnd>, json: bool) {
    match end {
        Some(e) if json => {
            eprintln!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        Some(e) => eprintln!(
            "trace ended ({}): {} packets, {} lost",
            match e.why.as_str() {
                "count" => "--count reached",
                "seconds" => "--seconds elapsed",
                "stopped" => "the daemon stopped",
                other => other,
            },
            e.packets,
            e.lost
        ),
        None => eprintln!("trace stopped"),
    }
}
