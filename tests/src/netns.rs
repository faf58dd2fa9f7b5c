//! Throwaway network namespaces for the tests (netlab's, removed on drop,
//! also when a test fails), and running code inside one of them. Every
//! failure panics with the command and its stderr: a test topology that
//! cannot be built must fail loudly.

use std::{fs::File, os::fd::AsRawFd as _, process::Command, thread};

use netlab::Namespaces;

/// The value, or a panic that names the failed command and its stderr.
pub fn must<T>(r: Result<T, netlab::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `prog args` (`ip`, `nft`, `sysctl`, ...) and returns its stdout.
pub fn cmd(prog: &str, args: &[&str]) -> String {
    must(netlab::run(Command::new(prog).args(args)))
}

/// `ip netns exec NS prog args...` (the namespace's own `/sys` included).
pub fn ns_cmd(ns: &str, prog: &str, args: &[&str]) -> String {
    must(netlab::netns::exec(ns, prog, args))
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
    let path = netlab::netns::path(ns);
    thread::spawn(move || {
        enter(&path);
        f()
    })
}

/// Sends one Ethernet `frame` (header included) out of `dev` in namespace
/// `ns` through a packet socket, as the host there would.
pub fn send_frame(ns: &str, dev: &'static str, frame: Vec<u8>) {
    send_frames(ns, dev, vec![frame]);
}

/// Sends Ethernet `frames` (headers included, all of one EtherType) out of
/// `dev` in namespace `ns` through one packet socket, in order.
pub fn send_frames(ns: &str, dev: &'static str, frames: Vec<Vec<u8>>) {
    in_ns(ns, move || {
        let Some(frame) = frames.first() else {
            return;
        };
        assert!(frame.len() >= 14, "an Ethernet frame: {frame:02x?}");
        // The frame's own EtherType, network order as the socket wants it.
        let proto = u16::from_ne_bytes([frame[12], frame[13]]);
        let name = std::ffi::CString::new(dev).expect("name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "{dev}: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket creation; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are
        // the ones a packet socket's sendto reads.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = proto;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        for frame in &frames {
            // SAFETY: frame and to are valid for the lengths given; fd is ours.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            let err = std::io::Error::last_os_error();
            if sent != frame.len() as isize {
                // SAFETY: fd is ours and closed once.
                unsafe { libc::close(fd) };
                panic!("sending a frame out of {dev}: {err}");
            }
        }
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
    });
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// A set of namespaces named `<prefix>-<name>`, deleted on drop: netlab's
/// [`Namespaces`], whose failures panic here.
pub struct Topology {
    net: Namespaces,
}

impl From<Namespaces> for Topology {
    fn from(net: Namespaces) -> Self {
        Topology { net }
    }
}

impl Topology {
    /// Creates the namespaces, first removing any left by a crashed run.
    pub fn new(prefix: &str, hosts: &[&str]) -> Self {
        must(Namespaces::new(prefix, hosts)).into()
    }

    /// The namespaces, for netlab's functions.
    pub fn net(&self) -> &Namespaces {
        &self.net
    }

    /// The full namespace name of host `h`.
    pub fn ns(&self, h: &str) -> String {
        self.net.name(h)
    }

    /// A veth pair: `a_if` in host `a`, `b_if` in host `b`, both up.
    pub fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        must(self.net.veth(a, a_if, b, b_if));
    }

    /// `ip ARGS` inside host `h`.
    pub fn ip(&self, h: &str, args: &[&str]) -> String {
        must(self.net.ip(h, args))
    }

    /// `sysctl -w KEY=VALUE` inside host `h`.
    pub fn sysctl(&self, h: &str, kv: &str) {
        must(self.net.sysctl(h, kv));
    }

    /// The MAC address of `dev` in host `h`.
    pub fn mac(&self, h: &str, dev: &str) -> [u8; 6] {
        must(self.net.mac(h, dev))
    }

    /// The interface index of `dev` in host `h`.
    pub fn ifindex(&self, h: &str, dev: &str) -> u32 {
        must(self.net.ifindex(h, dev))
    }
}
