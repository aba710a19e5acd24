//! TEMPORARY STUB: helper-1 replaces this file with the real SDP parser.
use crate::limits::Limits;
#[derive(Debug, Clone)]
pub struct Sdp<'a> {
    pub body: &'a [u8],
    pub media: Vec<()>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpError {
    TooLarge,
    TooManyLines,
    TooManyMedia,
    BadLine,
}
impl SdpError {
    pub fn as_str(&self) -> &'static str {
        "bad SDP"
    }
}
pub fn parse<'a>(body: &'a [u8], _limits: &Limits) -> Result<Sdp<'a>, SdpError> {
    if body.starts_with(b"v=0") {
        Ok(Sdp {
            body,
            media: vec![()],
        })
    } else {
        Err(SdpError::BadLine)
    }
}
impl<'a> Sdp<'a> { pub fn addresses(&self) -> impl Iterator<Item = &'a [u8]> + '_ { std::iter::empty() } }
