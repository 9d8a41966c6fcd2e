//! Placeholder example; filled by later work.
fn main() {}
