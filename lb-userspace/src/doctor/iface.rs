//! What doctor knows of an interface (its MTU, the XDP program on it and
//! in which mode, its IPv4 sysctls), and the checks every host shares:
//! rp_filter, and the XDP program an interface should have.

use super::Check;

/// How an XDP program is attached (the kernel's `IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    None,
    /// In the driver.
    Native,
    /// Generic (skb) mode: after the kernel has built an skb, much slower.
    Generic,
    Offload,
    /// More than one program (say native and generic).
    Multi,
}

impl XdpMode {
    fn describe(self) -> &'static str {
        match self {
            XdpMode::None => "no XDP program",
            XdpMode::Native => "native (driver) XDP",
            XdpMode::Generic => "generic (skb) XDP",
            XdpMode::Offload => "offloaded XDP",
            XdpMode::Multi => "several XDP programs",
        }
    }
}

/// A loaded program as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prog {
    pub id: u32,
    /// The kernel's name: the function's name, at most 15 bytes.
    pub name: String,
    /// The SHA of its instructions: the same for the same build.
    pub tag: u64,
    /// Whether it was JIT-compiled.
    pub jited: bool,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub loopback: bool,
    pub up: bool,
    pub xdp: XdpMode,
    /// The program attached, when the kernel says which.
    pub prog: Option<Prog>,
}

/// The IPv4 sysctls doctor reads of one `net.ipv4.conf.NAME` (`None`:
/// unreadable, say the interface is gone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conf {
    pub rp_filter: Option<u32>,
    pub arp_ignore: Option<u32>,
    pub arp_announce: Option<u32>,
}

/// The value the kernel applies for a setting it takes as the larger of
/// `conf.all` and `conf.IFACE` (rp_filter, arp_ignore, arp_announce), and
/// which of the two sets it.
pub fn effective(all: Option<u32>, own: Option<u32>) -> (u32, &'static str) {
    let (a, o) = (all.unwrap_or(0), own.unwrap_or(0));
    if a > o { (a, "all") } else { (o, "own") }
}

/// The sysctl to name in a fix: `net.ipv4.conf.all.KEY` when `all` sets the
/// value, else the interface's own.
fn key(which: &str, iface: &str, setting: &str) -> String {
    let conf = if which == "all" { "all" } else { iface };
    format!("net.ipv4.conf.{conf}.{setting}")
}

/// rp_filter on `iface`: strict (1) drops a packet whose source is not
/// routed back out of the interface it came in on. The kernel applies the
/// larger of `conf.all` and the interface's own value.
pub fn rp_filter(iface: &str, all: Conf, own: Conf, why: &str) -> Check {
    let name = format!("rp_filter {iface}");
    let (v, which) = effective(all.rp_filter, own.rp_filter);
    match v {
        0 => Check::ok(name, "0 (off)"),
        2 => Check::ok(name, "2 (loose)"),
        _ => {
            let k = key(which, iface, "rp_filter");
            Check::warn(
                name,
                format!("{v} (strict, set by {k}): {why}"),
                format!(
                    "sysctl -w {k}=2 (loose), and the same in /etc/sysctl.d/ to keep it; the \
                     kernel applies the larger of conf.all and conf.{iface}"
                ),
            )
        }
    }
}

/// The XDP program on one of the balancer's interfaces: `hola_lb`, natively.
pub fn balancer_xdp(i: &Iface, expect: &str) -> Check {
    let name = format!("xdp {}", i.name);
    let mtu = format!("mtu {}", i.mtu);
    let prog = i.prog.as_ref().map(|p| p.name.as_str());
    match (i.xdp, prog) {
        (XdpMode::None, _) => Check::fail(
            name,
            format!("no XDP program attached ({mtu}): hola does not see its packets"),
            "start hola (systemctl start hola, or hola run --config FILE); its log says why an \
             attach failed",
        ),
        (_, Some(p)) if p != expect => Check::fail(
            name,
            format!("{} {p} attached, not {expect} ({mtu})", i.xdp.describe()),
            format!(
                "detach the other program (ip link set dev {} xdp off) and restart hola",
                i.name
            ),
        ),
        (XdpMode::Native | XdpMode::Offload, _) => {
            Check::ok(name, format!("{} {expect}, {mtu}", i.xdp.describe()))
        }
        (XdpMode::Generic | XdpMode::Multi, _) => Check::warn(
            name,
            format!(
                "{} {expect}, {mtu}: every packet pays for an skb first, several times slower",
                i.xdp.describe()
            ),
            format!(
                "use a NIC driver with native XDP on {} (ethtool -i {} names the driver); with \
                 xdp_mode = \"driver\" hola refuses to start in generic mode",
                i.name, i.name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn conf(rp: u32) -> Conf {
        Conf {
            rp_filter: Some(rp),
            ..Conf::default()
        }
    }

    #[test]
    fn rp_filter_takes_the_larger_of_all_and_own() {
        assert_eq!(rp_filter("eth0", conf(0), conf(0), "x").status, Status::Ok);
        assert_eq!(rp_filter("eth0", conf(2), conf(0), "x").saw, "2 (loose)");
        let strict = rp_filter("eth0", conf(1), conf(0), "replies are dropped");
        assert_eq!(strict.status, Status::Warn);
        assert_eq!(
            strict.saw,
            "1 (strict, set by net.ipv4.conf.all.rp_filter): replies are dropped"
        );
        assert!(
            strict
                .fix
                .unwrap()
                .starts_with("sysctl -w net.ipv4.conf.all.rp_filter=2")
        );
        let own = rp_filter("eth0", conf(0), conf(1), "x");
        assert!(
            own.fix
                .unwrap()
                .starts_with("sysctl -w net.ipv4.conf.eth0.rp_filter=2")
        );
        // Loose on all beats strict on the interface (the larger wins).
        assert_eq!(rp_filter("eth0", conf(2), conf(1), "x").status, Status::Ok);
    }

    fn iface(xdp: XdpMode, prog: Option<&str>) -> Iface {
        Iface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            loopback: false,
            up: true,
            xdp,
            prog: prog.map(|n| Prog {
                id: 7,
                name: n.into(),
                tag: 1,
                jited: true,
            }),
        }
    }

    #[test]
    fn balancer_xdp_wants_hola_lb_natively() {
        let ok = balancer_xdp(&iface(XdpMode::Native, Some("hola_lb")), "hola_lb");
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.saw, "native (driver) XDP hola_lb, mtu 1500");
        let g = balancer_xdp(&iface(XdpMode::Generic, Some("hola_lb")), "hola_lb");
        assert_eq!(g.status, Status::Warn);
        assert_eq!(
            balancer_xdp(&iface(XdpMode::None, None), "hola_lb").status,
            Status::Fail
        );
        let other = balancer_xdp(&iface(XdpMode::Native, Some("xdp_dummy")), "hola_lb");
        assert_eq!(other.status, Status::Fail);
        assert_eq!(
            other.saw,
            "native (driver) XDP xdp_dummy attached, not hola_lb (mtu 1500)"
        );
    }
}
