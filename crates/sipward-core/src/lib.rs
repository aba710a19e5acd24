//! sipward's gateway core: pure and sans-I/O.
//!
//! Contract (after quinn-proto): the core owns no socket and reads no clock. The driver
//! feeds it every received datagram with [`Gateway::handle_datagram`] (the time, the local
//! address it arrived on, the sender, the bytes), drains [`Gateway::poll_transmit`] after
//! each call, and calls [`Gateway::handle_timeout`] no later than
//! [`Gateway::poll_timeout`]. Every timer the brief names is data here, so tests run hours
//! of virtual time in microseconds.

mod cancel;
pub mod config;
mod flow;
mod gateway;
mod hide;
mod hiding;
pub mod media;
pub mod protect;
pub mod records;
mod retransmit;
mod state;

pub use config::{
    Action, AddressObject, AlgOptions, Config, LeakPolicy, Rule, Service, Zone, ZoneId,
};
pub use flow::{ConnectionId, Flow, Transport};
pub use gateway::{Counters, Gateway, PeerView, TableUsage, Traffic, Transmit};
pub use media::{
    CounterSnapshot, LegSpec, MediaCommand, MediaError, MediaTable, NoReservation, Peer,
    PortReserver, ReserveError, Side, StreamCounters, StreamId, StreamView,
};
pub use protect::{BanView, EventKind, FilterMode, ProtectionOptions, Rate, SecurityEvent};
pub use state::{BindingView, ConnectionUse, DialogView};
