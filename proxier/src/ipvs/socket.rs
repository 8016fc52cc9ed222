//! The real IPVS client: a blocking `NETLINK_GENERIC` socket speaking the "IPVS" family.
//!
//! Every modifying request asks for an acknowledgement (`NLM_F_ACK`), so each one's outcome is
//! known before the next is sent; dumps (`NLM_F_DUMP`) are read until `NLMSG_DONE`. Replies
//! carrying another sequence number (left over from a request that timed out) are skipped.

use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkMessage, NetlinkPayload, NlasIterator, ParseableParametrized, parse_u16,
};
use netlink_packet_generic::constants::{CTRL_ATTR_FAMILY_ID, GENL_ID_CTRL};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::attrs::{IPVS_GENL_NAME, IpvsCmdAttr};
use super::entry::{IpvsDest, IpvsService, family_of};
use super::error::{IpvsError, IpvsOp, Rejection};
use super::handle::{IpvsHandle, dest_target};
use super::message::{IpvsCommand, IpvsMessage};
use crate::netlink::set_recv_timeout;

/// How long a request waits for the kernel's reply before failing with a socket error (so a
/// kernel that never answers cannot wedge the agent's blocking sync thread for good).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The netlink header's length (`struct nlmsghdr`).
const NLMSG_HDRLEN: usize = 16;

/// A connection to the IPVS table of the caller's network namespace.
pub struct IpvsSocket {
    sock: Socket,
    family_id: u16,
    seq: u32,
}

impl Debug for IpvsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSocket")
            .field("fd", &self.sock.as_raw_fd())
            .field("family_id", &self.family_id)
            .finish()
    }
}

impl IpvsSocket {
    /// Opens a socket and resolves the "IPVS" family; [`IpvsError::Unavailable`] when the
    /// kernel has no such family (the `ip_vs` module is not loaded).
    pub fn open() -> Result<IpvsSocket, IpvsError> {
        IpvsSocket::open_with_timeout(DEFAULT_REPLY_TIMEOUT)
    }

    /// [`IpvsSocket::open`] with another reply time-out.
    pub fn open_with_timeout(timeout: Duration) -> Result<IpvsSocket, IpvsError> {
        let mut s = IpvsSocket::connect(timeout)?;
        // The kernel answers ENOENT for an unknown family (after trying to load a module that
        // provides it: `genl_family_find_byname`, then `request_module`).
        s.family_id = match s.family_id_of(IPVS_GENL_NAME) {
            Err(IpvsError::Rejected {
                rejection: Rejection::NotFound,
                ..
            }) => return Err(IpvsError::Unavailable),
            r => r?,
        };
        Ok(s)
    }

    /// A generic-netlink socket, its family not resolved yet.
    pub(crate) fn connect(timeout: Duration) -> Result<IpvsSocket, IpvsError> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&sock, timeout)?;
        Ok(IpvsSocket {
            sock,
            family_id: 0,
            seq: 0,
        })
    }

    /// The family id the kernel gave "IPVS".
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// `CTRL_CMD_GETFAMILY`: the id of the generic-netlink family `name`.
    pub(crate) fn family_id_of(&mut self, name: &str) -> Result<u16, IpvsError> {
        let req = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        };
        let replies: Vec<CtrlReply> = self.transact(
            req,
            GENL_ID_CTRL,
            NLM_F_REQUEST | NLM_F_ACK,
            IpvsOp::ResolveFamily,
            || name.to_string(),
        )?;
        replies
            .iter()
            .find_map(|r| r.family_id)
            .ok_or_else(|| IpvsError::Decode {
                op: IpvsOp::ResolveFamily,
                message: "no CTRL_ATTR_FAMILY_ID in the reply".to_string(),
            })
    }

    fn next_seq(&mut self) -> u32 {
        // Never 0: a request with sequence 0 is indistinguishable from unsolicited messages.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `payload` and collects the replies up to the acknowledgement or `NLMSG_DONE`.
    fn transact<Q, R>(
        &mut self,
        payload: Q,
        family_id: u16,
        flags: u16,
        op: IpvsOp,
        target: impl Fn() -> String,
    ) -> Result<Vec<R>, IpvsError>
    where
        Q: GenlFamily + Emitable + Debug,
        R: ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        let seq = self.next_seq();
        let buf = encode_request(payload, family_id, flags, seq);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.sock.recv_from_full().map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => IpvsError::Socket(
                    io::Error::new(io::ErrorKind::TimedOut, format!("no reply to {op}")),
                ),
                _ => IpvsError::Socket(e),
            })?;
            if read_datagram(&datagram, seq, op, &target, &mut out)? == Step::Done {
                return Ok(out);
            }
        }
    }

    /// An acknowledged IPVS request.
    fn request(
        &mut self,
        msg: IpvsMessage,
        op: IpvsOp,
        target: impl Fn() -> String,
    ) -> Result<(), IpvsError> {
        let family_id = self.family_id;
        self.transact::<_, IpvsMessage>(msg, family_id, NLM_F_REQUEST | NLM_F_ACK, op, target)
            .map(|_| ())
    }

    /// An IPVS dump.
    fn dump(
        &mut self,
        msg: IpvsMessage,
        op: IpvsOp,
        target: impl Fn() -> String,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let family_id = self.family_id;
        self.transact(msg, family_id, NLM_F_REQUEST | NLM_F_DUMP, op, target)
    }
}

/// The request as bytes: netlink header, generic-netlink header, attributes.
pub(crate) fn encode_request<Q: GenlFamily + Emitable + Debug>(
    payload: Q,
    family_id: u16,
    flags: u16,
    seq: u32,
) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family_id);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Whether a request's replies are complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// More datagrams follow.
    More,
    /// The acknowledgement or `NLMSG_DONE` arrived.
    Done,
}

/// Reads one datagram of replies to request `seq`: payloads go to `out`; an `NLMSG_ERROR` with
/// an errno, or an `NLMSG_DONE` with a negative status, is the request's failure.
pub(crate) fn read_datagram<R>(
    buf: &[u8],
    seq: u32,
    op: IpvsOp,
    target: &dyn Fn() -> String,
    out: &mut Vec<R>,
) -> Result<Step, IpvsError>
where
    R: ParseableParametrized<[u8], GenlHeader> + Debug,
{
    let decode = |e: DecodeError| IpvsError::Decode {
        op,
        message: e.to_string(),
    };
    let mut step = Step::More;
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let nb = NetlinkBuffer::new_checked(&buf[off..]).map_err(decode)?;
        let len = nb.length() as usize;
        let this = &buf[off..off + len];
        // NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
        off = (off + len + 3) & !3;
        if nb.sequence_number() != seq {
            continue;
        }
        let msg = NetlinkMessage::<GenlMessage<R>>::deserialize(this).map_err(decode)?;
        match msg.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => step = Step::Done,
                Some(code) => return Err(IpvsError::rejected(op, target(), -code.get())),
            },
            NetlinkPayload::Done(d) => {
                if d.code < 0 {
                    return Err(IpvsError::rejected(op, target(), -d.code));
                }
                step = Step::Done;
            }
            NetlinkPayload::InnerMessage(genl) => {
                // A dump the kernel had to restart would hold duplicates or gaps; IPVS's dumps
                // never set it today, but if one does, do not diff against it.
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    return Err(IpvsError::Decode {
                        op,
                        message: "dump interrupted (NLM_F_DUMP_INTR)".to_string(),
                    });
                }
                out.push(genl.payload);
            }
            NetlinkPayload::Overrun(_) => {
                return Err(IpvsError::Decode {
                    op,
                    message: "NLMSG_OVERRUN".to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(step)
}

/// The one attribute of a `CTRL_CMD_NEWFAMILY` reply we need. Parsed by hand, tolerating
/// attributes `netlink_packet_generic`'s `GenlCtrlAttrs` does not know (newer kernels add some).
#[derive(Debug)]
pub(crate) struct CtrlReply {
    pub(crate) family_id: Option<u16>,
}

impl ParseableParametrized<[u8], GenlHeader> for CtrlReply {
    fn parse_with_param(buf: &[u8], _header: GenlHeader) -> Result<Self, DecodeError> {
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            if nla.kind() == CTRL_ATTR_FAMILY_ID {
                return Ok(CtrlReply {
                    family_id: Some(parse_u16(nla.value())?),
                });
            }
        }
        Ok(CtrlReply { family_id: None })
    }
}

/// The service and destination of a destination command.
fn dest_message(cmd: IpvsCommand, svc: &IpvsService, dest: &IpvsDest) -> IpvsMessage {
    IpvsMessage::new(
        cmd,
        vec![
            IpvsCmdAttr::Service(svc.to_attrs()),
            IpvsCmdAttr::Dest(dest.to_attrs()),
        ],
    )
}

fn service_message(cmd: IpvsCommand, svc: &IpvsService) -> IpvsMessage {
    IpvsMessage::new(cmd, vec![IpvsCmdAttr::Service(svc.to_attrs())])
}

/// The services of a `GET_SERVICE` dump.
pub(crate) fn services_of(replies: &[IpvsMessage]) -> Result<Vec<IpvsService>, IpvsError> {
    replies
        .iter()
        .map(|m| {
            let attrs = m.service_attrs().ok_or_else(|| IpvsError::Decode {
                op: IpvsOp::GetServices,
                message: "reply without IPVS_CMD_ATTR_SERVICE".to_string(),
            })?;
            IpvsService::from_attrs(attrs).map_err(|e| IpvsError::Decode {
                op: IpvsOp::GetServices,
                message: e.to_string(),
            })
        })
        .collect()
}

/// The destinations of a `GET_DEST` dump of `svc`.
pub(crate) fn dests_of(
    svc: &IpvsService,
    replies: &[IpvsMessage],
) -> Result<Vec<IpvsDest>, IpvsError> {
    let af = family_of(&svc.addr);
    replies
        .iter()
        .map(|m| {
            let attrs = m.dest_attrs().ok_or_else(|| IpvsError::Decode {
                op: IpvsOp::GetDests,
                message: format!("reply for {svc} without IPVS_CMD_ATTR_DEST"),
            })?;
            IpvsDest::from_attrs(attrs, af).map_err(|e| IpvsError::Decode {
                op: IpvsOp::GetDests,
                message: format!("{svc}: {e}"),
            })
        })
        .collect()
}

impl IpvsHandle for IpvsSocket {
    fn services(&mut self) -> Result<Vec<IpvsService>, IpvsError> {
        let replies = self.dump(
            IpvsMessage::new(IpvsCommand::GetService, Vec::new()),
            IpvsOp::GetServices,
            String::new,
        )?;
        services_of(&replies)
    }

    fn destinations(&mut self, svc: &IpvsService) -> Result<Vec<IpvsDest>, IpvsError> {
        let replies = self.dump(
            service_message(IpvsCommand::GetDest, svc),
            IpvsOp::GetDests,
            || svc.to_string(),
        )?;
        dests_of(svc, &replies)
    }

    fn new_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.request(
            service_message(IpvsCommand::NewService, svc),
            IpvsOp::NewService,
            || svc.to_string(),
        )
    }

    fn set_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.request(
            service_message(IpvsCommand::SetService, svc),
            IpvsOp::SetService,
            || svc.to_string(),
        )
    }

    fn del_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.request(
            service_message(IpvsCommand::DelService, svc),
            IpvsOp::DelService,
            || svc.to_string(),
        )
    }

    fn new_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.request(
            dest_message(IpvsCommand::NewDest, svc, dest),
            IpvsOp::NewDest,
            || dest_target(svc, dest),
        )
    }

    fn set_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.request(
            dest_message(IpvsCommand::SetDest, svc, dest),
            IpvsOp::SetDest,
            || dest_target(svc, dest),
        )
    }

    fn del_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.request(
            dest_message(IpvsCommand::DelDest, svc, dest),
            IpvsOp::DelDest,
            || dest_target(svc, dest),
        )
    }
}
