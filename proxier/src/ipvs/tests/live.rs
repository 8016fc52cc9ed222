//! The real socket against this machine's kernel. Its generic-netlink controller is always
//! there, so the transport (send, acknowledgement, error mapping) is checked even where IPVS
//! is not; whether "IPVS" resolves depends on the `ip_vs` module, which `/proc/net/ip_vs`
//! shows.

use std::path::Path;

use netlink_packet_generic::constants::GENL_ID_CTRL;

use crate::ipvs::error::{IpvsError, IpvsOp, Rejection};
use crate::ipvs::handle::IpvsHandle;
use crate::ipvs::socket::{DEFAULT_REPLY_TIMEOUT, IpvsSocket};

#[test]
fn the_controller_family_resolves_over_a_real_socket() {
    let mut s = IpvsSocket::connect(DEFAULT_REPLY_TIMEOUT).expect("a NETLINK_GENERIC socket");
    assert_eq!(s.family_id_of("nlctrl").unwrap(), GENL_ID_CTRL);
    // Requests in a row keep their replies apart.
    assert_eq!(s.family_id_of("nlctrl").unwrap(), GENL_ID_CTRL);
}

#[test]
fn an_unknown_family_is_a_typed_enoent() {
    let mut s = IpvsSocket::connect(DEFAULT_REPLY_TIMEOUT).expect("a NETLINK_GENERIC socket");
    // At most 15 bytes (GENL_NAMSIZ - 1): a longer name is EINVAL, not ENOENT.
    let err = s.family_id_of("kprs-nofamily").unwrap_err();
    assert!(
        matches!(
            &err,
            IpvsError::Rejected {
                op: IpvsOp::ResolveFamily,
                rejection: Rejection::NotFound,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn opening_ipvs_says_whether_the_module_is_loaded() {
    match IpvsSocket::open() {
        Ok(mut s) => {
            assert!(
                Path::new("/proc/net/ip_vs").exists(),
                "IPVS resolved: ip_vs is loaded"
            );
            assert_ne!(s.family_id(), 0);
            // Dumping needs CAP_NET_ADMIN (GENL_ADMIN_PERM); as root it works.
            match s.services() {
                Ok(_) => {}
                Err(e) => assert_eq!(e.rejection(), Some(Rejection::PermissionDenied), "{e}"),
            }
        }
        Err(e) => {
            assert!(matches!(e, IpvsError::Unavailable), "{e}");
            assert_eq!(e.to_string(), "IPVS not available (is ip_vs loaded?)");
            assert!(!Path::new("/proc/net/ip_vs").exists());
        }
    }
}

#[test]
fn a_syncer_on_the_socket_can_move_to_a_blocking_thread() {
    // The agent runs syncs in `spawn_blocking`, which needs `Send + 'static`.
    fn assert_send<T: Send + 'static>() {}
    assert_send::<crate::ipvs::IpvsSyncer<IpvsSocket>>();
    assert_send::<IpvsError>();
}
