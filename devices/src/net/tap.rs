//! The tap back-end (written by the virtio-net work).
