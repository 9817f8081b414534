//! Concord's real-cluster fault-injection harness — **not built yet** (the
//! Jepsen issue). It will start server processes, hurt them, record client
//! histories and check them with `concord-checker`.
//!
//! **Must never**: link the engine (`concord-server`, `concord-storage`):
//! it talks to nodes only through the clients a user would run.
