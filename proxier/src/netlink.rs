//! What the two netlink clients (IPVS over generic netlink, `kube-ipvs0` over rtnetlink) share.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::Socket;

/// Bounds every blocking receive on `sock` by `timeout`, so a kernel that never answers cannot
/// hang the thread that waits for it.
pub(crate) fn set_recv_timeout(sock: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket descriptor, and a pointer to a timeval of the length given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
