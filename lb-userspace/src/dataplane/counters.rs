//! The per-CPU counters, summed: reasons, and per VIP and backend. An
//! established forward is counted by its backend alone (one counter write
//! per packet): a VIP's packets and bytes and the `fwd_established` reason
//! are derived here from the backends' counters, the removed backends'
//! (`RETIRED`, and markers not folded yet: `retire.rs`) included, so that
//! they read as if the program counted them itself.

use lb_common::{HandshakeStats, Reason, ReasonStats, maps as names};

use super::{Dataplane, DataplaneError, Stats, VipCounters, map_err, retire::Parts};

impl Dataplane {
    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, DataplaneError> {
        let mut out = Stats::default();
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::REASONS))?;
            let mut sum = ReasonStats::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            out.reasons.insert(r.name(), sum);
        }
        // What backends forwarded as established beyond what `REASONS`
        // holds itself (a build before this one's counts): removed ones'
        // folded, marked and live ones'.
        let mut established = Parts::default();
        for r in &self.retired_copy {
            established.established_packets += r.established_packets;
            established.established_bytes += r.established_bytes;
        }
        let mut marked = Vec::with_capacity(self.retired_ids.len());
        for (&id, &vip_id) in &self.retired_ids {
            let p = Parts::of(&self.backend_sum(id)?);
            established.add(&p);
            marked.push((vip_id, p));
        }
        for v in self.tables.vips() {
            let per_cpu = self
                .vip_stats
                .get(&v.id, 0)
                .map_err(map_err(names::VIP_STATS))?;
            let mut c = VipCounters::default();
            for s in per_cpu.iter() {
                c.stats.packets += s.packets;
                c.stats.bytes += s.bytes;
                c.stats.new_flows += s.new_flows;
                c.stats.no_backend += s.no_backend;
            }
            // Its own counts (packets that reached no backend), its
            // backends', and its removed backends'.
            let mut own = Parts::default();
            if let Some(r) = self.retired_copy.get(v.id as usize) {
                own.vip_packets += r.vip_packets;
                own.vip_bytes += r.vip_bytes;
            }
            for (_, p) in marked.iter().filter(|(vip_id, _)| *vip_id == v.id) {
                own.vip_packets += p.vip_packets;
                own.vip_bytes += p.vip_bytes;
            }
            for b in &v.backends {
                let sum = self.backend_sum(b.id)?;
                let p = Parts::of(&sum);
                own.vip_packets += p.vip_packets;
                own.vip_bytes += p.vip_bytes;
                established.established_packets += p.established_packets;
                established.established_bytes += p.established_bytes;
                c.backends.insert(b.spec.addr, sum);
                if v.spec.mode.is_nat() {
                    let per_cpu = self
                        .handshakes
                        .get(&b.id, 0)
                        .map_err(map_err(names::HANDSHAKES))?;
                    let mut h = HandshakeStats::default();
                    for s in per_cpu.iter() {
                        for (t, x) in h.buckets.iter_mut().zip(s.buckets) {
                            *t += x;
                        }
                        h.syn_acks += s.syn_acks;
                        h.rsts += s.rsts;
                    }
                    c.handshakes.insert(b.spec.addr, h);
                }
            }
            c.stats.packets += own.vip_packets;
            c.stats.bytes += own.vip_bytes;
            out.vips.insert(v.spec.vip, c);
        }
        // Backends of no VIP in the copy (a VIP removed, its backends
        // folded into `RETIRED` already) are counted above; the live
        // backends of VIPs the copy lists are all there.
        if let Some(e) = out.reasons.get_mut(Reason::FwdEstablished.name()) {
            e.packets += established.established_packets;
            e.bytes += established.established_bytes;
        }
        Ok(out)
    }
}
