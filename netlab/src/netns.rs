//! Named network namespaces (`ip netns`) joined by veth pairs and bridges,
//! and running commands inside them.

use std::{ffi::OsStr, process::Command};

use crate::cmd::{Error, run_args};

/// The name of host `host`'s namespace in a topology with `prefix`:
/// `<prefix>-<host>` (`hola-lab-client`, `he2w-b1`).
pub fn name(prefix: &str, host: &str) -> String {
    format!("{prefix}-{host}")
}

/// The file `ip netns add NAME` binds the namespace to.
pub fn path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// `ip netns exec NS program args`: the command sees the namespace's
/// network and also its own `/sys` (`/sys/class/net` lists the namespace's
/// links), in a private mount namespace that ends with the command. For a
/// command that must pin in bpffs or be a long-lived process, see
/// [`nsenter`].
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String, Error> {
    let mut a = vec!["netns", "exec", ns, program];
    a.extend_from_slice(args);
    run_args("ip", &a)
}

/// A command that runs `program` in network namespace `ns` and nothing
/// else: `ip netns exec` would also give it a private mount namespace whose
/// `/sys` has no bpffs, so pins made there would vanish with the command
/// (and detach what they hold). nsenter execs `program`, so a spawned
/// child's PID is the program's.
pub fn nsenter(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", path(ns)))
        .arg("--")
        .arg(program);
    cmd
}

/// The namespaces that exist whose names start with `start`.
pub fn list(start: &str) -> Result<Vec<String>, Error> {
    let out = run_args("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(start))
        .map(str::to_string)
        .collect())
}

/// `ip netns del NS`.
pub fn delete(ns: &str) -> Result<(), Error> {
    run_args("ip", &["netns", "del", ns]).map(drop)
}

/// A set of namespaces named `<prefix>-<host>`, deleted on drop (also when
/// a test fails half-way) unless [`Namespaces::keep`] was called. Hosts
/// are named by their short names (`sw`, `lb`, `b1`) everywhere below.
#[derive(Debug)]
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
    keep: bool,
}

impl Namespaces {
    /// Creates a namespace per host, with its loopback up, first removing
    /// one of the same name left by a crashed run. On an error the ones
    /// made so far are removed again.
    pub fn new(prefix: &str, hosts: &[&str]) -> Result<Self, Error> {
        let mut t = Namespaces {
            prefix: prefix.to_string(),
            names: Vec::new(),
            keep: false,
        };
        for h in hosts {
            let ns = t.name(h);
            let _ = delete(&ns);
            run_args("ip", &["netns", "add", &ns])?;
            t.names.push(ns);
            t.ip(h, &["link", "set", "lo", "up"])?;
        }
        Ok(t)
    }

    /// The prefix every namespace name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full namespace name of host `h`.
    pub fn name(&self, h: &str) -> String {
        name(&self.prefix, h)
    }

    /// Leaves the namespaces in place when this is dropped: `cargo xtask lab
    /// up` makes them for a person to use, and `lab down` removes them.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// `ip ARGS` inside host `h`; returns what it printed.
    pub fn ip(&self, h: &str, args: &[&str]) -> Result<String, Error> {
        let ns = self.name(h);
        let mut a = vec!["-n", &ns];
        a.extend_from_slice(args);
        run_args("ip", &a)
    }

    /// `program args` inside host `h` (see [`exec`]).
    pub fn exec(&self, h: &str, program: &str, args: &[&str]) -> Result<String, Error> {
        exec(&self.name(h), program, args)
    }

    /// `sysctl -w KEY=VALUE` inside host `h`.
    pub fn sysctl(&self, h: &str, kv: &str) -> Result<(), Error> {
        self.exec(h, "sysctl", &["-qw", kv]).map(drop)
    }

    /// No reverse-path filter on `dev` of host `h`: the lab's paths are
    /// asymmetric on purpose (dsr replies bypass the balancer).
    pub fn no_rp_filter(&self, h: &str, devs: &[&str]) -> Result<(), Error> {
        for dev in devs {
            self.sysctl(h, &format!("net.ipv4.conf.{dev}.rp_filter=0"))?;
        }
        Ok(())
    }

    /// No transmit checksum offload on `dev` of host `h`. A veth leaves
    /// TCP/UDP checksums to "hardware" that does not exist once XDP has
    /// moved the frame on: the sender's kernel must fill them in, as a real
    /// NIC would before the frame reached the balancer.
    pub fn no_tx_offload(&self, h: &str, dev: &str) -> Result<(), Error> {
        self.exec(h, "ethtool", &["-K", dev, "tx", "off"]).map(drop)
    }

    /// A veth pair: `a_if` in host `a`, `b_if` in host `b`, both up.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), Error> {
        let (na, nb) = (self.name(a), self.name(b));
        run_args(
            "ip",
            &[
                "link", "add", a_if, "netns", &na, "type", "veth", "peer", "name", b_if, "netns",
                &nb,
            ],
        )?;
        self.ip(a, &["link", "set", a_if, "up"])?;
        self.ip(b, &["link", "set", b_if, "up"]).map(drop)
    }

    /// A bridge `br` in host `h`, up.
    pub fn bridge(&self, h: &str, br: &str) -> Result<(), Error> {
        self.ip(h, &["link", "add", br, "type", "bridge"])?;
        self.ip(h, &["link", "set", br, "up"]).map(drop)
    }

    /// Makes `port` of host `h` a port of its bridge `br`.
    pub fn enslave(&self, h: &str, port: &str, br: &str) -> Result<(), Error> {
        self.ip(h, &["link", "set", port, "master", br]).map(drop)
    }

    /// Host `h` reaches the rest of the lab through a veth `dev` whose peer
    /// `port` is a port of bridge `br` in host `sw`.
    pub fn on_bridge(
        &self,
        h: &str,
        dev: &str,
        sw: &str,
        port: &str,
        br: &str,
    ) -> Result<(), Error> {
        self.veth(h, dev, sw, port)?;
        self.enslave(sw, port, br)
    }

    /// Address `cidr` on `dev` of host `h`. IPv6 addresses skip
    /// duplicate-address detection (`nodad`): usable at once.
    pub fn addr(&self, h: &str, dev: &str, cidr: &str) -> Result<(), Error> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(h, &args).map(drop)
    }

    /// `ip route add DEST via GATEWAY` in host `h` (the family follows the
    /// addresses).
    pub fn route(&self, h: &str, dest: &str, gateway: &str) -> Result<(), Error> {
        self.ip(h, &["route", "add", dest, "via", gateway])
            .map(drop)
    }

    /// What `ip -j link show DEV` says of `dev` in host `h`.
    fn link_json(&self, h: &str, dev: &str) -> Result<(String, serde_json::Value), Error> {
        let out = self.ip(h, &["-j", "link", "show", dev])?;
        let command = format!("ip -n {} -j link show {dev}", self.name(h));
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(v) => Ok((command, v[0].clone())),
            Err(_) => Err(Error::Output {
                command,
                what: "JSON",
                output: out,
            }),
        }
    }

    /// The MAC address of `dev` in host `h`.
    pub fn mac(&self, h: &str, dev: &str) -> Result<[u8; 6], Error> {
        let (command, v) = self.link_json(h, dev)?;
        v["address"]
            .as_str()
            .and_then(parse_mac)
            .ok_or_else(|| Error::Output {
                command,
                what: "a MAC address",
                output: v.to_string(),
            })
    }

    /// The interface index of `dev` in host `h`.
    pub fn ifindex(&self, h: &str, dev: &str) -> Result<u32, Error> {
        let (command, v) = self.link_json(h, dev)?;
        v["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::Output {
                command,
                what: "an interface index",
                output: v.to_string(),
            })
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if !self.keep {
            for n in &self.names {
                let _ = delete(n);
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::show;

    #[test]
    fn names_and_paths() {
        assert_eq!(name("hola-lab", "client"), "hola-lab-client");
        assert_eq!(name("he2w", "b1"), "he2w-b1");
        assert_eq!(path("he2w-b1"), "/run/netns/he2w-b1");
    }

    #[test]
    fn nsenter_enters_only_the_network_namespace() {
        let cmd = nsenter("hola-lab-lb", "hola");
        assert_eq!(show(&cmd), "nsenter --net=/run/netns/hola-lab-lb -- hola");
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01"),
            Some([0x02, 0x00, 0x0a, 0xff, 0x10, 0x01])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:zz"), None);
    }
}
