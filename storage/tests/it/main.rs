//! The storage crate's integration tests, one binary (house style rule 20):
//! the engine conformance suite and the row-store model test against
//! [`MemoryEngine`].

use concord_storage::engine::EngineOptions;
use concord_storage::memory::MemoryEngine;
use concord_storage::testing::conformance::Opened;
use concord_storage::testing::model;
use proptest::prelude::*;

fn open_memory(options: EngineOptions) -> Opened<MemoryEngine> {
    Opened::new(MemoryEngine::new(options), ())
}

/// The crash-simulating engine must behave the same while nothing crashes.
fn open_memory_with_crash_simulation(options: EngineOptions) -> Opened<MemoryEngine> {
    Opened::new(MemoryEngine::with_crash_simulation(options), ())
}

mod memory {
    concord_storage::engine_conformance_tests!(super::open_memory);
}

mod memory_with_crash_simulation {
    concord_storage::engine_conformance_tests!(super::open_memory_with_crash_simulation);
}

proptest! {
    #![proptest_config(model::config(64))]

    #[test]
    fn memory_engine_matches_the_model(ops in model::operations(60)) {
        model::check(&open_memory, &ops);
    }
}
