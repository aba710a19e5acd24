//! Size and count limits applied while parsing.
//!
//! Every limit bounds how much work and memory one datagram can cost. The defaults are
//! the founding brief's (1024 bytes per parameter, 6048 per message, 4000 per SDP body)
//! plus count caps that keep every list the parser builds bounded.

/// Limits the parser enforces. Each is inclusive: a value exactly at the limit is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest single parameter: a header or URI parameter, or one comma-separated element
    /// of a header value.
    pub max_param_len: usize,
    /// Longest whole message (one datagram).
    pub max_message_len: usize,
    /// Longest SDP body.
    pub max_sdp_len: usize,
    /// Most header fields (lines, after unfolding) in one message.
    pub max_headers: usize,
    /// Most Via entries in one message, counting every comma-separated value.
    pub max_vias: usize,
    /// Most Route plus Record-Route entries in one message.
    pub max_routes: usize,
    /// Most Contact entries in one message.
    pub max_contacts: usize,
    /// Most parameters on one header value or URI.
    pub max_params: usize,
    /// Most `m=` sections in one SDP body.
    pub max_sdp_media: usize,
    /// Most lines in one SDP body.
    pub max_sdp_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_param_len: 1024,
            max_message_len: 6048,
            max_sdp_len: 4000,
            max_headers: 128,
            max_vias: 64,
            max_routes: 64,
            max_contacts: 32,
            max_params: 32,
            max_sdp_media: 16,
            max_sdp_lines: 256,
        }
    }
}
