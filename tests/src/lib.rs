//! QEMU harness for daxbox system tests.
