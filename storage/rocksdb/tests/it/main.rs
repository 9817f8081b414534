//! The RocksDB engine's integration tests, one binary (house style rule 20):
//! the engine conformance suite, the row-store model test, and what only a
//! persistent engine can show (reopening keeps synced data).

use concord_storage::engine::EngineOptions;
use concord_storage::testing::conformance::Opened;
use concord_storage::testing::model;
use concord_storage_rocksdb::{RocksEngine, RocksTuning};
use proptest::prelude::*;

mod durability;

fn open_rocks(options: EngineOptions) -> Opened<RocksEngine> {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let engine = RocksEngine::open(directory.path(), options, &RocksTuning::default())
        .expect("open rocksdb");
    Opened::new(engine, directory)
}

mod rocks {
    concord_storage::engine_conformance_tests!(super::open_rocks);
}

proptest! {
    #![proptest_config(model::config(24))]

    #[test]
    fn rocks_engine_matches_the_model(ops in model::operations(60)) {
        model::check(&open_rocks, &ops);
    }
}
