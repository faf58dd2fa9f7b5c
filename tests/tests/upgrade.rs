//! Upgrades across pinned-map layouts, in the lab: the `hola` of an older
//! commit of this repository (`tests/upgrade-base.txt`, whose `REASONS`
//! is shorter and which lacks seven maps) runs the dsr VIP under a loop
//! of new connections and a set of keep-alive connections; the current
//! `hola run` then takes over its pins (SIGTERM to the old daemon, the new
//! one started, as a hitless restart). No request fails, every keep-alive
//! connection stays on its backend, and no counter goes back.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL, hola_bin, now_ms},
    fixture::require_root,
    netns::spawn_in_ns,
    topo::{DSR_VIP, Lab, Servers, http_get},
    upgrade_base,
};
use lb_userspace::doctor::{Check, Report, Status};
use serde_json::Value;

/// How long the test waits for a build of the older `hola` that another
/// process runs (a whole debug build takes about 12 minutes on 2 cores
/// from nothing, longer beside the rest of `cargo xtask test`).
const WAIT: Duration = Duration::from_secs(40 * 60);

/// The last lines of the background build's log, for a failure message.
fn log_tail(commit: &str) -> String {
    let path = upgrade_base::log_path(commit);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let lines: Vec<_> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            format!("{} ends:\n{}", path.display(), lines[from..].join("\n"))
        }
        Err(e) => format!("no log at {}: {e}", path.display()),
    }
}

/// The older commit's `hola` (`hola_tests::upgrade_base`): from the
/// machine's cache; else, while another process builds it (`cargo xtask
/// test` starts that build in the background at its start and sets
/// `HOLA_UPGRADE_BASE_BACKGROUND`), after waiting for that build (at most
/// [`WAIT`], saying so every 30 s); else built here.
fn base_hola() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let commit = upgrade_base::base_commit(&root).unwrap_or_else(|e| panic!("{e}"));
    let background = std::env::var_os(upgrade_base::BACKGROUND_ENV).is_some();
    let t = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        if let Some(bin) = upgrade_base::cached(&commit) {
            println!("the hola of {commit}: cached at {}", bin.display());
            return bin;
        }
        let lock = upgrade_base::lock_file(&commit).unwrap_or_else(|e| panic!("{e}"));
        match lock.try_lock() {
            Ok(()) => {
                if upgrade_base::cached(&commit).is_some() {
                    continue;
                }
                assert!(
                    !background,
                    "the build of the hola of {commit} that `cargo xtask test` started in the \
                     background ended without a binary in {}; {}",
                    upgrade_base::dir(&commit).display(),
                    log_tail(&commit)
                );
                let cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
                return upgrade_base::build_locked(&root, &commit, cargo, None, None)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                panic!("locking {}.lock: {e}", upgrade_base::dir(&commit).display())
            }
        }
        assert!(
            t.elapsed() < WAIT,
            "waited {WAIT:?} for another process's build of the hola of {commit} (it holds {}.lock) \
             and it has not finished; {}",
            upgrade_base::dir(&commit).display(),
            log_tail(&commit)
        );
        if said.is_none_or(|s| s.elapsed() >= Duration::from_secs(30)) {
            // To stderr directly, not through the captured test output: a
            // person watching the run sees why it pauses.
            let _ = writeln!(
                std::io::stderr(),
                "upgrade test: waiting for the build of the hola of {commit} that another process \
                 runs (it holds {}.lock; a build `cargo xtask test` started logs to {}): {} s so \
                 far, at most {} s",
                upgrade_base::dir(&commit).display(),
                upgrade_base::log_path(&commit).display(),
                t.elapsed().as_secs(),
                WAIT.as_secs()
            );
            said = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn config() -> String {
    let mut c = format!(
        "{GLOBAL}\n[[vip]]\naddress = \"{DSR_VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n"
    );
    for i in 1..=3 {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = 1\n",
            10 + i
        );
    }
    c
}

fn stats(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["stats", "--json"])).expect("stats JSON")
}

fn num(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// (name, packets) of every counter the report has: reasons, the VIP's,
/// each backend's.
fn counters(s: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, r) in s["reasons"].as_object().expect("reasons") {
        out.push((format!("reason {name}"), num(&r["packets"], name)));
    }
    let vip = &s["vips"][0];
    out.push(("vip packets".into(), num(&vip["packets"], "vip packets")));
    out.push(("vip new_flows".into(), num(&vip["new_flows"], "new_flows")));
    for b in vip["backends"].as_array().expect("backends") {
        let a = b["address"].as_str().expect("address");
        out.push((format!("backend {a}"), num(&b["packets"], a)));
    }
    out
}

/// (start time in ms, answer) of each request on a new connection.
type Log = Arc<Mutex<Vec<(u64, Result<String, String>)>>>;

fn new_connections(lab: &Lab, stop: Arc<AtomicBool>) -> (Log, std::thread::JoinHandle<()>) {
    let log: Log = Arc::default();
    let l = log.clone();
    let h = spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let t = now_ms();
            let r = TcpStream::connect_timeout(&vip, Duration::from_millis(1000))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_millis(1000)))?;
                    http_get(&mut c)
                })
                .map_err(|e| e.to_string());
            l.lock().expect("lock").push((t, r));
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    (log, h)
}

/// Keep-alive connections: per connection, every answer it had, one
/// request on each every 20 ms until `stop`.
type Kept = Arc<Mutex<Vec<Vec<Result<String, String>>>>>;

fn keep_alive(lab: &Lab, n: usize, stop: Arc<AtomicBool>) -> (Kept, std::thread::JoinHandle<()>) {
    let kept: Kept = Arc::new(Mutex::new(vec![Vec::new(); n]));
    let k = kept.clone();
    let h = spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut conns: Vec<_> = (0..n)
            .map(|_| {
                let c = TcpStream::connect_timeout(&vip, Duration::from_millis(1000))
                    .expect("a keep-alive connection");
                c.set_read_timeout(Some(Duration::from_millis(1000)))
                    .expect("timeout");
                c
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for (i, c) in conns.iter_mut().enumerate() {
                let r = http_get(c).map_err(|e| e.to_string());
                k.lock().expect("lock")[i].push(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (kept, h)
}

#[test]
fn an_upgrade_across_layouts_keeps_every_flow_and_counter() {
    require_root();
    let t0 = Instant::now();
    let old = base_hola();
    let built = t0.elapsed();
    let lab = Lab::new("up1", 3);
    let _servers = Servers::start(&lab);
    let mut d = Daemon::start_with(&old, "up1", &lab.t.ns("lb"), &config());
    let maps = d.bpffs.join("maps");
    assert!(
        !maps.join("LAYOUT").exists(),
        "the older build pins no layout"
    );
    let old_reasons = stats(&d)["reasons"].as_object().expect("reasons").len();

    let stop = Arc::new(AtomicBool::new(false));
    let (kept, kh) = keep_alive(&lab, 12, stop.clone());
    let (log, lh) = new_connections(&lab, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let before = stats(&d);

    // Before it: this build's `hola doctor` says what its `hola run` will
    // do to the older build's pins (a warning, not a missing-map failure).
    let pins = doctor_pins(&d);
    assert_eq!(pins.status, Status::Warn, "{pins:#?}");
    for part in [
        "pinned by another build",
        "upgrades them in place, creating ",
        "VIP_DIRECT4",
        "FLOWS4",
        "converting ",
    ] {
        assert!(pins.saw.contains(part), "no {part:?} in {pins:#?}");
    }

    // The upgrade: the older daemon stops (its program and maps stay,
    // pinned, forwarding), the current one takes them over.
    let up = Instant::now();
    d.kill(libc::SIGTERM);
    d.bin = hola_bin().to_path_buf();
    d.spawn();
    let took = up.elapsed();
    let up_at = now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    let after = stats(&d);
    stop.store(true, Ordering::Relaxed);
    kh.join().expect("keep-alive connections");
    lh.join().expect("request loop");

    let log = log.lock().expect("lock");
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let after_up = log.iter().filter(|(t, _)| *t >= up_at).count();
    println!(
        "{} requests on new connections, {after_up} after the upgrade, {} failed; upgrade (stop, start, API up) in {took:?}",
        log.len(),
        failed.len()
    );
    assert!(after_up >= 100, "the loop ran on after the upgrade");
    assert!(
        failed.is_empty(),
        "{} requests failed, the first: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(3)],
        d.log()
    );
    for (i, answers) in kept.lock().expect("lock").iter().enumerate() {
        let first = answers[0].clone().expect("the first answer");
        assert!(
            answers.len() >= 50,
            "connection {i}: {} requests",
            answers.len()
        );
        assert!(
            answers.iter().all(|a| a.as_ref() == Ok(&first)),
            "keep-alive connection {i} left its backend {first}: {:?}",
            answers
                .iter()
                .filter(|a| a.as_ref() != Ok(&first))
                .take(3)
                .collect::<Vec<_>>()
        );
    }

    // Counters continue: none went back, and the new reasons are there.
    let (b, a) = (counters(&before), counters(&after));
    for (name, was) in &b {
        let now = a
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is gone after the upgrade"))
            .1;
        assert!(now >= *was, "{name}: {was} before the upgrade, {now} after");
    }
    let vip = |c: &[(String, u64)]| c.iter().find(|(n, _)| n == "vip packets").expect("vip").1;
    assert!(vip(&a) > vip(&b), "the VIP counted on");
    let new_reasons = after["reasons"].as_object().expect("reasons").len();
    println!("reasons: {old_reasons} before, {new_reasons} after");
    assert_eq!(
        (old_reasons, new_reasons),
        (16, lb_common::Reason::COUNT as usize)
    );

    // What the upgrade did, and what it left.
    let text = d.log();
    for line in [
        "the pinned maps have another layout: upgrading them",
        "copied a pinned map into its new layout",
        "upgrade done",
    ] {
        assert!(text.contains(line), "no {line:?} in the log:\n{text}");
    }
    assert!(maps.join("LAYOUT").exists(), "the layout is recorded");
    assert!(!d.bpffs.join("maps-next").exists(), "nothing left staged");
    for m in [
        "VIP_FILTER",
        "VIP_DIRECT4",
        "VIP_DIRECT6",
        "PREV_RINGS",
        "NAT_SYN",
        "GRACE_SYNS",
        "FLOWS4",
    ] {
        assert!(maps.join(m).exists(), "{m} created");
    }
    // The old build's one flow table split in two: its IPv4 flows (every
    // flow of this test) moved to FLOWS4, whose key is 16 bytes.
    let flows4 = aya::maps::MapInfo::from_pin(maps.join("FLOWS4")).expect("FLOWS4");
    assert_eq!(flows4.key_size(), 16);
    assert!(
        text.contains("map=FLOWS4"),
        "FLOWS4 is filled from the old FLOWS:\n{text}"
    );

    // A restart of the same build now reuses every map as it is.
    d.kill(libc::SIGTERM);
    d.spawn();
    let again = d.log();
    assert_eq!(
        again.matches("upgrading them").count(),
        1,
        "a restart of the same build upgrades nothing:\n{again}"
    );
    println!(
        "took {:?} ({built:?} of it finding or building the older hola)",
        t0.elapsed()
    );
}

/// A pinned map whose layout this build cannot convert (here `PREV_UNTIL`
/// with 16-byte values at the same layout version): `hola run` refuses,
/// naming the map, both layouts and what to do, before it changes
/// anything: the pins stay as they were and the attached program forwards
/// on.
#[test]
fn a_layout_without_a_converter_is_refused_before_anything_changes() {
    use aya::maps::{Array, MapData, MapInfo};
    require_root();
    let lab = Lab::new("up2", 3);
    let _servers = Servers::start(&lab);
    let mut d = Daemon::start("up2", &lab.t.ns("lb"), &config());
    d.kill(libc::SIGTERM);
    let maps = d.bpffs.join("maps");
    let pin = maps.join("PREV_UNTIL");
    let entries = MapInfo::from_pin(&pin).expect("PREV_UNTIL").max_entries();
    let listing = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("pins")
            .map(|e| e.expect("pin").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    std::fs::remove_file(&pin).expect("unpin PREV_UNTIL");
    let other: Array<MapData, [u8; 16]> = Array::create(entries, 0).expect("a map");
    other.pin(&pin).expect("pin the other layout");
    let pins = listing(&maps);

    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.ns))
        .arg(hola_bin())
        .args(["run", "--config"])
        .arg(&d.config)
        .output()
        .expect("hola run");
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(!out.status.success(), "hola run started:\n{err}");
    let want = format!(
        "pinned map PREV_UNTIL has layout version 1 (array, key 4 B, value 16 B, {entries} entries) \
         (pinned by build "
    );
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains(&format!(
            "and this build's is version 1 (array, key 4 B, value 8 B, {entries} entries); \
             this build has no converter from one to the other: run the build that pinned it, \
             or `hola down` then `hola run`"
        )),
        "{err}"
    );
    assert_eq!(listing(&maps), pins, "the pins did not change");
    assert!(!d.bpffs.join("maps-next").exists(), "nothing was staged");
    // The program attached before still forwards.
    let answer = spawn_in_ns(&lab.t.ns("cl"), || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(1))?;
        c.set_read_timeout(Some(Duration::from_secs(1)))?;
        http_get(&mut c)
    })
    .join()
    .expect("client");
    let answer = answer.expect("an answer through the VIP");
    assert!(["b1", "b2", "b3"].contains(&answer.as_str()), "{answer}");
}

/// Pins under a test directory of bpffs, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A map of the given kind and sizes, pinned at `path`.
fn pinned(path: &Path, map_type: u32, key: u32, value: u32, max: u32) -> aya::maps::MapData {
    let obj = aya_obj::Map::new_from_params(map_type, key, value, max, 0);
    let m = aya::maps::MapData::create(obj, "hola_test", None).expect("a map");
    m.pin(path).expect("pinned");
    m
}

/// The copy an upgrade makes of hashes: an LRU hash whose 4-byte values
/// grew to 8 (`ZeroExtend`), every entry; then the top-up after the swap,
/// which adds only what the new map lacks and leaves what the new program
/// wrote. A per-CPU hash, CPU by CPU.
#[test]
fn hash_maps_are_copied_entry_by_entry_and_cpu_by_cpu() {
    use aya::maps::{HashMap, Map, PerCpuHashMap, PerCpuValues};
    use lb_userspace::dataplane::{
        layout::{Convert, kind},
        upgrade::{Copied, copy_pinned},
    };
    require_root();
    let dir = PinDir(PathBuf::from("/sys/fs/bpf/hola-test-up3"));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("a bpffs directory");
    let (a, b) = (dir.0.join("old"), dir.0.join("new"));

    let mut old: HashMap<_, u64, u32> =
        HashMap::try_from(Map::LruHashMap(pinned(&a, kind::LRU_HASH, 8, 4, 1000))).expect("old");
    let mut new: HashMap<_, u64, u64> =
        HashMap::try_from(Map::LruHashMap(pinned(&b, kind::LRU_HASH, 8, 8, 1000))).expect("new");
    for k in 0..300u64 {
        old.insert(k, k as u32 * 3, 0).expect("insert");
    }
    new.insert(5, 999, 0).expect("insert");
    let first = copy_pinned("T", &a, &b, Convert::ZeroExtend, false).expect("copy");
    assert_eq!(
        first,
        Copied {
            copied: 300,
            dropped: 0
        }
    );
    // Native-endian: the old u32 in the low half of the new u64 (x86_64).
    assert_eq!(new.get(&7, 0).expect("7"), 21);
    assert_eq!(new.get(&5, 0).expect("5"), 15, "the copy overwrites");
    new.insert(5, 777, 0).expect("the new program writes");
    old.insert(300, 900, 0).expect("the old program adds one");
    let top_up = copy_pinned("T", &a, &b, Convert::ZeroExtend, true).expect("top-up");
    assert_eq!(
        top_up,
        Copied {
            copied: 1,
            dropped: 0
        }
    );
    assert_eq!(new.get(&300, 0).expect("300"), 900);
    assert_eq!(new.get(&5, 0).expect("5"), 777, "the top-up adds only");
    assert_eq!(new.keys().count(), 301);

    // Per-CPU: 4-byte values to 12-byte ones, every possible CPU's.
    let (c, d) = (dir.0.join("pc_old"), dir.0.join("pc_new"));
    let mut old: PerCpuHashMap<_, u32, u32> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(pinned(&c, kind::PERCPU_HASH, 4, 4, 16)))
            .expect("old");
    let new: PerCpuHashMap<_, u32, [u32; 3]> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(pinned(&d, kind::PERCPU_HASH, 4, 12, 16)))
            .expect("new");
    let ncpus = aya::util::nr_cpus().expect("possible CPUs");
    let values: Vec<u32> = (0..ncpus as u32).map(|cpu| 10 + cpu).collect();
    old.insert(
        1,
        PerCpuValues::try_from(values.clone()).expect("values"),
        0,
    )
    .expect("insert");
    let copied = copy_pinned("P", &c, &d, Convert::ZeroExtend, false).expect("copy");
    assert_eq!(
        copied,
        Copied {
            copied: 1,
            dropped: 0
        }
    );
    let got = new.get(&1, 0).expect("1");
    for (cpu, want) in values.iter().enumerate() {
        assert_eq!(got[cpu], [*want, 0, 0], "CPU {cpu}");
    }
    // A converter that fits no value drops the entry.
    let dropped = copy_pinned("P", &c, &d, Convert::Identity, false).expect("copy");
    assert_eq!(
        dropped,
        Copied {
            copied: 0,
            dropped: 1
        }
    );
}

/// The "pinned maps" check of this build's `hola doctor --json`, run in the
/// daemon's namespace against its configuration.
fn doctor_pins(d: &Daemon) -> Check {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.ns))
        .arg(hola_bin())
        .args(["doctor", "--json", "--config"])
        .arg(&d.config)
        .output()
        .expect("running hola doctor");
    let text = String::from_utf8_lossy(&o.stdout);
    let report: Report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "hola doctor printed no report ({e}): {text}{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    report
        .checks
        .into_iter()
        .find(|c| c.name == "pinned maps")
        .unwrap_or_else(|| panic!("no \"pinned maps\" check in hola doctor's report: {text}"))
}
