//! Typed IPVS errors: which operation, on what, and the kernel's answer.

use std::fmt;
use std::io;

/// An operation on the IPVS table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpvsOp {
    /// Resolving the "IPVS" generic-netlink family.
    ResolveFamily,
    /// Dumping the services (`GET_SERVICE` with `NLM_F_DUMP`).
    GetServices,
    /// Dumping one service's destinations (`GET_DEST`).
    GetDests,
    /// `NEW_SERVICE`.
    NewService,
    /// `SET_SERVICE`.
    SetService,
    /// `DEL_SERVICE`.
    DelService,
    /// `NEW_DEST`.
    NewDest,
    /// `SET_DEST`.
    SetDest,
    /// `DEL_DEST`.
    DelDest,
}

impl IpvsOp {
    /// Every operation, in the order above.
    pub const ALL: [IpvsOp; 9] = [
        IpvsOp::ResolveFamily,
        IpvsOp::GetServices,
        IpvsOp::GetDests,
        IpvsOp::NewService,
        IpvsOp::SetService,
        IpvsOp::DelService,
        IpvsOp::NewDest,
        IpvsOp::SetDest,
        IpvsOp::DelDest,
    ];

    /// The command's name, as `ip_vs.h` spells it (without `IPVS_CMD_`).
    pub fn name(self) -> &'static str {
        match self {
            IpvsOp::ResolveFamily => "CTRL_CMD_GETFAMILY",
            IpvsOp::GetServices => "GET_SERVICE",
            IpvsOp::GetDests => "GET_DEST",
            IpvsOp::NewService => "NEW_SERVICE",
            IpvsOp::SetService => "SET_SERVICE",
            IpvsOp::DelService => "DEL_SERVICE",
            IpvsOp::NewDest => "NEW_DEST",
            IpvsOp::SetDest => "SET_DEST",
            IpvsOp::DelDest => "DEL_DEST",
        }
    }

    /// Whether the operation changes the table (everything but the dumps and the lookup).
    pub fn is_modifying(self) -> bool {
        !matches!(
            self,
            IpvsOp::ResolveFamily | IpvsOp::GetServices | IpvsOp::GetDests
        )
    }
}

impl fmt::Display for IpvsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the kernel refused a request: its `NLMSG_ERROR` errno, classified.
///
/// The meanings are `ip_vs_genl_set_cmd`'s (`net/netfilter/ipvs/ip_vs_ctl.c`): `EEXIST` for a
/// NEW of an existing service or destination; `ESRCH` when the service a command names does not
/// exist (every command but NEW_SERVICE); `ENOENT` for a SET or DEL of a missing destination, and
/// also for an unknown scheduler or persistence engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `EEXIST`.
    Exists,
    /// `ENOENT`.
    NotFound,
    /// `ESRCH`.
    NoService,
    /// `EPERM`: the process lacks `CAP_NET_ADMIN` (the family's ops are `GENL_ADMIN_PERM`).
    PermissionDenied,
    /// Any other errno (`EINVAL`, `ERANGE`, `ENOMEM`, `EAFNOSUPPORT`, …).
    Other(i32),
}

impl Rejection {
    /// The rejection an errno (positive) stands for.
    pub fn from_errno(errno: i32) -> Rejection {
        match errno {
            libc::EEXIST => Rejection::Exists,
            libc::ENOENT => Rejection::NotFound,
            libc::ESRCH => Rejection::NoService,
            libc::EPERM => Rejection::PermissionDenied,
            e => Rejection::Other(e),
        }
    }

    /// Its errno (positive).
    pub fn errno(self) -> i32 {
        match self {
            Rejection::Exists => libc::EEXIST,
            Rejection::NotFound => libc::ENOENT,
            Rejection::NoService => libc::ESRCH,
            Rejection::PermissionDenied => libc::EPERM,
            Rejection::Other(e) => e,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Exists => f.write_str("already exists (EEXIST)"),
            Rejection::NotFound => {
                f.write_str("no such destination, scheduler or persistence engine (ENOENT)")
            }
            Rejection::NoService => f.write_str("no such virtual service (ESRCH)"),
            Rejection::PermissionDenied => {
                f.write_str("operation not permitted (EPERM; needs CAP_NET_ADMIN)")
            }
            Rejection::Other(e) => write!(f, "{} (errno {e})", io::Error::from_raw_os_error(*e)),
        }
    }
}

/// An IPVS failure.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The "IPVS" family is not registered: the `ip_vs` module is not loaded (or not built).
    #[error("IPVS not available (is ip_vs loaded?)")]
    Unavailable,
    /// The kernel refused one request; the table is otherwise as it was.
    #[error("{op} {target}: {rejection}")]
    Rejected {
        /// The operation.
        op: IpvsOp,
        /// What it was about (`TCP 10.96.0.1:443`, `TCP 10.96.0.1:443 -> 10.244.0.5:6443`).
        target: String,
        /// The kernel's answer.
        rejection: Rejection,
    },
    /// The netlink socket failed (open, send, receive, time-out).
    #[error("IPVS netlink socket: {0}")]
    Socket(#[from] io::Error),
    /// A reply could not be decoded.
    #[error("malformed IPVS reply to {op}: {message}")]
    Decode {
        /// The operation whose reply it was.
        op: IpvsOp,
        /// What was wrong.
        message: String,
    },
    /// A sync went through, but some requests were refused: the first one, how many, and the
    /// report of what was done. The next sync re-reads the table and retries them.
    #[error("{failed} IPVS request(s) failed; first: {first}")]
    Incomplete {
        /// How many requests were refused.
        failed: usize,
        /// The first refusal.
        first: Box<IpvsError>,
        /// What the sync did.
        report: Box<super::sync::IpvsSyncReport>,
    },
}

impl IpvsError {
    /// The error for `errno` (positive) answering `op` on `target`.
    pub fn rejected(op: IpvsOp, target: impl Into<String>, errno: i32) -> IpvsError {
        IpvsError::Rejected {
            op,
            target: target.into(),
            rejection: Rejection::from_errno(errno),
        }
    }

    /// The kernel's rejection, if this is one.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            IpvsError::Rejected { rejection, .. } => Some(*rejection),
            _ => None,
        }
    }

    /// Whether the error concerns one request only, so a sync may go on with the others (a
    /// rejection); anything else means the connection to the kernel is unusable or untrusted.
    pub fn is_per_request(&self) -> bool {
        matches!(self, IpvsError::Rejected { .. })
    }
}
