//! A liveness link: a TUN device that exists exactly as long as this
//! process holds it open.
//!
//! A routing daemon that ties a route to this link's state (BIRD's static
//! routes with `check link`) withdraws the route the moment the link goes
//! down or disappears. The kernel deletes a non-persistent TUN device when
//! its last file descriptor closes, so the route follows the process
//! however it ends (exit, SIGKILL, a crash) without the dead process doing
//! anything; a live process that cannot serve takes the link down itself.
//!
//! The device carries no traffic: limpet never reads it and gives it no
//! address.

use super::afpacket::sys;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Why a liveness link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("{name:?} is not a usable interface name (1 to 15 bytes)")]
    BadName { name: String },
    #[error(
        "interface {name} already exists: limpet creates its liveness link itself, and one it did not create could outlive it and keep routes announced"
    )]
    Exists { name: String },
    #[error("{what} for liveness link {name}: {source}")]
    Sys {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The TUN device, held open. Dropping it deletes the device.
#[derive(Debug)]
pub struct LivenessLink {
    name: String,
    ifname: [libc::c_char; libc::IFNAMSIZ],
    /// `/dev/net/tun`, attached to the device: the device's lifetime.
    _device: OwnedFd,
    /// A datagram socket to set the device's flags through.
    control: OwnedFd,
}

impl LivenessLink {
    /// Creates the device `name`, down. Fails if an interface of that name
    /// exists already (a persistent TUN device of that name would attach
    /// and outlive this process).
    pub fn create(name: &str) -> Result<Self, LivenessError> {
        let ifname = sys::ifname(name).ok_or_else(|| LivenessError::BadName {
            name: name.to_owned(),
        })?;
        let err = |what| {
            let name = name.to_owned();
            move |source| LivenessError::Sys { name, what, source }
        };
        if sys::if_nametoindex(&ifname).is_ok() {
            return Err(LivenessError::Exists {
                name: name.to_owned(),
            });
        }
        // SAFETY: the path is a NUL-terminated literal; open() takes no
        // other pointer and its result is checked by `cvt`.
        let fd = sys::cvt(unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })
        .map_err(err("open(/dev/net/tun)"))?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        let device = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = sys::ifreq(&ifname);
        // No packet information header, and not persistent: the device goes
        // with the last descriptor.
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        sys::ioctl_ifreq(&device, libc::TUNSETIFF as libc::c_ulong, &mut req)
            .map_err(err("ioctl(TUNSETIFF)"))?;
        // SAFETY: socket() takes no pointers; its result is checked by `cvt`.
        let sock = sys::cvt(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })
        .map_err(err("socket(AF_INET)"))?;
        // SAFETY: `sock` was just created and nothing else owns it.
        let control = unsafe { OwnedFd::from_raw_fd(sock) };
        Ok(Self {
            name: name.to_owned(),
            ifname,
            _device: device,
            control,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device is administratively up.
    pub fn is_up(&self) -> io::Result<bool> {
        Ok(sys::if_flags(&self.control, &self.ifname)? & libc::IFF_UP != 0)
    }

    /// Brings the device up (routes tied to it may be announced) or down
    /// (they are withdrawn).
    pub fn set_up(&self, up: bool) -> io::Result<()> {
        let flags = sys::if_flags(&self.control, &self.ifname)?;
        let flags = if up {
            flags | libc::IFF_UP
        } else {
            flags & !libc::IFF_UP
        };
        let mut req = sys::ifreq(&self.ifname);
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        sys::ioctl_ifreq(&self.control, libc::SIOCSIFFLAGS, &mut req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        assert!(matches!(
            LivenessLink::create(""),
            Err(LivenessError::BadName { .. })
        ));
        assert!(matches!(
            LivenessLink::create("a-name-far-too-long"),
            Err(LivenessError::BadName { .. })
        ));
        assert!(matches!(
            LivenessLink::create("lo"),
            Err(LivenessError::Exists { .. })
        ));
    }
}
