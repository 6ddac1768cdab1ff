//! Device models for kvmrun.
