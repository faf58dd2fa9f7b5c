//! `hola flow`: which backend a 5-tuple goes to and why, as the program
//! would decide it: its flow-table entry, a cluster peer's entry, or its
//! Maglev slot.

use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};

use super::{ErrorKind, Owner, OwnerError};
use crate::{
    config::Protocol,
    model::{Proto, addr_bytes},
    stats::FlowAnswer,
};

impl Owner {
    pub(super) fn flow(
        &self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        proto: Protocol,
    ) -> Result<FlowAnswer, OwnerError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(OwnerError::new(
                ErrorKind::Invalid,
                format!("{src} and {dst} are of different address families"),
            ));
        }
        let p = Proto::from(proto);
        let vip = self
            .config
            .vips
            .iter()
            .map(|v| v.key())
            .filter(|v| v.addr == dst.ip() && v.proto == p)
            .max_by_key(|v| v.port == dst.port())
            .filter(|v| v.port == dst.port() || v.port == 0)
            .ok_or_else(|| OwnerError::new(ErrorKind::NotFound, format!("no VIP for {dst}/{p}")))?;
        let (s, family) = addr_bytes(src.ip());
        let (d, _) = addr_bytes(dst.ip());
        let key = FlowKey {
            src: s,
            dst: d,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            proto: if p == Proto::Tcp {
                PROTO_TCP
            } else {
                PROTO_UDP
            },
            family: if family == FAMILY_V4 {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
            _pad: [0; 2],
        };
        if let Some(entry) = self.dp.flow_entry(&key)
            && let Some(b) = self.dp.backend_by_id(&vip, entry.backend_id)
        {
            return Ok(FlowAnswer {
                vip: vip.to_string(),
                backend: Some(b.to_string()),
                reason: "flow-table entry".into(),
            });
        }
        // As the program: a flow learned from a cluster peer, when replication is on.
        if self
            .cluster
            .as_ref()
            .is_some_and(|(c, _)| c.settings.replicate)
            && let Some(entry) = self.dp.peer_flow(&key)
            && let Some(b) = self.dp.backend_by_id(&vip, entry.backend_id)
        {
            return Ok(FlowAnswer {
                vip: vip.to_string(),
                backend: Some(b.to_string()),
                reason: "learned from a cluster peer (PEER_FLOWS)".into(),
            });
        }
        let (slot, backend) = self.dp.maglev_slot(&vip, &key).ok_or_else(|| {
            OwnerError::new(ErrorKind::NotFound, format!("VIP {vip} is not programmed"))
        })?;
        Ok(FlowAnswer {
            vip: vip.to_string(),
            backend: backend.map(|b| b.to_string()),
            reason: match backend {
                Some(_) => format!("Maglev slot {slot} (new flow)"),
                None => {
                    format!("Maglev slot {slot} is empty: the VIP has no backend with weight > 0")
                }
            },
        })
    }
}
