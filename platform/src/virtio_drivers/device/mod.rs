//! Drivers for specific VirtIO devices (of upstream's, only network).

pub mod common;
pub mod net;
