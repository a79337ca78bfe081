//! The `capillary` command (under construction).
fn main() {}
