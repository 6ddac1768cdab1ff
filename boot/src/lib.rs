//! Kernel loading and the boot-time view of the machine.
