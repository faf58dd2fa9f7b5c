//! The Debian package's hola, started as its systemd unit starts it: the
//! unit's command line with the packaged /etc/hola/hola.toml, as root with
//! only the unit's capability bounding set, attaches to the interface that
//! configuration names, and `hola doctor` finds it all ok.
//!
//! The package is the one `cargo xtask package` built (`cargo xtask test`
//! builds it before the privileged tests). hola runs in a network namespace
//! holding an `eth0`, and in a mount namespace of its own with a fresh
//! bpffs at /sys/fs/bpf and empty /run and /var/lib, so that the unit's
//! paths (/run/hola, /var/lib/hola, /sys/fs/bpf/hola) touch nothing of the
//! host's; that mount namespace, its pins and so the data plane go away
//! with the process.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hola_tests::{fixture::require_root, netns::Topology};
use lb_userspace::doctor::{Report, Status};

/// The newest `hola_*.deb` under target/debian.
fn package() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/<test> → target
    let target = exe.ancestors().nth(3).expect("target dir");
    let dir = target.join("debian");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hola_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no hola_*.deb in {}: run `cargo xtask package` first (cargo xtask test does)",
                dir.display()
            )
        })
}

/// A line of the packaged unit: the value of `key=`.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_owned()
}

/// The capability bounding set as `setpriv --bounding-set` takes it.
fn setpriv_caps(bounding: &str) -> String {
    let mut s = String::from("-all");
    for c in bounding.split_whitespace() {
        s += ",+";
        s += &c.trim_start_matches("CAP_").to_lowercase();
    }
    s
}

/// The capability bits of a set of `CAP_*` names (those the unit uses).
fn cap_bits(bounding: &str) -> u64 {
    bounding
        .split_whitespace()
        .map(|c| match c {
            "CAP_NET_ADMIN" => 1u64 << 12,
            "CAP_SYS_ADMIN" => 1 << 21,
            "CAP_PERFMON" => 1 << 38,
            "CAP_BPF" => 1 << 39,
            other => panic!("the test does not know the bit of {other}"),
        })
        .sum()
}

/// Kills the packaged hola when the test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill on a PID we started and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_packaged_service_runs_on_the_interface_its_configuration_names() {
    require_root();
    let deb = package();
    let dir = PathBuf::from("/tmp/hola-test-package");
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .expect("dpkg-deb");
    assert!(x.success(), "dpkg-deb -x {}", deb.display());
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/hola.service")).expect("the unit");
    let bounding = unit_value(&unit, "CapabilityBoundingSet");
    // The unit's command line, from the unpacked package.
    let exec = unit_value(&unit, "ExecStart");
    let exec = exec
        .replace(
            "/usr/bin/hola",
            &root.join("usr/bin/hola").display().to_string(),
        )
        .replace("/etc/hola/", &root.join("etc/hola/").display().to_string());
    let config = root.join("etc/hola/hola.toml");
    assert!(
        exec.ends_with(&format!("--config {}", config.display())),
        "{exec}"
    );

    let t = Topology::new("hpkg", &["lb", "peer"]);
    t.link("lb", "eth0", "peer", "eth0");
    for kv in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=0",
    ] {
        t.sysctl("lb", kv);
    }
    let ns = t.ns("lb");
    let log = std::fs::File::create(dir.join("hola.log")).expect("log");
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && mount -t tmpfs tmpfs /run && \
         mount -t tmpfs tmpfs /var/lib && \
         exec setpriv --bounding-set={} --inh-caps=-all -- {exec}",
        setpriv_caps(&bounding)
    );
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting the packaged hola");
    let mut hola = Running(child);
    let pid = hola.0.id();
    let log = || std::fs::read_to_string(dir.join("hola.log")).unwrap_or_default();

    // The control socket in hola's own mount namespace, seen from here.
    let socket = PathBuf::from(format!("/proc/{pid}/root/run/hola/hola.sock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Ok(Some(s)) = hola.0.try_wait() {
            panic!("the packaged hola exited with {s}:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "no control socket in 30 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    assert_eq!(
        eff,
        cap_bits(&bounding),
        "hola runs with exactly the unit's capabilities"
    );

    // Doctor, in hola's network and mount namespaces, with the packaged
    // configuration: attached natively to eth0, pins, socket, state.
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg(root.join("usr/bin/hola"))
        .args(["doctor", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("hola doctor");
    let text = String::from_utf8_lossy(&o.stdout);
    let r: Report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("doctor printed no report ({e}): {text}"));
    let bad: Vec<_> = r.checks.iter().filter(|c| c.status != Status::Ok).collect();
    assert!(bad.is_empty(), "{bad:#?}\n{}", log());
    assert_eq!(o.status.code(), Some(0));
    let xdp = r
        .checks
        .iter()
        .find(|c| c.name == "xdp eth0")
        .expect("xdp eth0");
    assert!(
        xdp.saw.starts_with("native (driver) XDP hola_lb"),
        "{}",
        xdp.saw
    );
    let sock = r
        .checks
        .iter()
        .find(|c| c.name == "control socket")
        .expect("control socket");
    assert_eq!(sock.saw, "/run/hola/hola.sock: mode 600, root's");
    drop(hola);
    assert!(log().contains("attached"), "{}", log());
    let _ = std::fs::remove_dir_all(&dir);
}
