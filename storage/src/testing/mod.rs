//! Test support shared by every engine crate: the conformance suite and proptest strategies.

pub mod conformance;
pub mod model;
pub mod strategies;
