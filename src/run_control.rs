//! What a caller can add to a run beyond the machine itself (`kvmrun exec` uses all of it):
//! a time limit, lifecycle events, an API socket, and its own console writers.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::EventLog;

#[derive(Default)]
pub struct RunControl {
    /// Stop the VM (reason `timeout`) if it is still running this long after its vCPUs start.
    pub timeout: Option<Duration>,
    pub events: Option<Arc<EventLog>>,
    /// Serve the control API on this Unix socket for the run's lifetime.
    pub api_socket: Option<PathBuf>,
    /// Where COM1 (the guest's console) transmits; replaces what `VmConfig::console` names.
    pub console_out: Option<Box<dyn Write + Send>>,
    /// Where COM2 (ports 0x2f8-0x2ff, IRQ 3, the guest's ttyS1) transmits; discarded if None.
    pub com2_out: Option<Box<dyn Write + Send>>,
    /// How long the guest gets to shut down after a host signal (None: the default, 10 s;
    /// zero: stop at once).
    pub shutdown_grace: Option<Duration>,
}
