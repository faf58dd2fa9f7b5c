//! The lenient reader of the `[cluster]` table (see `raw` for why the
//! `Raw*` types exist): every field optional, converted into a
//! [`ClusterConfig`] with each unreadable value reported by the [`Sink`].

use std::path::PathBuf;

use serde::Deserialize;

use super::ClusterConfig;
use super::defaults::*;
use super::error::Sink;
use super::raw::{parse_or, parse_some};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    id: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
    node: Option<String>,
    interface: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    multicast: Option<bool>,
    group: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    announce_interval: Option<String>,
    peer_timeout: Option<String>,
    queue: Option<i64>,
    peer_flow_capacity: Option<i64>,
    replicate: Option<bool>,
}

impl RawCluster {
    pub(super) fn convert(self, sink: &mut Sink<'_>) -> ClusterConfig {
        let id = sink.required("cluster.id", self.id, String::new(), "id = \"prod-a\"");
        let port = sink.int("cluster.port", self.port, CLUSTER_PORT, PORT_RANGE);
        let address = sink.parsed(
            "cluster.address",
            self.address,
            None,
            parse_some(String::from("not an IP address, e.g. \"198.18.0.2\"")),
        );
        let group = sink.parsed(
            "cluster.group",
            self.group,
            CLUSTER_GROUP,
            parse_or(format!(
                "not an IPv4 multicast address, e.g. \"{CLUSTER_GROUP}\""
            )),
        );
        let announce_interval = sink
            .duration("cluster.announce_interval", self.announce_interval)
            .unwrap_or(ANNOUNCE_INTERVAL);
        let peer_timeout = sink
            .duration("cluster.peer_timeout", self.peer_timeout)
            .unwrap_or(PEER_TIMEOUT);
        let queue = sink.int(
            "cluster.queue",
            self.queue,
            CLUSTER_QUEUE,
            CLUSTER_QUEUE_RANGE,
        );
        // A value no `u32` holds is reported here and replaced by one in
        // range, so it is not reported twice.
        let peer_flow_capacity = self.peer_flow_capacity.map(|v| {
            sink.int(
                "cluster.peer_flow_capacity",
                Some(v),
                PEER_FLOW_CAPACITY_RANGE.lo,
                PEER_FLOW_CAPACITY_RANGE,
            )
        });
        ClusterConfig {
            id,
            key: self.key,
            key_file: self.key_file.map(PathBuf::from),
            node: self.node,
            interface: self.interface,
            address,
            port,
            multicast: self.multicast.unwrap_or(CLUSTER_MULTICAST),
            group,
            peers: self.peers,
            announce_interval,
            peer_timeout,
            queue,
            peer_flow_capacity,
            replicate: self.replicate.unwrap_or(CLUSTER_REPLICATE),
        }
    }
}
