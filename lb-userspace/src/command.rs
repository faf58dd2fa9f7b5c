//! What the control API asks of the data-plane owner: typed commands that
//! change the desired configuration, queries, and the owner's typed
//! errors. The contract between the two: the API imports it, the owner
//! implements it, and neither imports the other.

use std::net::{IpAddr, SocketAddr};

use tokio::sync::oneshot;

pub use crate::preview::ApplyReport;
use crate::{
    config::{BackendConfig, Config, Protocol, VipConfig},
    model::VipAddr,
    stats::{Event, FlowAnswer, StatsReport},
};

/// What kind of failure an [`OwnerError`] is: the API answers with the
/// status that fits, without reading the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value the configuration or the tables cannot take (400).
    Invalid,
    /// The VIP or backend named does not exist (404).
    NotFound,
    /// What is to be added exists already (409).
    Conflict,
    /// The kernel refused a map write, or the state file could not be
    /// saved (500): the change is not made.
    Failed,
}

/// Why a request was not done, for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OwnerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OwnerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        OwnerError {
            kind,
            message: message.into(),
        }
    }
}

/// A change to the desired configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    AddVip(VipConfig),
    RemoveVip(VipAddr),
    AddBackend {
        vip: VipAddr,
        backend: BackendConfig,
    },
    RemoveBackend {
        vip: VipAddr,
        address: IpAddr,
    },
    SetWeight {
        vip: VipAddr,
        address: IpAddr,
        weight: u32,
    },
    SetDrain {
        vip: VipAddr,
        address: IpAddr,
        drain: bool,
    },
    /// These VIPs, backends and checks become the desired state, replacing
    /// all others (`hola apply`, SIGHUP).
    Apply(Vec<VipConfig>),
}

impl Command {
    /// Makes the change on `config` (the owner's copy of the desired
    /// state, validated afterwards as a whole).
    pub fn apply(self, config: &mut Config) -> Result<(), OwnerError> {
        match self {
            Command::AddVip(v) => {
                if config.vips.iter().any(|x| x.key() == v.key()) {
                    return Err(OwnerError::new(
                        ErrorKind::Conflict,
                        format!("VIP {} already exists", v.key()),
                    ));
                }
                config.vips.push(v);
            }
            Command::RemoveVip(vip) => {
                find_vip(config, vip)?;
                config.vips.retain(|x| x.key() != vip);
            }
            Command::AddBackend { vip, backend } => {
                let v = find_vip(config, vip)?;
                if v.backends.iter().any(|b| b.address == backend.address) {
                    return Err(OwnerError::new(
                        ErrorKind::Conflict,
                        format!("backend {} is already in VIP {vip}", backend.address),
                    ));
                }
                v.backends.push(backend);
            }
            Command::RemoveBackend { vip, address } => {
                let v = find_vip(config, vip)?;
                find_backend(v, vip, address)?;
                v.backends.retain(|b| b.address != address);
            }
            Command::SetWeight {
                vip,
                address,
                weight,
            } => find_backend(find_vip(config, vip)?, vip, address)?.weight = weight,
            Command::SetDrain {
                vip,
                address,
                drain,
            } => find_backend(find_vip(config, vip)?, vip, address)?.drain = drain,
            Command::Apply(vips) => config.vips = vips,
        }
        Ok(())
    }

    /// The backends whose next hops the change needs (its answer waits
    /// for them, as long as they take to resolve, up to a bound).
    pub fn new_backends(&self) -> Vec<IpAddr> {
        match self {
            Command::AddVip(v) => v.backends.iter().map(|b| b.address).collect(),
            Command::AddBackend { backend, .. } => vec![backend.address],
            Command::Apply(vips) => vips
                .iter()
                .flat_map(|v| v.backends.iter().map(|b| b.address))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn find_vip(c: &mut Config, vip: VipAddr) -> Result<&mut VipConfig, OwnerError> {
    c.vips
        .iter_mut()
        .find(|x| x.key() == vip)
        .ok_or_else(|| OwnerError::new(ErrorKind::NotFound, format!("VIP {vip} does not exist")))
}

fn find_backend(
    vip: &mut VipConfig,
    key: VipAddr,
    address: IpAddr,
) -> Result<&mut BackendConfig, OwnerError> {
    vip.backends
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| {
            OwnerError::new(
                ErrorKind::NotFound,
                format!("backend {address} is not in VIP {key}"),
            )
        })
}

/// A request to the owner, with where its answer goes.
#[derive(Debug)]
pub enum Request {
    Change(Box<Command>, oneshot::Sender<Result<(), OwnerError>>),
    /// `Command::Apply` of `vips`, or with `dry_run` only its preview.
    Apply {
        file: String,
        vips: Vec<VipConfig>,
        dry_run: bool,
        reply: oneshot::Sender<Result<ApplyReport, OwnerError>>,
    },
    Config(oneshot::Sender<Config>),
    Stats(oneshot::Sender<Result<StatsReport, OwnerError>>),
    Events(oneshot::Sender<Vec<Event>>),
    Flow {
        src: SocketAddr,
        dst: SocketAddr,
        proto: Protocol,
        reply: oneshot::Sender<Result<FlowAnswer, OwnerError>>,
    },
    /// Answered once the next hops of the configuration's backends are
    /// resolved, or after a bound: the daemon opens its control socket
    /// then, so the first request finds a forwarding data plane.
    Ready(oneshot::Sender<()>),
    /// `hola node drain` (true) and `undrain`: withdraw every VIP from BGP
    /// while forwarding what still arrives.
    Drain(bool, oneshot::Sender<Result<(), OwnerError>>),
    /// `hola trace`: answered once the filter is on; the traced packets,
    /// then how the trace ended, go to `out`. Dropping `out`'s receiver
    /// ends the trace.
    Trace {
        spec: crate::trace::TraceSpec,
        out: tokio::sync::mpsc::Sender<crate::trace::TraceLine>,
        reply: oneshot::Sender<Result<(), OwnerError>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::parse(
            "[global]\ninterfaces = [\"eth0\"]\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n",
            "test",
        )
        .expect("config")
    }

    #[test]
    fn commands_change_the_config_or_say_what_is_missing_or_there() {
        let mut c = config();
        let vip = c.vips[0].key();
        let b11: IpAddr = "198.18.0.11".parse().expect("ip");
        let b12: IpAddr = "198.18.0.12".parse().expect("ip");
        let other = VipAddr { port: 81, ..vip };
        Command::SetWeight {
            vip,
            address: b11,
            weight: 7,
        }
        .apply(&mut c)
        .expect("weight");
        assert_eq!(c.vips[0].backends[0].weight, 7);
        let e = Command::SetDrain {
            vip,
            address: b12,
            drain: true,
        }
        .apply(&mut c)
        .expect_err("no such backend");
        assert_eq!(
            e,
            OwnerError::new(
                ErrorKind::NotFound,
                "backend 198.18.0.12 is not in VIP 198.18.1.1:80/tcp"
            )
        );
        let e = Command::RemoveVip(other).apply(&mut c).expect_err("no VIP");
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "VIP 198.18.1.1:81/tcp does not exist")
        );
        let backend = c.vips[0].backends[0].clone();
        let e = Command::AddBackend { vip, backend }
            .apply(&mut c)
            .expect_err("there");
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ErrorKind::Conflict,
                "backend 198.18.0.11 is already in VIP 198.18.1.1:80/tcp"
            )
        );
        let v = c.vips[0].clone();
        let e = Command::AddVip(v).apply(&mut c).expect_err("there");
        assert_eq!(e.message, "VIP 198.18.1.1:80/tcp already exists");
        Command::RemoveBackend { vip, address: b11 }
            .apply(&mut c)
            .expect("removed");
        assert!(c.vips[0].backends.is_empty());
        Command::RemoveVip(vip).apply(&mut c).expect("removed");
        assert!(c.vips.is_empty());
    }
}
