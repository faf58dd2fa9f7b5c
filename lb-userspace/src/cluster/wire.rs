//! What balancer peers say to each other: multicast announcements and the
//! replication stream, both authenticated with the cluster's shared key
//! (HMAC-SHA256), both encoded with postcard (compact, serde).
//!
//! Announcement (UDP): `postcard(Announce) ‖ HMAC(key, postcard(Announce))`.
//!
//! Replication (TCP), each frame a big-endian u32 length and a postcard
//! `Msg` ([`MsgCodec`], at most [`MAX_FRAME`] bytes; a `Batch` holds at
//! most [`BATCH`] entries). The listening side speaks first: `Challenge { nonce }`; the
//! dialling side answers `Hello { cluster, node, proof }` where `proof` is
//! the HMAC of the nonce, the cluster id and the node name, and a nonce of
//! its own; the listener answers `Welcome` with its proof for that nonce
//! (both sides show they hold the key), or `Reject` and closes. After
//! `Welcome` only the
//! dialling side sends: its snapshot (`Batch`es, then `SnapshotDone`), then
//! a `Batch` whenever it has new entries. Each node dials every peer, so
//! every connection carries one node's entries one way.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use lb_common::FlowKey;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::dataplane::{Proto, VipAddr};

/// First bytes of every announcement, so that stray datagrams on the port
/// are told apart from announcements with a wrong key.
pub const MAGIC: u32 = 0x686f_6c61; // "hola"
/// Bumped when messages change incompatibly; peers of another version are
/// ignored (and logged).
pub const VERSION: u8 = 1;
/// Most entries in one `Batch`: the sender splits into batches of this
/// many, and a receiver refuses a larger one, so that what waits for the
/// data-plane owner is bounded by batches, not bytes.
pub const BATCH: usize = 1024;
/// Largest frame sent or accepted on a replication connection (before the
/// handshake too: what an unauthenticated dialler can make a node buffer).
/// A `Batch` of [`BATCH`] of the largest entries takes about 140 KiB
/// (`tests::a_full_batch_of_the_largest_entries_fits_a_frame`).
pub const MAX_FRAME: usize = 1 << 20;
/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A node telling its cluster it is alive and where to send it entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub magic: u32,
    pub version: u8,
    pub cluster: String,
    pub node: String,
    /// Where the node accepts replication connections.
    pub replication: SocketAddr,
    /// The sender's wall clock (ms since the epoch): announcements older or
    /// newer than the replay window are ignored.
    pub time_ms: u64,
}

/// A VIP as it travels: the same on every node with the same configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl WireVip {
    pub fn from_vip(v: &VipAddr) -> Self {
        WireVip {
            addr: v.addr,
            port: v.port,
            proto: v.proto.number(),
        }
    }

    /// The local VIP, or `None` for a protocol this build does not know.
    pub fn to_vip(self) -> Option<VipAddr> {
        let proto = match self.proto {
            p if p == Proto::Tcp.number() => Proto::Tcp,
            p if p == Proto::Udp.number() => Proto::Udp,
            _ => return None,
        };
        Some(VipAddr {
            addr: self.addr,
            port: self.port,
            proto,
        })
    }
}

/// A flow-table key as it travels (ports in network order, as in the map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
}

impl From<&FlowKey> for WireKey {
    fn from(k: &FlowKey) -> Self {
        WireKey {
            src: k.src,
            dst: k.dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            family: k.family,
        }
    }
}

impl From<&WireKey> for FlowKey {
    fn from(k: &WireKey) -> Self {
        FlowKey {
            src: k.src,
            dst: k.dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            family: k.family,
            _pad: [0; 2],
        }
    }
}

/// The node-independent part of a NAT translation: what the receiving
/// node needs to translate the flow's replies back as the sender would.
/// Its own MAC and interface, and the backend's id, it fills in itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireNat {
    pub vip_addr: [u8; 16],
    pub vip_port: u16,
    pub flags: u16,
    /// Where the flow's requests came from (the client's or the router's
    /// MAC): the replies' destination MAC.
    pub dmac: [u8; 6],
    /// How long ago the sender saw the flow's last packet.
    pub idle_ms: u64,
    /// Whether the sender saw FIN or RST.
    pub closed: bool,
    pub client_addr: [u8; 16],
    pub client_port: u16,
}

/// One replicated change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A flow the sender created: its 5-tuple goes to `backend` of `vip`.
    Flow {
        vip: WireVip,
        key: WireKey,
        backend: IpAddr,
        hash: u32,
    },
    /// A NAT translation the sender created or refreshed, keyed by the
    /// reply's 5-tuple.
    Nat {
        vip: WireVip,
        reply: WireKey,
        backend: IpAddr,
        nat: WireNat,
    },
    /// A NAT translation the sender removed (expired).
    NatGone { reply: WireKey },
}

/// A frame of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Challenge {
        version: u8,
        nonce: [u8; 32],
    },
    Hello {
        version: u8,
        cluster: String,
        node: String,
        proof: [u8; TAG_LEN],
        /// The dialling side's challenge to the listener.
        nonce: [u8; 32],
    },
    /// The listener's answer, with its proof of the key for the dialling
    /// side's nonce: entries go only to a peer that holds the key.
    Welcome {
        node: String,
        proof: [u8; TAG_LEN],
    },
    Reject {
        reason: String,
    },
    /// Entries, with the sender's wall clock when it sent them (for lag).
    Batch {
        sent_ms: u64,
        entries: Vec<Entry>,
    },
    /// The end of the snapshot a connection starts with.
    SnapshotDone {
        entries: u64,
    },
}

fn mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// `bytes` with its tag appended.
pub fn seal_announce(a: &Announce, key: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_allocvec(a).expect("an announcement always encodes");
    let mut m = mac(key);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

/// Why an announcement was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("not a hola announcement")]
    NotOurs,
    #[error("authentication failed (a different cluster key?)")]
    BadTag,
    #[error("protocol version {0}, this node speaks {VERSION}")]
    Version(u8),
}

/// Checks the tag and decodes. A datagram that does not even decode is
/// `NotOurs`; one that decodes with a wrong tag is `BadTag`.
pub fn open_announce(datagram: &[u8], key: &[u8]) -> Result<Announce, AnnounceError> {
    if datagram.len() <= TAG_LEN {
        return Err(AnnounceError::NotOurs);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let a: Announce = postcard::from_bytes(body).map_err(|_| AnnounceError::NotOurs)?;
    if a.magic != MAGIC {
        return Err(AnnounceError::NotOurs);
    }
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| AnnounceError::BadTag)?;
    if a.version != VERSION {
        return Err(AnnounceError::Version(a.version));
    }
    Ok(a)
}

/// The HMAC a node proves the key with: over `nonce` (the other side's
/// challenge), the cluster id and the node's own name.
fn proof_mac(key: &[u8], nonce: &[u8; 32], cluster: &str, node: &str) -> HmacSha256 {
    let mut m = mac(key);
    m.update(b"hola replication v1\0");
    m.update(nonce);
    m.update(cluster.as_bytes());
    m.update(b"\0");
    m.update(node.as_bytes());
    m
}

/// The proof a node gives for the other side's `nonce`.
pub fn proof(key: &[u8], nonce: &[u8; 32], cluster: &str, node: &str) -> [u8; TAG_LEN] {
    proof_mac(key, nonce, cluster, node)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is right for `nonce` (compared in constant time).
pub fn check_proof(
    key: &[u8],
    nonce: &[u8; 32],
    cluster: &str,
    node: &str,
    proof: &[u8; TAG_LEN],
) -> bool {
    proof_mac(key, nonce, cluster, node)
        .verify_slice(proof)
        .is_ok()
}

/// Why a replication frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The length a frame announced, or a message's encoding, is over
    /// [`MAX_FRAME`].
    #[error("a frame over the limit of {MAX_FRAME} bytes")]
    TooLong,
    #[error("a frame that is not a replication message: {0}")]
    Decode(#[from] postcard::Error),
}

/// The replication stream's frames (`LengthDelimitedCodec`'s default: a
/// big-endian u32 length, then that many bytes) carrying postcard
/// [`Msg`]s, at most [`MAX_FRAME`] bytes each.
pub struct MsgCodec(LengthDelimitedCodec);

impl MsgCodec {
    pub fn new() -> Self {
        MsgCodec(
            LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec(),
        )
    }
}

impl Default for MsgCodec {
    fn default() -> Self {
        Self::new()
    }
}

/// The codec reports an oversized frame as an `io::Error` around its own
/// error type; it gets its own variant here, to say what happened.
fn frame_error(e: std::io::Error) -> FrameError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
    {
        FrameError::TooLong
    } else {
        FrameError::Io(e)
    }
}

impl Decoder for MsgCodec {
    type Item = Msg;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, FrameError> {
        match self.0.decode(src).map_err(frame_error)? {
            Some(body) => Ok(Some(postcard::from_bytes(&body)?)),
            None => Ok(None),
        }
    }
}

impl Encoder<&Msg> for MsgCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: &Msg, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = postcard::to_allocvec(msg).expect("a message always encodes");
        self.0.encode(Bytes::from(body), dst).map_err(frame_error)
    }
}

/// 32 random bytes from the kernel.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    let mut filled = 0;
    while filled < n.len() {
        // SAFETY: the pointer and length describe the unfilled part of `n`.
        let r = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), n.len() - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce() -> Announce {
        Announce {
            magic: MAGIC,
            version: VERSION,
            cluster: "lab".into(),
            node: "lb1".into(),
            replication: "198.18.0.2:7947".parse().expect("literal"),
            time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn announcements_open_with_the_right_key_only() {
        let a = announce();
        let d = seal_announce(&a, b"right key, long enough");
        assert_eq!(open_announce(&d, b"right key, long enough"), Ok(a));
        assert_eq!(
            open_announce(&d, b"wrong key, long enough"),
            Err(AnnounceError::BadTag)
        );
        let mut flipped = d.clone();
        flipped[3] ^= 1;
        assert!(open_announce(&flipped, b"right key, long enough").is_err());
        assert_eq!(open_announce(b"hello", b"k"), Err(AnnounceError::NotOurs));
        assert_eq!(open_announce(&[], b"k"), Err(AnnounceError::NotOurs));
    }

    #[test]
    fn proofs_bind_nonce_cluster_and_node() {
        let n = nonce();
        let p = proof(b"key", &n, "lab", "lb1");
        assert!(check_proof(b"key", &n, "lab", "lb1", &p));
        assert!(!check_proof(b"other", &n, "lab", "lb1", &p));
        assert!(!check_proof(b"key", &n, "lab", "lb2", &p));
        assert!(!check_proof(b"key", &n, "lab2", "lb1", &p));
        assert!(!check_proof(b"key", &nonce(), "lab", "lb1", &p));
    }

    #[test]
    fn frames_round_trip() {
        let m = Msg::Batch {
            sent_ms: 5,
            entries: vec![
                Entry::Flow {
                    vip: WireVip {
                        addr: "198.18.1.1".parse().expect("literal"),
                        port: 80,
                        proto: 6,
                    },
                    key: WireKey {
                        src: [1; 16],
                        dst: [2; 16],
                        sport: 3,
                        dport: 4,
                        proto: 6,
                        family: 4,
                    },
                    backend: "198.18.0.11".parse().expect("literal"),
                    hash: 7,
                },
                Entry::NatGone {
                    reply: WireKey {
                        src: [0; 16],
                        dst: [9; 16],
                        sport: 1,
                        dport: 2,
                        proto: 17,
                        family: 6,
                    },
                },
            ],
        };
        let mut f = BytesMut::new();
        MsgCodec::new().encode(&m, &mut f).expect("encodes");
        let len = u32::from_be_bytes(f[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, f.len() - 4);
        assert_eq!(postcard::from_bytes::<Msg>(&f[4..]).expect("decodes"), m);
        // Through the decoder, arriving in two pieces: nothing until the
        // whole frame is there, then the message, and nothing left over.
        let mut dec = MsgCodec::new();
        let rest = f.split_off(f.len() / 2);
        assert!(dec.decode(&mut f).expect("half a frame").is_none());
        f.unsplit(rest);
        assert_eq!(dec.decode(&mut f).expect("a frame"), Some(m));
        assert!(f.is_empty());
    }

    /// The largest entry there is: IPv6 everywhere, every number at its
    /// longest encoding.
    fn largest_nat() -> Entry {
        let key = WireKey {
            src: [0xff; 16],
            dst: [0xff; 16],
            sport: u16::MAX,
            dport: u16::MAX,
            proto: u8::MAX,
            family: u8::MAX,
        };
        let vip = WireVip {
            addr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse()
                .expect("literal"),
            port: u16::MAX,
            proto: u8::MAX,
        };
        Entry::Nat {
            vip,
            reply: key,
            backend: vip.addr,
            nat: WireNat {
                vip_addr: [0xff; 16],
                vip_port: u16::MAX,
                flags: u16::MAX,
                dmac: [0xff; 6],
                idle_ms: u64::MAX,
                closed: true,
                client_addr: [0xff; 16],
                client_port: u16::MAX,
            },
        }
    }

    #[test]
    fn a_full_batch_of_the_largest_entries_fits_a_frame() {
        let m = Msg::Batch {
            sent_ms: u64::MAX,
            entries: vec![largest_nat(); BATCH],
        };
        let mut f = BytesMut::new();
        MsgCodec::new()
            .encode(&m, &mut f)
            .expect("a full batch encodes");
        // A margin of more than 4 times, should entries grow.
        assert!(
            f.len() * 4 < MAX_FRAME,
            "a full batch takes {} bytes",
            f.len()
        );
    }

    #[test]
    fn frames_over_the_limit_are_refused_both_ways() {
        let mut head = BytesMut::from(&((MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        assert!(matches!(
            MsgCodec::new().decode(&mut head),
            Err(FrameError::TooLong)
        ));
        let mut at_limit = BytesMut::from(&(MAX_FRAME as u32).to_be_bytes()[..]);
        assert!(
            MsgCodec::new()
                .decode(&mut at_limit)
                .expect("a frame of MAX_FRAME bytes is allowed")
                .is_none()
        );
        let huge = Msg::Reject {
            reason: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(
            MsgCodec::new().encode(&huge, &mut BytesMut::new()),
            Err(FrameError::TooLong)
        ));
    }

    #[test]
    fn a_frame_that_is_not_a_message_is_refused() {
        let mut f = BytesMut::from(&[0, 0, 0, 1, 0xff][..]);
        assert!(matches!(
            MsgCodec::new().decode(&mut f),
            Err(FrameError::Decode(_))
        ));
    }
}
