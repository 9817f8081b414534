//! Test support shared by every engine crate: the conformance suite and proptest strategies.

pub mod strategies;
