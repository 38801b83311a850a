//! SMART-OS umbrella package: see the benches and examples.
