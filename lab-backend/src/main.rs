//! `hola-backend --name b1 --listen 0.0.0.0:80 [--listen [::]:80]
//! [--quic 0.0.0.0:443 --server-id 1] [--verbose]`: answers HTTP GETs and UDP
//! datagrams on each address with its name, and QUIC streams with its name
//! and what they carried, until SIGTERM or SIGINT.

use std::{io, net::SocketAddr, process::ExitCode};

use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};

const USAGE: &str = "usage: hola-backend --name NAME --listen ADDR:PORT [--listen ADDR:PORT ...]
                    [--quic ADDR:PORT ... --server-id ID] [--verbose]
  Answers every HTTP GET on each ADDR:PORT (TCP) with `200 OK` and the body NAME,
  and every UDP datagram to the same ADDR:PORT with NAME. With --quic, serves
  QUIC (ALPN hola-echo) on that ADDR:PORT: each stream is answered with NAME, a
  space and what the stream carried; its connection IDs carry server ID ID
  (1..=65535, the backend's server_id in a quic = true VIP). An IPv6 wildcard
  ([::]:80) is IPv6 only: add 0.0.0.0:80 for IPv4. Stops on SIGTERM or SIGINT.";

struct Args {
    name: String,
    listen: Vec<SocketAddr>,
    quic: Vec<SocketAddr>,
    server_id: Option<u16>,
    verbose: bool,
}

fn addr_arg(flag: &str, v: Option<String>) -> Result<SocketAddr, String> {
    let v = v.ok_or(format!("{flag} needs ADDR:PORT"))?;
    v.parse()
        .map_err(|e| format!("{flag} {v}: {e} (write ADDR:PORT, e.g. 0.0.0.0:80 or [::]:80)"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut name, mut listen, mut verbose) = (None, Vec::new(), false);
    let (mut quic, mut server_id) = (Vec::new(), None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--name" => name = Some(it.next().ok_or("--name needs a value")?),
            "--listen" => listen.push(addr_arg("--listen", it.next())?),
            "--quic" => quic.push(addr_arg("--quic", it.next())?),
            "--server-id" => {
                let v = it.next().ok_or("--server-id needs a value")?;
                server_id = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|id| *id != 0)
                        .ok_or(format!("--server-id {v}: must be 1..=65535"))?,
                );
            }
            "--verbose" | "-v" => verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    if listen.is_empty() {
        return Err("at least one --listen ADDR:PORT is required".into());
    }
    if !quic.is_empty() && server_id.is_none() {
        return Err("--quic needs --server-id ID (the backend's server_id in hola)".into());
    }
    Ok(Args {
        name,
        listen,
        quic,
        server_id,
        verbose,
    })
}

/// Completes on SIGTERM or SIGINT. Every server gets its own: tokio tells
/// every listener of a signal.
fn shutdown() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

async fn run(args: Args) -> io::Result<()> {
    lab_backend::set_verbose(args.verbose);
    let mut servers = JoinSet::new();
    for addr in args.listen {
        let tcp = lab_backend::bind_tcp(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding tcp {addr}: {e}")))?;
        let udp = lab_backend::bind_udp(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding udp {addr}: {e}")))?;
        let (name, stop) = (args.name.clone(), shutdown()?);
        servers.spawn(async move { lab_backend::serve(tcp, &name, stop).await });
        let (name, stop) = (args.name.clone(), shutdown()?);
        servers.spawn(async move { lab_backend::serve_udp(udp, &name, stop).await });
        if args.verbose {
            eprintln!("{}: listening on {addr} (tcp and udp)", args.name);
        }
    }
    for addr in args.quic {
        let id = args.server_id.unwrap_or(1);
        let ep = lab_backend::bind_quic(addr, id)
            .map_err(|e| io::Error::new(e.kind(), format!("binding quic {addr}: {e}")))?;
        let (name, stop) = (args.name.clone(), shutdown()?);
        servers.spawn(async move { lab_backend::serve_quic(ep, &name, stop).await });
        if args.verbose {
            eprintln!("{}: quic on {addr}, server ID {id}", args.name);
        }
    }
    while let Some(r) = servers.join_next().await {
        r.map_err(io::Error::other)??;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hola-backend: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // (quinn needs the timer.)
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hola-backend: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hola-backend: {e}");
            ExitCode::FAILURE
        }
    }
}
