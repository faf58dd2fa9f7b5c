//! `cargo xtask bench forward`: packets per second through a veth, hola
//! against the XDP_TX ceiling, in the same run. A generator XDP program of
//! our own (`bench_gen`), driven by BPF_PROG_TEST_RUN in live-frames mode,
//! sends UDP frames of N flows out of `g0`; the contender on the peer `l0`
//! sends them back (XDP_TX); `bench_sink` on `g0` counts and drops them.
//! The generator runs on CPU 0; `l0`'s NAPI is threaded and pinned to
//! CPU 1. Contenders alternate within each round. Beside the rate, each
//! measurement records the balancer CPU's time per packet (`cpu_ns`).
//! Writes target/bench/forward.json (or, for a run of some contenders or
//! flow counts only, target/bench/forward-partial.json) and prints a table
//! (docs/benchmarks.md).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use hola_tests::{
    bench::{machine, median},
    netns::{Topology, cmd, in_ns, ns_cmd},
    packet::{L4, Pkt, TCP_SYN},
};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec},
    programs,
};
use serde_json::json;

struct Args {
    rounds: usize,
    seconds: f64,
    out: String,
    /// Contenders to run besides the ceiling (`macswap_tx` always runs:
    /// every ratio is to it); all when empty.
    only: Vec<String>,
    /// Flow counts to run (`syn` for the SYN flood); all when empty.
    flows: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 1.0,
        out: "target/bench/forward.json".into(),
        only: Vec::new(),
        flows: Vec::new(),
    };
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds S"),
            "--out" => out = Some(v()),
            "--contenders" => a.only = v().split(',').map(str::to_string).collect(),
            "--flows" => {
                a.flows = v()
                    .split(',')
                    .map(|f| match f {
                        "syn" => SYN_FLOOD,
                        n => n
                            .replace('_', "")
                            .parse()
                            .unwrap_or_else(|_| panic!("--flows {f}: a flow count or `syn`")),
                    })
                    .collect()
            }
            "--smoke" => {
                a.rounds = 1;
                a.seconds = 0.2;
            }
            other => {
                panic!(
                    "unknown argument {other}; use --rounds N --seconds S --out FILE \
                     --contenders hola_dsr,... --flows 1000,syn or --smoke"
                )
            }
        }
    }
    // A partial run never overwrites the full run bench-report renders.
    a.out = out.unwrap_or_else(|| {
        if a.only.is_empty() && a.flows.is_empty() {
            a.out.clone()
        } else {
            "target/bench/forward-partial.json".into()
        }
    });
    a
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; these calls touch only it and
    // this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time (ns) the tasks `pids` have run so far (`/proc/PID/schedstat`,
/// first field). The balancer's CPU does its work in `l0`'s NAPI thread
/// (the contender, and `g0`'s NAPI with the sink, run as a softirq on its
/// way out; without IRQ time accounting that is charged to the thread) and
/// in that CPU's ksoftirqd when softirqs are deferred. Unlike packets per
/// second, the time per packet does not depend on the CPU share the thread
/// gets from a machine that also runs other work.
fn cpu_ns(pids: &[String]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The flow count of the SYN-flood column: every frame a new TCP flow.
const SYN_FLOOD: u32 = u32::MAX;

/// The balancer's verdict counters summed over CPUs, by reason name; `None`
/// for a contender that is not hola.
fn verdict_counts(c: &Contender) -> Option<BTreeMap<String, u64>> {
    let Contender::Hola(dp) = c else {
        return None;
    };
    let s = dp.stats().expect("stats");
    Some(
        s.reasons
            .into_iter()
            .map(|(n, r)| (n.to_string(), r.packets))
            .collect(),
    )
}

fn label(flows: u32) -> String {
    if flows == SYN_FLOOD {
        "SYN flood".into()
    } else {
        flows.to_string()
    }
}

/// The contender on `l0`: what it is and what keeps it attached.
#[allow(dead_code)] // held, never read: dropping detaches
enum Contender {
    Program(Ebpf),
    Hola(Box<Dataplane>),
    /// The nftables table `hbf` in the named namespace.
    Nft(String),
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Contender::Nft(ns) = self {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "nft", "delete", "table", "ip", "hbf"])
                .output();
        }
    }
}

fn main() {
    let a = args();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "bench-forward makes namespaces and loads XDP programs: run it as root"
    );
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let t = Topology::new("hbf", &["gen", "lb"]);
    t.link("gen", "g0", "lb", "l0");
    let (g0_mac, l0_mac) = (t.mac("gen", "g0"), t.mac("lb", "l0"));
    let g0 = t.ifindex("gen", "g0");
    // l0's NAPI in a kernel thread of its own, on the other CPU.
    // (A veth has NAPI only with GRO or XDP on: GRO keeps it across the
    // contenders' attach and detach.)
    ns_cmd(&t.ns("lb"), "ethtool", &["-K", "l0", "gro", "on"]);
    ns_cmd(
        &t.ns("lb"),
        "sh",
        &["-c", "echo 1 > /sys/class/net/l0/threaded"],
    );
    std::thread::sleep(Duration::from_millis(100));
    let pids = cmd("sh", &["-c", "pgrep '^napi/l0-' || true"]);
    if pids.trim().is_empty() {
        eprintln!("no threaded NAPI for l0: the balancer shares the generator's CPU");
    }
    // Where the balancer's CPU time is counted: l0's NAPI thread and that
    // CPU's ksoftirqd.
    let mut busy: Vec<String> = pids.split_whitespace().map(str::to_string).collect();
    busy.extend(
        cmd(
            "sh",
            &["-c", &format!("pgrep -x ksoftirqd/{} || true", ncpus - 1)],
        )
        .split_whitespace()
        .map(str::to_string),
    );
    for pid in pids.split_whitespace() {
        let _ = std::process::Command::new("taskset")
            .args(["-p", "-c", &(ncpus - 1).to_string(), pid])
            .output();
    }

    // The generator and the sink, in the generator's namespace.
    let gen_ns = t.ns("gen");
    let mut generator = in_ns(&gen_ns, || {
        let mut e = Ebpf::load(programs::BENCH).expect("bench programs");
        let sink: &mut Xdp = e
            .program_mut("bench_sink")
            .expect("sink")
            .try_into()
            .expect("XDP");
        sink.load().expect("verifier");
        sink.attach("g0", XdpMode::Driver)
            .expect("attach the sink to g0");
        let g: &mut Xdp = e
            .program_mut("bench_gen")
            .expect("gen")
            .try_into()
            .expect("XDP");
        g.load().expect("verifier");
        e
    });
    // A TCP SYN for the SYN-flood column (54 bytes, no payload).
    let syn_frame = {
        let mut p = Pkt::new("198.18.0.1", "198.18.1.1", L4::tcp(1024, 80, TCP_SYN));
        p.dmac = l0_mac;
        p.smac = g0_mac;
        p.bytes()
    };
    let frame = {
        let mut p = Pkt::new(
            "198.18.0.1",
            "198.18.1.1",
            L4::udp(1024, 80, b"hola-bench-forward-payload-64B...."),
        );
        p.dmac = l0_mac;
        p.smac = g0_mac;
        let mut f = p.bytes();
        // UDP without a checksum: the generator varies the ports freely.
        let at = f.len() - 34 - 8 + 6;
        f[at..at + 2].copy_from_slice(&[0, 0]);
        f
    };

    let all_contenders: [(&str, &str); 5] = [
        ("macswap_tx", "MAC-swap XDP_TX program (the ceiling)"),
        ("hola_dsr", "hola, dsr"),
        ("hola_tunnel", "hola, tunnel (IPIP encap)"),
        ("hola_nat", "hola, nat"),
        (
            "nft_dnat",
            "nftables DNAT with conntrack over the same 10 backends, kernel forwarding",
        ),
    ];
    let contenders: Vec<(&str, &str)> = all_contenders
        .into_iter()
        .filter(|(n, _)| *n == "macswap_tx" || a.only.is_empty() || a.only.iter().any(|o| o == n))
        .collect();
    for o in &a.only {
        assert!(
            all_contenders.iter().any(|(n, _)| n == o),
            "--contenders {o}: not one of {:?}",
            all_contenders.map(|(n, _)| n)
        );
    }
    // The DNAT contender's kernel side: an address, forwarding, the backends
    // reached through l0 at g0's MAC (where the sink counts them).
    t.ip("lb", &["addr", "add", "198.18.0.2/24", "dev", "l0"]);
    t.ip("lb", &["route", "add", "198.18.2.0/24", "dev", "l0"]);
    let g0_mac_text = g0_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for i in 1..=10 {
        t.ip(
            "lb",
            &[
                "neigh",
                "add",
                &format!("198.18.2.{i}"),
                "lladdr",
                &g0_mac_text,
                "dev",
                "l0",
                "nud",
                "permanent",
            ],
        );
    }
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.l0.rp_filter=0",
    ] {
        t.sysctl("lb", kv);
    }
    // Flow counts; the last (every frame a new TCP flow) is the SYN flood.
    let flow_counts: Vec<u32> = if a.flows.is_empty() {
        vec![1, 1_000, 100_000, SYN_FLOOD]
    } else {
        a.flows.clone()
    };
    let lb_ns = t.ns("lb");
    let make = |name: &str| -> Contender {
        let name = name.to_string();
        let lb_ns_name = lb_ns.clone();
        in_ns(&lb_ns, move || {
            if name == "nft_dnat" {
                let map: Vec<String> = (0..10)
                    .map(|i| format!("{i} : 198.18.2.{}", i + 1))
                    .collect();
                let rules = format!(
                    "table ip hbf {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
                     ip daddr 198.18.1.1 th dport 80 dnat to jhash ip saddr . th sport mod 10 map {{ {} }}\n  \
                     }}\n}}\n",
                    map.join(", ")
                );
                let out = std::process::Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write as _;
                        c.stdin.take().expect("stdin").write_all(rules.as_bytes())?;
                        c.wait_with_output()
                    })
                    .expect("running nft");
                assert!(
                    out.status.success(),
                    "nft -f: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return Contender::Nft(lb_ns_name);
            }
            if name == "macswap_tx" {
                let mut e = Ebpf::load(programs::BENCH).expect("bench programs");
                let p: &mut Xdp = e
                    .program_mut("bench_macswap")
                    .expect("p")
                    .try_into()
                    .expect("XDP");
                p.load().expect("verifier");
                p.attach("l0", XdpMode::Driver).expect("attach macswap");
                return Contender::Program(e);
            }
            let mut dp = Dataplane::load(DataplaneConfig {
                // Smaller than 100,000 flows: the last column overflows it.
                flow_capacity_per_cpu: 16_384,
                nat_capacity: 65_536,
                ..Default::default()
            })
            .expect("loading the balancer");
            let mode = match name.as_str() {
                "hola_dsr" => Mode::Dsr,
                "hola_tunnel" => Mode::Tunnel,
                _ => Mode::Nat,
            };
            let vips = [Proto::Udp, Proto::Tcp].map(|proto| VipAddr {
                addr: "198.18.1.1".parse().expect("vip"),
                port: 80,
                proto,
            });
            for vip in vips {
                dp.add_vip(VipSpec {
                    vip,
                    mode,
                    src_hash: false,
                    table_size: 65_537,
                    quic: false,
                })
                .expect("VIP");
            }
            let bs: Vec<BackendSpec> = (1..=10)
                .map(|i| BackendSpec {
                    addr: IpAddr::from([198, 18, 2, i]),
                    weight: 1,
                    up: true,
                    port: 0,
                    // Every backend "behind" g0: the frames come back to the sink.
                    nexthop: Some(Nexthop {
                        dmac: g0_mac,
                        smac: l0_mac,
                        ifindex: 0,
                    }),
                    server_id: 0,
                })
                .collect();
            for vip in &vips {
                dp.set_backends(vip, &bs).expect("backends");
            }
            dp.attach("l0", XdpMode::Driver).expect("attach hola");
            Contender::Hola(Box::new(dp))
        })
    };

    let mut results: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    let mut generated: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    // Per measurement: the balancer CPU's busy ns per packet received.
    let mut cpu: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    // Per hola measurement: how many packets recorded a new flow, went
    // through unrecorded (SYNs, inserts over the rate limit) or hit the table.
    let mut recorded: BTreeMap<(String, u32), Vec<serde_json::Value>> = BTreeMap::new();
    pin_to(0);
    // The run's ingress interface (g0) is looked up in this thread's
    // namespace.
    hola_tests::netns::enter(&format!("/run/netns/{gen_ns}"));
    for round in 0..a.rounds {
        for &(name, _) in &contenders {
            let c = make(name);
            for &flows in &flow_counts {
                let frame = if flows == SYN_FLOOD {
                    &syn_frame
                } else {
                    &frame
                };
                let mut tpl = [0u8; 54];
                tpl.copy_from_slice(&frame[..54]);
                Array::<_, [u8; 54]>::try_from(
                    generator.map_mut("GEN_TEMPLATE").expect("GEN_TEMPLATE"),
                )
                .expect("array")
                .set(0, tpl, 0)
                .expect("write the template");
                Array::<_, u32>::try_from(generator.map_mut("GEN_FLOWS").expect("GEN_FLOWS"))
                    .expect("array")
                    .set(0, flows, 0)
                    .expect("set flows");
                let read = |e: &Ebpf| -> u64 {
                    let m =
                        PerCpuArray::<_, u64>::try_from(e.map("SINK_COUNT").expect("SINK_COUNT"))
                            .expect("per-CPU array");
                    m.get(&0, 0).expect("read").iter().sum()
                };
                let before = read(&generator);
                let verdicts_before = verdict_counts(&c);
                let prog: &Xdp = generator
                    .program("bench_gen")
                    .expect("gen")
                    .try_into()
                    .expect("XDP");
                // struct xdp_md: data, data_end (the frame's length),
                // data_meta, ingress_ifindex (where XDP_TX sends), ...
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&g0.to_ne_bytes());
                // A line to start an outside profiler on (perf, bpftool).
                eprintln!(
                    "round {round} {name:<12} {:>9} flows: measuring",
                    label(flows)
                );
                let cpu_before = cpu_ns(&busy);
                let start = Instant::now();
                let mut sent = 0u64;
                while start.elapsed().as_secs_f64() < a.seconds {
                    let r = prog.test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: 100_000,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    });
                    r.expect("live-frames run");
                    sent += 100_000;
                }
                let el = start.elapsed().as_secs_f64();
                std::thread::sleep(Duration::from_millis(50));
                let got = read(&generator) - before;
                let pps = got as f64 / el;
                let ns_per_packet = (cpu_ns(&busy) - cpu_before) as f64 / got.max(1) as f64;
                cpu.entry((name.to_string(), flows))
                    .or_default()
                    .push(ns_per_packet);
                if let (Some(b), Some(a)) = (verdicts_before, verdict_counts(&c)) {
                    let delta = |n: &str| a.get(n).unwrap_or(&0) - b.get(n).unwrap_or(&0);
                    recorded
                        .entry((name.to_string(), flows))
                        .or_default()
                        .push(json!({
                            "recorded": delta("fwd_new_flow"),
                            "syn_unrecorded": delta("fwd_syn"),
                            "flood_unrecorded": delta("fwd_flood"),
                            "established": delta("fwd_established"),
                        }));
                }
                eprintln!(
                    "round {round} {name:<12} {:>9} flows: sent {:.2} Mpps, received {:.2} Mpps, \
                     {ns_per_packet:.0} ns of the balancer's CPU per packet",
                    label(flows),
                    sent as f64 / el / 1e6,
                    pps / 1e6
                );
                results
                    .entry((name.to_string(), flows))
                    .or_default()
                    .push(pps);
                generated
                    .entry((name.to_string(), flows))
                    .or_default()
                    .push(sent as f64 / el);
            }
            if let Contender::Hola(dp) = &c {
                let s = dp.stats().expect("stats");
                let nonzero: Vec<String> = s
                    .reasons
                    .iter()
                    .filter(|(_, r)| r.packets > 0)
                    .map(|(n, r)| format!("{n}={}", r.packets))
                    .collect();
                eprintln!("round {round} {name}: verdicts {}", nonzero.join(" "));
            }
            drop(c);
        }
    }
    let ceiling: BTreeMap<u32, f64> = flow_counts
        .iter()
        .map(|f| {
            (
                *f,
                median(&mut results[&("macswap_tx".to_string(), *f)].clone()),
            )
        })
        .collect();
    let ceiling_ns: BTreeMap<u32, f64> = flow_counts
        .iter()
        .map(|f| {
            (
                *f,
                median(&mut cpu[&("macswap_tx".to_string(), *f)].clone()),
            )
        })
        .collect();
    println!(
        "{:<14} {:>9} {:>10} {:>10} {:>14} {:>10} {:>10}",
        "contender", "flows", "Mpps", "of ceiling", "generator Mpps", "CPU ns/pkt", "CPU ratio"
    );
    let mut rows = Vec::new();
    for &(name, what) in &contenders {
        for &flows in &flow_counts {
            let mut v = results[&(name.to_string(), flows)].clone();
            let med = median(&mut v);
            let ratio = med / ceiling[&flows];
            let g = median(&mut generated[&(name.to_string(), flows)].clone());
            let mut ns = cpu[&(name.to_string(), flows)].clone();
            let med_ns = median(&mut ns);
            // What the pps ratio would be with the CPU to itself.
            let cpu_ratio = ceiling_ns[&flows] / med_ns;
            println!(
                "{name:<14} {:>9} {:>10.3} {:>9.0}% {:>14.3} {:>10.0} {:>9.0}%",
                label(flows),
                med / 1e6,
                ratio * 100.0,
                g / 1e6,
                med_ns,
                cpu_ratio * 100.0
            );
            let mut row = json!({"contender": name, "what": what, "flows": flows, "median_pps": med,
                "ratio_to_ceiling": ratio, "rounds": v, "generator_median_pps": g,
                "median_cpu_ns_per_packet": med_ns, "cpu_ns_per_packet_rounds": ns,
                "cpu_ratio_to_ceiling": cpu_ratio});
            if let Some(r) = recorded.get(&(name.to_string(), flows)) {
                row["verdicts_per_round"] = r.clone().into();
            }
            rows.push(row);
        }
    }
    let mut doc = machine();
    doc.insert("rounds".into(), a.rounds.into());
    doc.insert("seconds_per_measurement".into(), a.seconds.into());
    doc.insert("results".into(), rows.into());
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        std::fs::create_dir_all(dir).expect("create output directory");
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc).expect("json")).expect("write JSON");
    println!("written to {}", a.out);
}
