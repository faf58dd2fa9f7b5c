//! Throwaway network namespaces joined by veth pairs, removed on drop (also
//! when a test fails), and running code inside one of them.

use std::{fs::File, os::fd::AsRawFd as _, process::Command, thread};

/// Runs `ip`/`nft`/`sysctl` and panics with the command and its stderr on
/// failure: a test topology that cannot be built must fail loudly.
pub fn cmd(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| {
        panic!(
            "running {prog} {}: {e} (cargo xtask setup installs it)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "{prog} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS prog args...`
pub fn ns_cmd(ns: &str, prog: &str, args: &[&str]) -> String {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    cmd("ip", &a)
}

/// Runs `f` on a thread that has entered namespace `ns`, and returns its
/// result. Sockets it creates and processes it spawns live in `ns`.
pub fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    spawn_in_ns(ns, f)
        .join()
        .expect("thread in namespace panicked")
}

/// Like `in_ns`, without waiting.
pub fn spawn_in_ns<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> thread::JoinHandle<R> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        enter(&path);
        f()
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// A set of namespaces named `<prefix>-<name>`, deleted on drop.
pub struct Topology {
    pub prefix: String,
    names: Vec<String>,
}

impl Topology {
    /// Creates the namespaces, first removing any left by a crashed run.
    pub fn new(prefix: &str, hosts: &[&str]) -> Self {
        let mut t = Topology {
            prefix: prefix.to_string(),
            names: Vec::new(),
        };
        for h in hosts {
            let name = t.ns(h);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            cmd("ip", &["netns", "add", &name]);
            t.names.push(name.clone());
            ns_cmd(&name, "ip", &["link", "set", "lo", "up"]);
        }
        t
    }

    /// The full namespace name of host `h`.
    pub fn ns(&self, h: &str) -> String {
        format!("{}-{h}", self.prefix)
    }

    /// A veth pair: `a_if` in host `a`, `b_if` in host `b`, both up.
    pub fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        cmd(
            "ip",
            &[
                "link", "add", a_if, "netns", &na, "type", "veth", "peer", "name", b_if, "netns",
                &nb,
            ],
        );
        ns_cmd(&na, "ip", &["link", "set", a_if, "up"]);
        ns_cmd(&nb, "ip", &["link", "set", b_if, "up"]);
    }

    /// `ip ARGS` inside host `h`.
    pub fn ip(&self, h: &str, args: &[&str]) -> String {
        ns_cmd(&self.ns(h), "ip", args)
    }

    /// `sysctl -w KEY=VALUE` inside host `h`.
    pub fn sysctl(&self, h: &str, kv: &str) {
        ns_cmd(&self.ns(h), "sysctl", &["-qw", kv]);
    }

    /// What `ip -j link show DEV` says of `dev` in host `h`.
    fn link_json(&self, h: &str, dev: &str) -> serde_json::Value {
        let out = self.ip(h, &["-j", "link", "show", dev]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ip -j link show {dev} in {h}: {e}: {out}"));
        v[0].clone()
    }

    /// The MAC address of `dev` in host `h`.
    pub fn mac(&self, h: &str, dev: &str) -> [u8; 6] {
        let v = self.link_json(h, dev);
        let s = v["address"].as_str().expect("address");
        let mut m = [0u8; 6];
        for (i, b) in s.split(':').enumerate() {
            m[i] = u8::from_str_radix(b, 16).expect("hex");
        }
        m
    }

    /// The interface index of `dev` in host `h`.
    pub fn ifindex(&self, h: &str, dev: &str) -> u32 {
        self.link_json(h, dev)["ifindex"].as_u64().expect("ifindex") as u32
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}
