//! One IPVS generic-netlink message: a command and its attributes, the payload of a
//! `netlink_packet_generic::GenlMessage` whose family is resolved at run time ("IPVS", v1).

use netlink_packet_core::{DecodeError, Emitable, ErrorContext, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::attrs::{
    IPVS_CMD_DEL_DEST, IPVS_CMD_DEL_SERVICE, IPVS_CMD_FLUSH, IPVS_CMD_GET_DEST,
    IPVS_CMD_GET_SERVICE, IPVS_CMD_NEW_DEST, IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_DEST,
    IPVS_CMD_SET_SERVICE, IPVS_GENL_NAME, IPVS_GENL_VERSION, IpvsCmdAttr, parse_cmd_attrs,
};

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvsCommand {
    /// `IPVS_CMD_NEW_SERVICE`.
    NewService,
    /// `IPVS_CMD_SET_SERVICE`.
    SetService,
    /// `IPVS_CMD_DEL_SERVICE`.
    DelService,
    /// `IPVS_CMD_GET_SERVICE`.
    GetService,
    /// `IPVS_CMD_NEW_DEST`.
    NewDest,
    /// `IPVS_CMD_SET_DEST`.
    SetDest,
    /// `IPVS_CMD_DEL_DEST`.
    DelDest,
    /// `IPVS_CMD_GET_DEST`.
    GetDest,
    /// `IPVS_CMD_FLUSH`.
    Flush,
    /// Any other command number.
    Other(u8),
}

impl From<IpvsCommand> for u8 {
    fn from(c: IpvsCommand) -> u8 {
        match c {
            IpvsCommand::NewService => IPVS_CMD_NEW_SERVICE,
            IpvsCommand::SetService => IPVS_CMD_SET_SERVICE,
            IpvsCommand::DelService => IPVS_CMD_DEL_SERVICE,
            IpvsCommand::GetService => IPVS_CMD_GET_SERVICE,
            IpvsCommand::NewDest => IPVS_CMD_NEW_DEST,
            IpvsCommand::SetDest => IPVS_CMD_SET_DEST,
            IpvsCommand::DelDest => IPVS_CMD_DEL_DEST,
            IpvsCommand::GetDest => IPVS_CMD_GET_DEST,
            IpvsCommand::Flush => IPVS_CMD_FLUSH,
            IpvsCommand::Other(n) => n,
        }
    }
}

impl From<u8> for IpvsCommand {
    fn from(n: u8) -> IpvsCommand {
        match n {
            IPVS_CMD_NEW_SERVICE => IpvsCommand::NewService,
            IPVS_CMD_SET_SERVICE => IpvsCommand::SetService,
            IPVS_CMD_DEL_SERVICE => IpvsCommand::DelService,
            IPVS_CMD_GET_SERVICE => IpvsCommand::GetService,
            IPVS_CMD_NEW_DEST => IpvsCommand::NewDest,
            IPVS_CMD_SET_DEST => IpvsCommand::SetDest,
            IPVS_CMD_DEL_DEST => IpvsCommand::DelDest,
            IPVS_CMD_GET_DEST => IpvsCommand::GetDest,
            IPVS_CMD_FLUSH => IpvsCommand::Flush,
            n => IpvsCommand::Other(n),
        }
    }
}

/// A command with its first-level attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: IpvsCommand,
    /// Its attributes, in order.
    pub attrs: Vec<IpvsCmdAttr>,
}

impl IpvsMessage {
    /// A message of `cmd` with `attrs`.
    pub fn new(cmd: IpvsCommand, attrs: Vec<IpvsCmdAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }

    /// The attributes of the (first) nested service, if any.
    pub fn service_attrs(&self) -> Option<&[super::attrs::SvcAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsCmdAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// The attributes of the (first) nested destination, if any.
    pub fn dest_attrs(&self) -> Option<&[super::attrs::DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsCmdAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd.into(),
            attrs: parse_cmd_attrs(buf)
                .with_context(|| format!("IPVS command {} attributes", header.cmd))?,
        })
    }
}
