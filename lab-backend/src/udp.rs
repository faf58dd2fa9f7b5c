//! The UDP responder. It listens on a wildcard address but must answer from
//! the address the datagram was sent to (a VIP on `lo`), or the client's
//! connected socket would drop the answer: it asks the kernel for each
//! datagram's destination (IP_PKTINFO / IPV6_RECVPKTINFO) and sends the
//! answer from there.

use std::{
    future::Future,
    io,
    mem::{self, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, RawFd},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

/// Binds a UDP socket that learns each datagram's destination address. An
/// IPv6 wildcard is IPv6 only, so that `0.0.0.0:80` and `[::]:80` can both
/// be bound. Must be called inside a tokio runtime.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let (level, opt) = if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, and a c_int option value of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Answers every datagram on `sock` with `"{name}\n"` until `shutdown`
/// completes. `sock` must come from [`bind_udp`].
pub async fn serve_udp(
    sock: UdpSocket,
    name: &str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let answer = format!("{name}\n");
    let mut buf = [0u8; 2048];
    tokio::pin!(shutdown);
    loop {
        let received = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = sock.async_io(Interest::READABLE, || recv_with_dst(fd, &mut buf)) => r,
        };
        let (peer, dst) = match received {
            Ok(r) => r,
            // An ICMP error for an earlier answer surfaces here: not fatal.
            Err(e) => {
                eprintln!("{name}: udp receive: {e}");
                continue;
            }
        };
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                send_from(fd, answer.as_bytes(), peer, dst)
            })
            .await;
        if super::verbose() {
            let dst = dst.map_or_else(|| "?".to_string(), |d| d.to_string());
            match sent {
                Ok(_) => eprintln!("{name}: udp {peer} -> {dst}: answered"),
                Err(e) => eprintln!("{name}: udp {peer} -> {dst}: {e}"),
            }
        }
    }
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg([u8; 128]);

/// `recvmsg`: the sender and, when the kernel says, the destination address.
fn recv_with_dst(fd: RawFd, buf: &mut [u8]) -> io::Result<(SocketAddr, Option<IpAddr>)> {
    let mut from = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut cmsg = Cmsg([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    // SAFETY: every pointer in msg points at a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled msg_namelen bytes of `from` (zeroed before).
    let from = unsafe { from.assume_init() };
    let peer = to_socket_addr(&from).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    let mut dst = None;
    // SAFETY: msg is the header recvmsg filled; the CMSG_ macros walk only
    // within msg_controllen, and each payload is read unaligned at its size.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((peer, dst))
}

/// `sendmsg` to `to`, from source address `from` when known.
fn send_from(fd: RawFd, data: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<usize> {
    let (name, namelen) = from_socket_addr(to);
    let mut cmsg = Cmsg([0; 128]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw const name).cast_mut().cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    // The source goes in a pktinfo control message of the socket's family.
    let info_len = match (to, from) {
        (SocketAddr::V4(_), Some(IpAddr::V4(_))) => mem::size_of::<libc::in_pktinfo>(),
        (SocketAddr::V6(_), Some(IpAddr::V6(_))) => mem::size_of::<libc::in6_pktinfo>(),
        _ => 0,
    };
    if info_len > 0 {
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(info_len as u32) } as usize;
        // SAFETY: msg_control points at `cmsg`, which is larger than
        // CMSG_SPACE(info_len) and aligned for cmsghdr; the payload is
        // written unaligned at its own size.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_len = libc::CMSG_LEN(info_len as u32) as usize;
            match from {
                Some(IpAddr::V4(a)) => {
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(a).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                }
                Some(IpAddr::V6(a)) => {
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                }
                None => unreachable!("info_len is 0 without a source"),
            }
        }
    }
    // SAFETY: every pointer in msg points at a live buffer of the stated length.
    let n = unsafe { libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa = socket2::SockAddr::from(a);
    // SAFETY: SockAddr's storage is a sockaddr_storage of length sa.len().
    let storage = unsafe { *sa.as_ptr().cast::<libc::sockaddr_storage>() };
    (storage, sa.len())
}
