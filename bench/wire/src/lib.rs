//! Holds only the benchmark; see benches/wire.rs.
