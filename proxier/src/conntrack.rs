//! UDP conntrack cleanup over ctnetlink, as upstream's reconciler does it
//! (`pkg/proxy/conntrack/cleanup.go`): after a sync, one dump of the family's UDP flows, each
//! judged by [`rulegen::sync::conntrack::Lookup::is_stale`], then one deletion per stale flow — O(flows)
//! and a single pass over the table, with no `conntrack` binary.
//!
//! The socket is a blocking `NETLINK_NETFILTER` one opened by each call, so everything acts on
//! the network namespace of the calling thread (the agent calls from `spawn_blocking`).
//!
//! - The dump asks the kernel for UDP flows only (`CTA_FILTER`, Linux 5.8+; an older kernel
//!   returns every flow of the family and they are filtered here), and keeps only the stale
//!   ones in memory.
//! - A deletion names the flow by its original tuple, zone and `CTA_ID`, so a newer flow that
//!   reuses the tuple is spared. Deletions go [`WINDOW`] to a datagram with no acknowledgement
//!   asked but the last one's: success costs nothing to read, and each failure (a flow that
//!   expired meanwhile, `ENOENT`) comes back before that last acknowledgement.

mod codec;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use rulegen::IpFamily;
use rulegen::sync::conntrack::{Flow, Lookup};
use thiserror::Error;

pub use codec::ConntrackEntry;
use codec::{Reply, parse_datagram};

use crate::netlink::set_recv_timeout;

/// How many deletions go out in one datagram. Each failure the kernel reports takes about
/// 768 bytes of the socket's receive buffer until read, so a datagram whose every flow has
/// expired meanwhile still fits the default 208 KiB.
pub const WINDOW: usize = 128;

/// How long a request waits for the kernel's reply before failing, so that a kernel that never
/// answers cannot wedge the blocking thread for good.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The receive buffer asked for (the kernel caps it at twice `net.core.rmem_max`).
const RECV_BUFFER: usize = 1 << 20;

/// What one reconcile did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackReport {
    /// UDP flows of the family the dump returned.
    pub flows_seen: usize,
    /// How many of them were stale.
    pub flows_stale: usize,
    /// Stale flows deleted.
    pub flows_deleted: usize,
    /// Stale flows already gone when their deletion arrived (expired meanwhile, `ENOENT`).
    pub flows_gone: usize,
    /// How long the dump took.
    pub dump: Duration,
    /// How long the whole reconcile took.
    pub duration: Duration,
}

/// A ctnetlink request, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConntrackOp {
    /// `IPCTNL_MSG_CT_GET` dump of the table.
    Dump,
    /// `IPCTNL_MSG_CT_DELETE` of one flow.
    Delete,
}

impl fmt::Display for ConntrackOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConntrackOp::Dump => "IPCTNL_MSG_CT_GET dump",
            ConntrackOp::Delete => "IPCTNL_MSG_CT_DELETE",
        })
    }
}

/// Why a conntrack operation failed.
#[derive(Debug, Error)]
pub enum ConntrackError {
    /// The netlink socket failed, or the kernel did not answer in time.
    #[error("ctnetlink socket: {0}")]
    Socket(#[from] io::Error),
    /// The kernel refused the dump (`EPERM` without `CAP_NET_ADMIN`, …).
    #[error("{op}: {}", io::Error::from_raw_os_error(*errno))]
    Rejected {
        /// The request.
        op: ConntrackOp,
        /// The kernel's errno (positive).
        errno: i32,
    },
    /// Some deletions failed for another reason than the flow being gone already; every other
    /// stale flow was still deleted.
    #[error(
        "{failed} of {stale} stale conntrack flows could not be deleted ({deleted} were), \
         first {}: {}",
        FlowDisplay(first),
        io::Error::from_raw_os_error(*errno)
    )]
    Delete {
        /// Stale flows found.
        stale: usize,
        /// Flows deleted.
        deleted: usize,
        /// Deletions that failed.
        failed: usize,
        /// The first flow whose deletion failed.
        first: Flow,
        /// Its errno (positive).
        errno: i32,
    },
    /// A reply could not be understood.
    #[error("ctnetlink reply to {op}: {message}")]
    Decode {
        /// The request it answered.
        op: ConntrackOp,
        /// What was wrong with it.
        message: String,
    },
}

impl ConntrackError {
    /// The kernel's errno, when the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConntrackError::Rejected { errno, .. } | ConntrackError::Delete { errno, .. } => {
                Some(*errno)
            }
            _ => None,
        }
    }
}

/// `udp 10.244.2.7:40000 -> 10.96.0.10:53 (to 10.244.1.11:8053)`, for messages.
struct FlowDisplay<'a>(&'a Flow);

impl fmt::Display for FlowDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        let sock = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port);
        write!(
            f,
            "proto {} {} -> {} (to {})",
            x.proto,
            sock(x.orig_src, x.orig_sport),
            sock(x.orig_dst, x.orig_dport),
            sock(x.reply_src, x.reply_sport)
        )
    }
}

/// Deletes every UDP flow of `lookup`'s family that `lookup` finds stale, in the calling
/// thread's network namespace: one dump, then the deletions. A lookup with no UDP frontend
/// returns at once (nothing can be stale).
pub fn reconcile(lookup: &Lookup) -> Result<ConntrackReport, ConntrackError> {
    let start = Instant::now();
    let mut report = ConntrackReport::default();
    if lookup.is_empty() {
        report.duration = start.elapsed();
        return Ok(report);
    }
    let mut ct = Conntrack::open()?;
    let mut stale = Vec::new();
    report.flows_seen = ct.dump_udp(lookup.family(), |e| {
        if lookup.is_stale(&e.flow) {
            stale.push(*e);
        }
    })?;
    report.dump = start.elapsed();
    report.flows_stale = stale.len();
    let outcome = ct.delete(&stale)?;
    report.flows_deleted = outcome.deleted;
    report.flows_gone = outcome.gone;
    report.duration = start.elapsed();
    match outcome.first_failure {
        None => Ok(report),
        Some((first, errno)) => Err(ConntrackError::Delete {
            stale: stale.len(),
            deleted: outcome.deleted,
            failed: outcome.failed,
            first,
            errno,
        }),
    }
}

/// What [`Conntrack::delete`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Flows deleted.
    pub deleted: usize,
    /// Flows that were gone already (`ENOENT`).
    pub gone: usize,
    /// Deletions that failed otherwise.
    pub failed: usize,
    /// The first of those, with its errno.
    pub first_failure: Option<(Flow, i32)>,
}

/// A blocking ctnetlink socket in the calling thread's network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Whether the kernel took the UDP filter on dumps (cleared if it refuses it).
    filter: bool,
}

impl fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conntrack")
            .field("seq", &self.seq)
            .field("filter", &self.filter)
            .finish()
    }
}

impl Conntrack {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&sock, REPLY_TIMEOUT)?;
        // Each only saves work, and an old kernel may lack it: room for more failures, and
        // failures without the request echoed back.
        let _ = sock.set_rx_buf_sz(RECV_BUFFER);
        let _ = sock.set_cap_ack(true);
        Ok(Conntrack {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
            filter: true,
        })
    }

    /// Whether dumps ask the kernel for UDP flows only (the default). Off, the kernel returns
    /// every flow of the family and they are filtered here, as on kernels before 5.8.
    pub fn with_kernel_filter(mut self, on: bool) -> Conntrack {
        self.filter = on;
        self
    }

    fn next_seq(&mut self) -> u32 {
        // Never 0, which unsolicited messages carry.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Reads one reply datagram and hands each message to `each`.
    fn recv(
        &mut self,
        op: ConntrackOp,
        family: IpFamily,
        each: impl FnMut(u32, u16, Reply),
    ) -> Result<(), ConntrackError> {
        let n = self
            .sock
            .recv(&mut &mut self.buf[..], libc::MSG_TRUNC)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConntrackError::Socket(
                    io::Error::new(io::ErrorKind::TimedOut, format!("no reply to {op}")),
                ),
                _ => ConntrackError::Socket(e),
            })?;
        if n > self.buf.len() {
            // Dumps come in datagrams of at most 32 KiB, replies to deletions are smaller.
            return Err(ConntrackError::Decode {
                op,
                message: format!("a {n}-byte datagram did not fit {} bytes", self.buf.len()),
            });
        }
        parse_datagram(&self.buf[..n], family, each)
            .map_err(|m| ConntrackError::Decode { op, message: m.0 })
    }

    /// Calls `each` with every UDP flow of `family` in the table, and returns how many there
    /// were: one dump, nothing kept.
    pub fn dump_udp(
        &mut self,
        family: IpFamily,
        mut each: impl FnMut(&ConntrackEntry),
    ) -> Result<usize, ConntrackError> {
        match self.dump_once(family, &mut each) {
            // A kernel that knows CTA_FILTER but not this use of it: dump everything.
            Err(ConntrackError::Rejected { errno, .. })
                if self.filter && matches!(errno, libc::EINVAL | libc::EOPNOTSUPP) =>
            {
                self.filter = false;
                self.dump_once(family, &mut each)
            }
            other => other,
        }
    }

    fn dump_once(
        &mut self,
        family: IpFamily,
        each: &mut impl FnMut(&ConntrackEntry),
    ) -> Result<usize, ConntrackError> {
        let op = ConntrackOp::Dump;
        let seq = self.next_seq();
        let mut req = Vec::with_capacity(64);
        codec::dump_request(&mut req, seq, family, self.filter);
        self.sock.send(&req, 0)?;
        let mut seen = 0;
        let mut end: Option<Result<(), ConntrackError>> = None;
        while end.is_none() {
            self.recv(op, family, |s, _flags, reply| {
                if s != seq || end.is_some() {
                    return;
                }
                match reply {
                    Reply::Flow(Some(e))
                        if e.flow.proto == rulegen::sync::conntrack::IPPROTO_UDP =>
                    {
                        seen += 1;
                        each(&e);
                    }
                    Reply::Done(status) if status < 0 => {
                        end = Some(Err(ConntrackError::Rejected { op, errno: -status }));
                    }
                    Reply::Done(_) => end = Some(Ok(())),
                    Reply::Ack(0) => {}
                    Reply::Ack(errno) => end = Some(Err(ConntrackError::Rejected { op, errno })),
                    _ => {}
                }
            })?;
        }
        end.expect("loop ends with an outcome").map(|()| seen)
    }

    /// Deletes `entries` (each named by its original tuple, zone and id). A flow already gone
    /// counts in [`DeleteOutcome::gone`]; other failures are counted, and the rest still go.
    pub fn delete(&mut self, entries: &[ConntrackEntry]) -> Result<DeleteOutcome, ConntrackError> {
        let op = ConntrackOp::Delete;
        let mut out = DeleteOutcome::default();
        let mut datagram = Vec::with_capacity(WINDOW * 96);
        let mut seqs = Vec::with_capacity(WINDOW);
        for chunk in entries.chunks(WINDOW) {
            datagram.clear();
            seqs.clear();
            for (i, e) in chunk.iter().enumerate() {
                let seq = self.next_seq();
                let flags = if i + 1 == chunk.len() {
                    NLM_F_REQUEST | NLM_F_ACK
                } else {
                    NLM_F_REQUEST
                };
                codec::delete_request(&mut datagram, seq, flags, e);
                seqs.push(seq);
            }
            let last_seq = *seqs.last().expect("chunks are never empty");
            self.sock.send(&datagram, 0)?;
            let mut failed_here = 0;
            let mut done = false;
            while !done {
                // Replies to deletions carry no flows, so the family is never read.
                self.recv(op, IpFamily::V4, |s, _flags, reply| {
                    let Reply::Ack(errno) = reply else { return };
                    // Only failures and the last acknowledgement come back: few to search.
                    let Some(at) = seqs.iter().position(|&q| q == s) else {
                        return;
                    };
                    match errno {
                        0 => {}
                        libc::ENOENT => out.gone += 1,
                        _ => {
                            out.failed += 1;
                            out.first_failure.get_or_insert((chunk[at].flow, errno));
                        }
                    }
                    if errno != 0 {
                        failed_here += 1;
                    }
                    if s == last_seq {
                        done = true;
                    }
                })?;
            }
            out.deleted += chunk.len() - failed_here;
        }
        Ok(out)
    }
}
