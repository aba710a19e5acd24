//! SIP over TCP and TLS: certificates and TLS configuration, the limits a stream peer is
//! held to, and the task that runs one connection.

// Built ahead of the driver's listeners, which use them next (issue 18).
#![allow(dead_code)]

pub(crate) mod conn;
pub(crate) mod limits;
pub(crate) mod runtime;
pub(crate) mod tls;
