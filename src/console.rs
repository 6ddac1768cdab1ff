//! The host side of the serial console: the terminal's raw mode, the Ctrl-A escape, and stdin
//! feeding the guest's UART.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use devices::serial::Serial;
use devices::vm_exit::{ExitReason, ExitSignal};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

/// The escape byte: Ctrl-A, as in QEMU and screen.
const ESCAPE: u8 = 0x01;

/// What one input byte means once the escape sequence is taken out.
#[derive(Debug, PartialEq, Eq)]
pub enum EscapeAction {
    /// Bytes for the guest.
    Forward(Vec<u8>),
    /// The user asked to quit (Ctrl-A x).
    Quit,
}

/// Ctrl-A x quits; Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A followed by anything else sends both.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    pub fn filter(&mut self, input: &[u8]) -> EscapeAction {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return EscapeAction::Quit,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        EscapeAction::Forward(out)
    }
}

/// Puts a terminal in raw mode and restores its settings when dropped.
pub struct RawModeGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl RawModeGuard {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise (a pipe or /dev/null needs nothing).
    pub fn new(fd: RawFd) -> io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host terminal still turns \n into \r\n for any
        // diagnostics kvmrun prints; the guest's console output is already \r\n.
        raw.c_oflag |= libc::OPOST;
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawModeGuard { fd, saved }))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in new() on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Reads stdin when it is readable and hands the bytes to the guest's UART.
pub struct ConsoleInput {
    serial: Arc<Serial>,
    exit: Arc<ExitSignal>,
    filter: EscapeFilter,
    /// Bytes the UART's FIFO had no room for yet; retried on the next event-loop turn.
    pending: Vec<u8>,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Serial>, exit: Arc<ExitSignal>) -> Self {
        ConsoleInput {
            serial,
            exit,
            filter: EscapeFilter::default(),
            pending: Vec::new(),
        }
    }

    /// Whether bytes wait for room in the guest's receive FIFO.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Moves as many pending bytes into the UART as it takes.
    pub fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.serial.enqueue_input(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n.min(self.pending.len()));
            }
            Err(e) => {
                log::warn!("console input dropped: {e}");
                self.pending.clear();
            }
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let stdin = io::stdin();
        // SAFETY: reading into a stack buffer we own from the process's stdin.
        let n = unsafe { libc::read(stdin.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // End of input (e.g. stdin is /dev/null in CI): stop watching it, keep the guest.
                let _ = ops.remove(Events::new(&stdin, EventSet::IN));
            }
            return;
        }
        match self.filter.filter(&buf[..n as usize]) {
            EscapeAction::Quit => self.exit.request(ExitReason::Quit),
            EscapeAction::Forward(bytes) => {
                self.pending.extend_from_slice(&bytes);
                self.flush_pending();
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().intersects(EventSet::IN) {
            self.read_stdin(ops);
        } else {
            // Hang-up or error on stdin: nothing more will come.
            let _ = ops.remove(events);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // A regular file or /dev/null cannot be watched with epoll (EPERM); it also has
        // nothing to type, so the guest simply gets no console input.
        if let Err(e) = ops.add(Events::new(&io::stdin(), EventSet::IN)) {
            log::debug!("console input disabled: cannot watch stdin: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_pass_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r"), EscapeAction::Forward(b"ls\r".to_vec()));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"a\x01"), EscapeAction::Forward(b"a".to_vec()));
        assert_eq!(f.filter(b"x"), EscapeAction::Quit);
    }

    #[test]
    fn double_ctrl_a_sends_one_and_other_keys_send_both() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"\x01\x01"), EscapeAction::Forward(vec![1]));
        assert_eq!(f.filter(b"\x01c"), EscapeAction::Forward(vec![1, b'c']));
    }
}
