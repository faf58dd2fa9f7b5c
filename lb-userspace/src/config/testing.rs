//! Configurations for unit tests elsewhere in the crate.

use super::{
    AgentConfig, BackendConfig, CheckKind, Config, HashKind, HealthConfig, Protocol, VipConfig,
    VipMode,
};

/// VIP 198.18.1.1:80/tcp in dsr mode with a TCP health check and an agent
/// on port 9999, over backends (address, weight, backup).
pub(crate) fn vip(backends: &[(&str, u32, bool)]) -> VipConfig {
    VipConfig {
        address: "198.18.1.1".parse().expect("ip"),
        port: 80,
        protocol: Protocol::Tcp,
        mode: VipMode::Dsr,
        hash: HashKind::FiveTuple,
        table_size: None,
        quic: false,
        health: Some(HealthConfig::new(CheckKind::Tcp)),
        agent: Some(AgentConfig::new(9999)),
        outlier: None,
        backends: backends
            .iter()
            .map(|(a, w, backup)| BackendConfig {
                address: a.parse().expect("ip"),
                weight: *w,
                backup: *backup,
                interface: None,
                port: None,
                server_id: None,
                drain: false,
                health: None,
                agent: None,
            })
            .collect(),
    }
}

/// A minimal valid configuration with these VIPs.
pub(crate) fn config_with(vips: Vec<VipConfig>) -> Config {
    let mut c = super::parse("[global]\ninterfaces = [\"eth0\"]\n", "t").expect("config");
    c.vips = vips;
    c
}
