//! The operations the syncer needs from an IPVS table, implemented by the netlink client
//! ([`super::IpvsSocket`]) and by the in-memory peer ([`super::FakeIpvs`]).

use super::entry::{IpvsDest, IpvsService};
use super::error::IpvsError;

/// A blocking handle on one network namespace's IPVS table.
///
/// Methods take `&mut self` because a handle keeps state per request (the socket its sequence
/// numbers, the fake its call counters).
pub trait IpvsHandle {
    /// Every virtual service (one `GET_SERVICE` dump).
    fn services(&mut self) -> Result<Vec<IpvsService>, IpvsError>;
    /// The destinations of `svc` (one `GET_DEST` dump); empty if the service does not exist, as
    /// the kernel answers.
    fn destinations(&mut self, svc: &IpvsService) -> Result<Vec<IpvsDest>, IpvsError>;
    /// `NEW_SERVICE`.
    fn new_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError>;
    /// `SET_SERVICE`: scheduler, flags, timeout and netmask become `svc`'s.
    fn set_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError>;
    /// `DEL_SERVICE`, with all its destinations.
    fn del_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError>;
    /// `NEW_DEST` in `svc`.
    fn new_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError>;
    /// `SET_DEST` in `svc`: forwarding method, weight and thresholds become `dest`'s.
    fn set_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError>;
    /// `DEL_DEST` from `svc`.
    fn del_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError>;
}

impl<H: IpvsHandle + ?Sized> IpvsHandle for &mut H {
    fn services(&mut self) -> Result<Vec<IpvsService>, IpvsError> {
        (**self).services()
    }
    fn destinations(&mut self, svc: &IpvsService) -> Result<Vec<IpvsDest>, IpvsError> {
        (**self).destinations(svc)
    }
    fn new_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        (**self).new_service(svc)
    }
    fn set_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        (**self).set_service(svc)
    }
    fn del_service(&mut self, svc: &IpvsService) -> Result<(), IpvsError> {
        (**self).del_service(svc)
    }
    fn new_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        (**self).new_dest(svc, dest)
    }
    fn set_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        (**self).set_dest(svc, dest)
    }
    fn del_dest(&mut self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        (**self).del_dest(svc, dest)
    }
}

/// `svc -> dest`, how errors name a destination.
pub(crate) fn dest_target(svc: &IpvsService, dest: &IpvsDest) -> String {
    format!("{svc} -> {dest}")
}
