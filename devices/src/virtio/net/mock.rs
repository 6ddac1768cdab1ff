//! An in-memory [`NetBackend`] for tests, benchmarks and fuzzing: frames sent are recorded,
//! frames to receive are queued by the test. Its descriptor is an eventfd that polls readable
//! exactly while frames wait, like a tap's.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::NetBackend;

/// What a [`MockBackend`] saw and holds; shared with the test through [`MockHandle`].
#[derive(Debug, Default)]
pub struct MockState {
    /// Frames sent (header + frame, the iovecs concatenated).
    pub sent: Vec<Vec<u8>>,
    /// Frames waiting to be received (header + frame).
    pub to_receive: VecDeque<Vec<u8>>,
    /// `recv` calls made (including those that found nothing).
    pub recv_calls: u64,
    /// Last `set_offload` flags.
    pub offload: Option<u32>,
    /// What `link_up` answers.
    pub link_up: bool,
    /// When set, `send` fails with this errno.
    pub send_errno: Option<i32>,
    /// When false, sent frames are counted but not stored (benchmarks).
    pub keep_sent: bool,
    /// Frames sent (also counted when not kept).
    pub sent_count: u64,
}

/// The test's side of a [`MockBackend`].
#[derive(Debug, Clone)]
pub struct MockHandle {
    state: Arc<Mutex<MockState>>,
    event: Arc<EventFd>,
}

impl MockHandle {
    /// Queues a frame (header + frame) for the device to receive.
    pub fn push_rx(&self, frame: Vec<u8>) {
        let mut s = crate::lock(&self.state);
        s.to_receive.push_back(frame);
        let _ = self.event.write(1);
    }

    /// Runs `f` on the shared state.
    pub fn with<T>(&self, f: impl FnOnce(&mut MockState) -> T) -> T {
        f(&mut crate::lock(&self.state))
    }

    /// Takes the frames sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut crate::lock(&self.state).sent)
    }

    pub fn recv_calls(&self) -> u64 {
        crate::lock(&self.state).recv_calls
    }

    pub fn set_link_up(&self, up: bool) {
        crate::lock(&self.state).link_up = up;
    }
}

/// An in-memory back-end.
#[derive(Debug)]
pub struct MockBackend {
    state: Arc<Mutex<MockState>>,
    event: Arc<EventFd>,
}

impl MockBackend {
    /// A back-end with the link up, and the handle to drive it.
    pub fn new() -> (MockBackend, MockHandle) {
        let state = Arc::new(Mutex::new(MockState {
            link_up: true,
            keep_sent: true,
            ..MockState::default()
        }));
        let event = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        (
            MockBackend {
                state: state.clone(),
                event: event.clone(),
            },
            MockHandle { state, event },
        )
    }
}

impl NetBackend for MockBackend {
    fn send(&mut self, iovs: &[IoSlice]) -> io::Result<usize> {
        let mut s = crate::lock(&self.state);
        if let Some(errno) = s.send_errno {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let len = iovs.iter().map(|i| i.len()).sum();
        s.sent_count += 1;
        if s.keep_sent {
            let mut f = Vec::with_capacity(len);
            for i in iovs {
                f.extend_from_slice(i);
            }
            s.sent.push(f);
        }
        Ok(len)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = crate::lock(&self.state);
        s.recv_calls += 1;
        let Some(f) = s.to_receive.pop_front() else {
            let _ = self.event.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if s.to_receive.is_empty() {
            // Drain the counter: not readable any more.
            let _ = self.event.read();
        }
        // Like a tap: a frame longer than the buffer is truncated.
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        crate::lock(&self.state).offload = Some(flags);
        Ok(())
    }

    fn link_up(&self) -> bool {
        crate::lock(&self.state).link_up
    }
}
