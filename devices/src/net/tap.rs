//! The tap back-end: a Linux tap interface opened through `/dev/net/tun` with `IFF_VNET_HDR`,
//! so every frame read or written carries a 12-byte `virtio_net_hdr_v1` (virtio 1.2 §5.1.6).
//!
//! [`Tap::open`] attaches to the named interface, creating it when it does not exist and the
//! process may (CAP_NET_ADMIN in the current network namespace). A tap created beforehand with
//! `ip tuntap add NAME mode tap user USER` can be attached by that user without any capability.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetBackend, VNET_HDR_LEN};

/// Where the tun/tap clone device lives.
pub const TUN_DEVICE: &str = "/dev/net/tun";

// linux/if_tun.h (ioctl numbers for x86_64/aarch64: _IOW('T', n, int) / _IOR('T', n, int)).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Errors opening a tap. Each names the tap and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "tap {name:?}: invalid interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':', \
         whitespace or NUL)"
    )]
    InvalidName { name: String },
    #[error(
        "tap {name}: {TUN_DEVICE} does not exist (load the tun module: `modprobe tun`, or create \
         the node: `mkdir -p /dev/net && mknod /dev/net/tun c 10 200`)"
    )]
    NoTunDevice { name: String },
    #[error(
        "tap {name}: cannot open {TUN_DEVICE}: permission denied (make it accessible to this \
         user, e.g. `chmod 0666 {TUN_DEVICE}`)"
    )]
    TunDeviceAccess { name: String },
    #[error("tap {name} is in use by another process (stop it, or use another tap)")]
    Busy { name: String },
    #[error(
        "tap {name}: permission denied: it does not exist and this process may not create it, or \
         it belongs to another user (run with CAP_NET_ADMIN, or pre-create a tap owned by this \
         user: `ip tuntap add {name} mode tap user $USER`)"
    )]
    PermissionDenied { name: String },
    #[error(
        "tap {name}: an interface of that name exists but is not a tap (pick another name, or \
         delete it with `ip link del {name}`)"
    )]
    NotATap { name: String },
    #[error(
        "tap {name}: the tun driver lacks IFF_VNET_HDR support (needs Linux 2.6.27+): {source}"
    )]
    NoVnetHdr {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: cannot {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Maps the errno of opening `/dev/net/tun` to a [`TapError`].
pub(crate) fn map_open_error(name: &str, e: io::Error) -> TapError {
    let name = name.to_string();
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            TapError::NoTunDevice { name }
        }
        Some(libc::EACCES) | Some(libc::EPERM) => TapError::TunDeviceAccess { name },
        _ => TapError::Io {
            name,
            op: "open /dev/net/tun",
            source: e,
        },
    }
}

/// Maps the errno of `TUNSETIFF` to a [`TapError`].
pub(crate) fn map_setiff_error(name: &str, e: io::Error) -> TapError {
    let name = name.to_string();
    match e.raw_os_error() {
        Some(libc::EBUSY) => TapError::Busy { name },
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name },
        // An existing interface that is not a tap (or a tun of the other kind).
        Some(libc::EINVAL) => TapError::NotATap { name },
        _ => TapError::Io {
            name,
            op: "attach (TUNSETIFF)",
            source: e,
        },
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// A `struct ifreq` carrying a name and flags (the only union member used here).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReqFlags {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut r = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
            *d = s as libc::c_char;
        }
        r
    }

    fn name(&self) -> String {
        // At most IFNAMSIZ - 1 bytes, so there is always a terminating NUL.
        let mut bytes = [0u8; libc::IFNAMSIZ];
        for (d, s) in bytes.iter_mut().zip(self.name.iter().take(MAX_NAME_LEN)) {
            *d = *s as u8;
        }
        CStr::from_bytes_until_nul(&bytes)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass a request whose argument is a pointer to a `T` that lives for the
    // call (an ifreq or an int); the kernel reads/writes at most sizeof(T) bytes.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An open tap interface (non-blocking, vnet header of 12 bytes).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// A datagram socket in the tap's network namespace, for interface flag ioctls.
    ctl: Option<OwnedFd>,
}

impl Tap {
    /// Opens (and creates, if absent and permitted) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName {
                name: name.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| map_open_error(name, e))?;
        let mut req = IfReqFlags::new(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        ioctl_ptr(file.as_raw_fd(), TUNSETIFF, &mut req).map_err(|e| map_setiff_error(name, e))?;
        let actual = req.name();
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(file.as_raw_fd(), TUNSETVNETHDRSZ, &mut hdr_len).map_err(|source| {
            TapError::NoVnetHdr {
                name: name.to_string(),
                source,
            }
        })?;
        // A tap's socket starts with the default send buffer (net.core.wmem_default, ~208 KiB)
        // and frames the host stack has not taken yet are charged to it: once it is full a
        // non-blocking write fails with EAGAIN and the frame is lost (a retransmission for the
        // guest's TCP). Only a few 64 KiB TSO frames fit; the guest's queue is the bound that
        // matters, so lift this one as QEMU's tap does (INT_MAX).
        let mut sndbuf = libc::c_int::MAX;
        if let Err(e) = ioctl_ptr(file.as_raw_fd(), TUNSETSNDBUF, &mut sndbuf) {
            log::warn!("tap {name}: cannot raise the send buffer (TUNSETSNDBUF): {e}");
        }
        // SAFETY: plain socket(2); the result is checked before being owned.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        let ctl = if s >= 0 {
            // SAFETY: `s` is a fresh descriptor nobody else owns.
            Some(unsafe { OwnedFd::from_raw_fd(s) })
        } else {
            None
        };
        log::info!("tap {actual}: attached (vnet header {VNET_HDR_LEN} bytes)");
        Ok(Tap {
            file,
            name: if actual.is_empty() {
                name.to_string()
            } else {
                actual
            },
            ctl,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's current name as the kernel knows it, or `None` when the tap was
    /// detached (e.g. deleted with `ip link del`).
    fn current_name(&self) -> Option<String> {
        let mut req = IfReqFlags::new("", 0);
        ioctl_ptr(self.file.as_raw_fd(), TUNGETIFF, &mut req).ok()?;
        Some(req.name())
    }

    /// The interface flags (IFF_UP, IFF_RUNNING, ...) of the tap.
    pub fn if_flags(&self) -> io::Result<libc::c_short> {
        let ctl = self
            .ctl
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        let name = self
            .current_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        let mut req = IfReqFlags::new(&name, 0);
        ioctl_ptr(ctl.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req)?;
        Ok(req.flags)
    }

    /// Sets or clears IFF_UP on the tap (needs CAP_NET_ADMIN).
    pub fn set_up(&self, up: bool) -> io::Result<()> {
        let ctl = self
            .ctl
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        let flags = self.if_flags()?;
        let flags = if up {
            flags | libc::IFF_UP as libc::c_short
        } else {
            flags & !(libc::IFF_UP as libc::c_short)
        };
        let mut req = IfReqFlags::new(&self.name, flags);
        ioctl_ptr(ctl.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn send(&mut self, iovs: &[IoSlice]) -> io::Result<usize> {
        loop {
            // SAFETY: `IoSlice` is ABI-compatible with `struct iovec`; the slices are valid for
            // the call. The count is bounded by the caller (virtio-net: MAX_TX_SEGMENTS, the
            // kernel's UIO_MAXIOV; more would fail with EINVAL).
            let r = unsafe {
                libc::writev(
                    self.file.as_raw_fd(),
                    iovs.as_ptr() as *const libc::iovec,
                    iovs.len().min(libc::c_int::MAX as usize) as libc::c_int,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // TUNSETOFFLOAD takes the flags by value.
        // SAFETY: an integer-argument ioctl on our own descriptor.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Up when the tap is still attached and administratively up (IFF_UP) on the host side.
    fn link_up(&self) -> bool {
        match self.if_flags() {
            Ok(f) => f & libc::IFF_UP as libc::c_short != 0,
            // No control socket: attached is all that can be checked.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.current_name().is_some(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn open_errors_name_the_tap_and_the_fix() {
        let e = map_setiff_error("tap7", err(libc::EBUSY));
        assert!(matches!(e, TapError::Busy { .. }));
        assert_eq!(
            e.to_string(),
            "tap tap7 is in use by another process (stop it, or use another tap)"
        );

        let e = map_setiff_error("tap7", err(libc::EPERM));
        assert!(matches!(e, TapError::PermissionDenied { .. }));
        let s = e.to_string();
        assert!(s.contains("CAP_NET_ADMIN"), "{s}");
        assert!(s.contains("ip tuntap add tap7 mode tap user $USER"), "{s}");

        let e = map_setiff_error("lo", err(libc::EINVAL));
        assert!(matches!(e, TapError::NotATap { .. }));
        assert!(e.to_string().contains("ip link del lo"));

        let e = map_setiff_error("tap7", err(libc::ENOMEM));
        assert!(matches!(e, TapError::Io { .. }));
        assert!(e.to_string().contains("tap7"));

        for errno in [libc::ENOENT, libc::ENODEV] {
            let e = map_open_error("tap7", err(errno));
            assert!(matches!(e, TapError::NoTunDevice { .. }));
            assert!(e.to_string().contains("modprobe tun"), "{e}");
            assert!(e.to_string().contains("tap7"), "{e}");
        }
        let e = map_open_error("tap7", err(libc::EACCES));
        assert!(matches!(e, TapError::TunDeviceAccess { .. }));
        assert!(e.to_string().contains("/dev/net/tun"));
    }

    #[test]
    fn invalid_names_are_refused_before_any_syscall() {
        for n in ["", "a/b", "a:b", "a b", "0123456789abcdef", ".", ".."] {
            let e = Tap::open(n).unwrap_err();
            assert!(matches!(e, TapError::InvalidName { .. }), "{n:?}: {e}");
        }
        assert!(valid_name("0123456789abcde"));
        assert!(valid_name("kvmtap0"));
    }

    #[test]
    fn ifreq_name_round_trip() {
        let r = IfReqFlags::new("kvmtap0", 0x1234);
        assert_eq!(r.name(), "kvmtap0");
        assert_eq!(r.flags, 0x1234);
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        let r = IfReqFlags::new("0123456789abcdefXYZ", 0);
        assert_eq!(r.name(), "0123456789abcde");
    }
}

/// Test helpers that need a private network namespace.
#[cfg(test)]
pub(crate) mod netns {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// An EtherType for test frames (IEEE 802 local experimental).
    pub(crate) const ETHERTYPE: u16 = 0x88b5;

    /// A packet socket bound to `ifname` for [`ETHERTYPE`] frames, with a 2 s receive timeout.
    pub(crate) fn packet_socket(ifname: &str) -> OwnedFd {
        // SAFETY: plain socket(2), checked.
        let s = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                ETHERTYPE.to_be() as i32,
            )
        };
        assert!(s >= 0, "packet socket: {}", io::Error::last_os_error());
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(s) };
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETHERTYPE.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid timeval option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        fd
    }

    /// Runs `f` on a new thread that first moves into a fresh network namespace of its own
    /// (`unshare(CLONE_NEWNET)` affects only the calling thread), so nothing done in `f` can
    /// touch the host's interfaces. Returns `None` (the test should skip) when namespaces are
    /// not permitted here.
    pub(crate) fn in_new_netns<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        std::thread::spawn(move || {
            // SAFETY: unshare on the calling thread only; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: cannot create a network namespace: {}",
                    io::Error::last_os_error()
                );
                return None;
            }
            Some(f())
        })
        .join()
        .expect("netns test thread panicked")
    }
}

#[cfg(test)]
mod netns_tests {
    use super::netns::{in_new_netns, packet_socket, ETHERTYPE};
    use super::*;
    use std::io::ErrorKind;
    use std::time::{Duration, Instant};

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]); // broadcast
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tap_round_trip_in_a_private_netns() {
        let r = in_new_netns(|| {
            if !std::path::Path::new(TUN_DEVICE).exists() {
                eprintln!("skipped: no {TUN_DEVICE}");
                return;
            }
            let mut tap = match Tap::open("kvmtest0") {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("skipped: {e}");
                    return;
                }
            };
            assert_eq!(tap.name(), "kvmtest0");
            assert!(!tap.link_up(), "a new tap is down");
            tap.set_up(true).unwrap();
            assert!(tap.link_up());
            tap.set_offload(crate::net::TUN_F_CSUM | crate::net::TUN_F_TSO4)
                .unwrap();
            tap.set_offload(0).unwrap();

            // A second open of the same tap: busy.
            let e = Tap::open("kvmtest0").unwrap_err();
            assert!(matches!(e, TapError::Busy { .. }), "{e}");

            let sock = packet_socket("kvmtest0");

            // Guest → host: header + frame written to the tap shows up on the interface.
            let out = frame(b"hello from the guest side, padded to a decent length....");
            let hdr = [0u8; VNET_HDR_LEN];
            let n = tap.send(&[IoSlice::new(&hdr), IoSlice::new(&out)]).unwrap();
            assert_eq!(n, VNET_HDR_LEN + out.len());
            let mut buf = [0u8; 2048];
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            assert!(n > 0, "recv: {}", io::Error::last_os_error());
            assert_eq!(&buf[..n as usize], &out[..]);

            // Host → guest: a frame sent on the interface is read from the tap with a header.
            let back = frame(b"and a reply from the host side.............................");
            // SAFETY: valid buffer.
            let n = unsafe {
                libc::send(
                    sock.as_raw_fd(),
                    back.as_ptr() as *const libc::c_void,
                    back.len(),
                    0,
                )
            };
            assert_eq!(n as usize, back.len(), "{}", io::Error::last_os_error());
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match tap.recv(&mut buf) {
                    Ok(n) => {
                        // Other traffic (IPv6 router solicitations...) may come first.
                        if buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETHERTYPE.to_be_bytes() {
                            assert_eq!(n, VNET_HDR_LEN + back.len());
                            assert_eq!(&buf[VNET_HDR_LEN..n], &back[..]);
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "frame never reached the tap");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("tap read: {e}"),
                }
            }

            tap.set_up(false).unwrap();
            assert!(!tap.link_up());
        });
        if r.is_none() {
            eprintln!("skipped: no network namespace");
        }
    }
}
