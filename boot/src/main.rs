//! Placeholder image builder.
fn main() {}
