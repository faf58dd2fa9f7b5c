//! The egress interfaces' MTUs, for tunnel "too big" (`EGRESS_MTU`,
//! `EGRESS_MTU_MIN`): every interface in `TX_PORTS` (the ones hola is
//! attached to and every egress a backend's next hop names), read with
//! `SIOCGIFMTU` in the daemon's network namespace. The owner thread calls
//! [`Dataplane::refresh_egress_mtus`] every second, so an MTU change is
//! followed within a second.

use aya::maps::{Array, HashMap};
use lb_common::maps as names;

use super::{Dataplane, DataplaneError, map_err};

/// The smallest MTU written: IPv4's minimum datagram every host takes
/// (RFC 791). An interface with a smaller MTU is not checked (the program
/// quotes 512 bytes of the packet it answers, and needs that many).
pub const MIN_CHECKED_MTU: u32 = 576;

impl Dataplane {
    /// Re-reads the MTU of every interface in `TX_PORTS` and writes what
    /// changed to `EGRESS_MTU` (and the smallest to `EGRESS_MTU_MIN`).
    /// Returns the MTUs now in the map, by ifindex.
    pub fn refresh_egress_mtus(&mut self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        let ifindexes: Vec<u32> = self
            .tx_ports
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::TX_PORTS))?;
        let mut now: Vec<(u32, u32)> = ifindexes
            .into_iter()
            .filter_map(|i| interface_mtu(i).map(|m| (i, m)))
            .filter(|(_, m)| *m >= MIN_CHECKED_MTU)
            .collect();
        now.sort_unstable();
        self.set_egress_mtus(&now)?;
        Ok(now)
    }

    /// Writes `mtus` (ifindex, MTU) as the whole of `EGRESS_MTU`: entries
    /// not in it are removed, and `EGRESS_MTU_MIN` is their smallest (0:
    /// none, nothing is checked). The minimum goes first when it falls and
    /// last when it rises, so the program never skips a check it needs.
    pub fn set_egress_mtus(&mut self, mtus: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let min = mtus.iter().map(|&(_, m)| m).min().unwrap_or(0);
        let old_min = self.egress_min()?;
        if min < old_min || old_min == 0 {
            self.write_egress_min(min)?;
        }
        let map = self
            .ebpf_mut()
            .map_mut(names::EGRESS_MTU)
            .ok_or(DataplaneError::MissingMap(names::EGRESS_MTU))?;
        let mut map: HashMap<_, u32, u32> =
            HashMap::try_from(map).map_err(map_err(names::EGRESS_MTU))?;
        let old: Vec<(u32, u32)> = map
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::EGRESS_MTU))?;
        for (i, m) in mtus {
            if !old.contains(&(*i, *m)) {
                map.insert(i, m, 0).map_err(map_err(names::EGRESS_MTU))?;
            }
        }
        for (i, _) in old {
            if !mtus.iter().any(|(j, _)| *j == i) {
                super::ignore_missing(map.remove(&i)).map_err(map_err(names::EGRESS_MTU))?;
            }
        }
        if min != old_min {
            self.write_egress_min(min)?;
        }
        Ok(())
    }

    fn egress_min_map(&mut self) -> Result<Array<&mut aya::maps::MapData, u32>, DataplaneError> {
        let map = self
            .ebpf_mut()
            .map_mut(names::EGRESS_MTU_MIN)
            .ok_or(DataplaneError::MissingMap(names::EGRESS_MTU_MIN))?;
        Array::try_from(map).map_err(map_err(names::EGRESS_MTU_MIN))
    }

    fn egress_min(&mut self) -> Result<u32, DataplaneError> {
        self.egress_min_map()?
            .get(&0, 0)
            .map_err(map_err(names::EGRESS_MTU_MIN))
    }

    fn write_egress_min(&mut self, min: u32) -> Result<(), DataplaneError> {
        self.egress_min_map()?
            .set(0, min, 0)
            .map_err(map_err(names::EGRESS_MTU_MIN))
    }
}

/// The MTU of interface `ifindex` in this thread's network namespace
/// (None: it is gone).
pub fn interface_mtu(ifindex: u32) -> Option<u32> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return None;
    }
    // SAFETY: a plain socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a zeroed ifreq is valid; the name is NUL-terminated within
    // IF_NAMESIZE bytes (if_indextoname wrote it).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of our ifreq.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) };
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU succeeded and set the union's mtu member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}
