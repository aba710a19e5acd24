//! The SDP fast path: the lines nearly every phone writes, in their usual exact forms.
//!
//! Two paths read an SDP body (see the parent module, [`super`]). This one takes `v=0`,
//! `o=` and `c=` with `IN IP4` and a dotted quad, `s=`, `t=0 0`, `m=` with a plain port,
//! `a=rtpmap` in its usual form, the direction attributes and other `a=`, `i=`, `b=`, `k=`
//! lines, each in one walk that finds the line's end, proves the line clean and reads its
//! fields, eight bytes at a time where that pays. It records nothing until a line is
//! known good and stops at the first line it does not take, which the general path
//! ([`super::general_line`]) then reads again from its start and judges: every verdict
//! and every error is the general path's. `fast_path_agrees_with_general_path` in the
//! parent's tests holds the two to the same results.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    known_attribute, AddrType, Attribute, Connection, Direction, Media, Origin, Progress, Sdp,
    SEEN_ALL, SEEN_O, SEEN_S, SEEN_V,
};
use crate::limits::Limits;
use crate::scan::{digit_run, find_non_graphic_or};

/// The length of the line ending at `s[i..]`: 0 at the end of the body, 1 for LF, 2 for
/// CR LF; `None` when something else follows (the line goes on, or has a stray CR).
#[inline(always)]
fn ending_at(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i) {
        None => Some(0),
        Some(b'\n') => Some(1),
        Some(b'\r') if s.get(i + 1) == Some(&b'\n') => Some(2),
        _ => None,
    }
}

/// Where the line that `v` starts ends: `(length without the ending, ending length)`,
/// when the line is clean (no NUL, no CR but in its ending).
#[inline(always)]
fn clean_line_end(v: &[u8]) -> Option<(usize, usize)> {
    // A word at a time, flagging every byte below 0x0e (the lowest flag is exact): in
    // SDP text that is nearly always the line's CR or LF, settled at once; anything
    // else (a tab, say), and the last few bytes of the body, go to a byte loop.
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = v.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let low = w.wrapping_sub(LO * 0x0e) & !w & HI;
        if low != 0 {
            let j = i + (low.trailing_zeros() / 8) as usize;
            return match v.get(j..j + 2) {
                Some([b'\n', _]) => LineEnd(j, 1),
                Some(b"\r\n") => LineEnd(j, 2),
                _ => clean_line_end_from(v, j),
            }
            .into_option();
        }
        i += 8;
    }
    clean_line_end_from(v, i).into_option()
}

/// A line's end as [`clean_line_end`] gives it, in two words so that a function
/// returns it in registers: `(length, ending length)`, `None` when unclean.
#[derive(Clone, Copy)]
struct LineEnd(usize, usize);

impl LineEnd {
    const UNCLEAN: usize = usize::MAX;

    #[inline(always)]
    fn into_option(self) -> Option<(usize, usize)> {
        (self.1 != Self::UNCLEAN).then_some((self.0, self.1))
    }
}

/// [`clean_line_end`] a byte at a time from `i` on (no CR, LF or NUL before it): for
/// the body's last bytes, fewer than a word, and for lines with other controls.
#[inline(never)]
fn clean_line_end_from(v: &[u8], i: usize) -> LineEnd {
    let mut j = i;
    while let Some(&b) = v.get(j) {
        if matches!(b, b'\r' | b'\n' | 0) {
            return LineEnd(j, ending_at(v, j).unwrap_or(LineEnd::UNCLEAN));
        }
        j += 1;
    }
    LineEnd(v.len(), 0)
}

/// The length of the run of ASCII graphic bytes (no space, control, DEL or above) at the
/// start of `s`.
#[inline(always)]
fn graphic_run(s: &[u8]) -> usize {
    // A word at a time (a space is not graphic: it stands in for no extra byte).
    find_non_graphic_or(s, b' ').unwrap_or(s.len())
}

/// The first eight bytes of `s` as a little-endian word, and how many of them, from the
/// first, are ASCII digits (8: all).
#[inline(always)]
fn digit_word(s: &[u8]) -> Option<(u64, usize)> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let w = u64::from_le_bytes(*s.first_chunk::<8>()?);
    // After the XOR a digit is 0..=9; adding 0x76 to the low seven bits sets bit 7 for
    // anything above, with no carry out of the byte, so every flag is exact.
    let a = w ^ (LO * u64::from(b'0'));
    let non_digit = (((a & LOW7) + LO * 0x76) | a) & (LO << 7);
    Some((w, (non_digit.trailing_zeros() / 8) as usize))
}

/// The decimal number of one to `max_digits` (at most seven) digits at the start of `s`,
/// not followed by another digit: `(value, length)`.
#[inline(always)]
fn number_at(s: &[u8], max_digits: usize) -> Option<(u32, usize)> {
    // The word holds eight bytes: a longer number could not be told from one cut at
    // eight digits (every caller passes a constant, so this test folds away).
    let Some((w, n)) = digit_word(s).filter(|_| max_digits < 8) else {
        return number_at_bytewise(s, max_digits);
    };
    if n == 0 || n > max_digits {
        return None;
    }
    // The digits moved to the top of the word, zeros (as digits) below, then summed in
    // pairs, fours and eights by three multiplications.
    let v = (w << (8 * (8 - n))) & 0x0f0f_0f0f_0f0f_0f0f;
    let v = (v.wrapping_mul(10 << 8 | 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_ffff_0000_ffff;
    let v = v.wrapping_mul(10000 << 32 | 1) >> 32;
    Some((v as u32, n))
}

/// [`number_at`] a byte at a time, for the body's last few bytes.
#[inline(never)]
fn number_at_bytewise(s: &[u8], max_digits: usize) -> Option<(u32, usize)> {
    let (value, n) = crate::scan::leading_number(s, max_digits)?;
    Some((u32::try_from(value).ok()?, n))
}

/// The decimal octet at `w[i..]`, as `parse_ipv4` reads one: one to three digits, no
/// leading zero, at most 255, not followed by another digit. `(value, length)`.
#[inline(always)]
fn octet_at(w: &[u8; 16], i: usize) -> Option<(u8, usize)> {
    // The mask keeps every read in the window without a bounds check; the caller never
    // reads past byte 15 (see `ipv4_prefix`), so it changes no index.
    let digit = |k: usize| w.get((i + k) & 15).map_or(10, |b| b.wrapping_sub(b'0'));
    let a = digit(0);
    if a > 9 {
        return None;
    }
    let b = digit(1);
    if b > 9 {
        return Some((a, 1));
    }
    // Two or three digits: no leading zero.
    let c = digit(2);
    if c > 9 {
        return (a != 0).then_some((a * 10 + b, 2));
    }
    if a == 0 || digit(3) <= 9 {
        return None;
    }
    let v = u32::from(a) * 100 + u32::from(b) * 10 + u32::from(c);
    Some((u8::try_from(v).ok()?, 3))
}

/// The dotted-quad address at the start of `s` and its length. Where `parse_ipv4` takes
/// the exact address, this reads up to the first byte that cannot continue it, so the
/// caller finds the line's end right after; with that end checked, the two agree.
#[inline(always)]
fn ipv4_prefix(s: &[u8]) -> Option<(Ipv4Addr, usize)> {
    // Octet k starts at most at byte 4k and is read through at most its fourth byte, so
    // no read goes past byte 15: a 16-byte window holds all of them. Near the body's end
    // it is padded with zeros, which end an address as the end of `s` does.
    let padded;
    let w: &[u8; 16] = match s.first_chunk::<16>() {
        Some(w) => w,
        None => {
            let mut p = [0u8; 16];
            if let Some(dst) = p.get_mut(..s.len()) {
                dst.copy_from_slice(s);
            }
            padded = p;
            &padded
        }
    };
    let (a, n) = octet_at(w, 0)?;
    let mut i = n;
    let mut octets = [a, 0, 0, 0];
    for o in octets.iter_mut().skip(1) {
        if w.get(i & 15) != Some(&b'.') {
            return None;
        }
        let (v, n) = octet_at(w, i + 1)?;
        *o = v;
        i += 1 + n;
    }
    Some((Ipv4Addr::from(octets), i))
}

/// The usual `a=rtpmap` value, `<pt> <encoding>/<clock rate>[/<params>]` with a single
/// space, at the start of `p` (after `rtpmap:`), as [`clean_line_end`] measures the line.
/// `None` for anything else, which [`parse_rtpmap`](super::parse_rtpmap) then judges.
#[inline(always)]
fn rtpmap_fast(p: &[u8]) -> Option<(usize, usize)> {
    // One to three digits, the usual payload type, summed directly; longer ones (leading
    // zeros) go to number_at.
    let (pt, n) = match digit_word(p) {
        Some((w, n @ 1..=3)) => {
            let d = |k: u32| ((w >> (8 * k)) & 0xf) as u32;
            let pt = match n {
                1 => d(0),
                2 => d(0) * 10 + d(1),
                _ => d(0) * 100 + d(1) * 10 + d(2),
            };
            (pt, n)
        }
        _ => number_at(p, 5)?,
    };
    if pt > 127 || p.get(n) != Some(&b' ') {
        return None;
    }
    let rest = p.get(n + 1..)?;
    let e = find_non_graphic_or(rest, b'/').unwrap_or(rest.len());
    if e == 0 || rest.get(e) != Some(&b'/') {
        return None;
    }
    let clock = rest.get(e + 1..)?;
    // One to nine digits; their value is not needed here.
    let c = match digit_word(clock) {
        Some((_, c)) if c < 8 => c,
        _ => digit_run(clock),
    };
    if c == 0 || c > 9 {
        return None;
    }
    let end = n + 1 + e + 1 + c;
    match clock.get(c) {
        // The parameters are anything to the end of the line.
        Some(b'/') => {
            let (len, ending) = clean_line_end(clock.get(c + 1..)?)?;
            Some((end + 1 + len, ending))
        }
        _ => Some((end, ending_at(clock, c)?)),
    }
}

/// The fast path's session header, v=, o= and s= (once each, in any order), as
/// [`fast_lines`] takes the other lines; out of its loop, which they would only weigh on.
/// It stops at any other line, which [`general_line`](super::general_line) takes, and is
/// called again after it until all three are seen.
#[inline(always)]
fn fast_header<'a>(body: &'a [u8], limits: &Limits, out: &mut Sdp<'a>, st: &mut Progress) {
    // After an m= line a session line is misplaced: the general path says so.
    if !out.media.is_empty() {
        return;
    }
    while let Some(rest) = body.get(st.pos..) {
        let [kind, b'=', v @ ..] = rest else {
            return;
        };
        if st.count >= limits.max_sdp_lines {
            return;
        }
        let (n, e) = match *kind {
            b'v' if st.seen & SEEN_V == 0 => {
                if v.first() != Some(&b'0') {
                    return;
                }
                let Some(e) = ending_at(v, 1) else {
                    return;
                };
                if 3 > limits.max_param_len {
                    return;
                }
                st.seen |= SEEN_V;
                (1, e)
            }
            b'o' if st.seen & SEEN_O == 0 => {
                // <username> <digits> <digits> IN IP4 <dotted quad>, single spaces. Each
                // field is split off with what follows it, so none is sliced again.
                let Some((username, after)) = v.split_at_checked(graphic_run(v)) else {
                    return;
                };
                let (false, Some((b' ', ids))) = (username.is_empty(), after.split_first()) else {
                    return;
                };
                let Some((session_id, after)) = ids.split_at_checked(digit_run(ids)) else {
                    return;
                };
                let (false, Some((b' ', version))) = (session_id.is_empty(), after.split_first())
                else {
                    return;
                };
                let Some((session_version, after)) = version.split_at_checked(digit_run(version))
                else {
                    return;
                };
                let (false, Some((b" IN IP4 ", addr))) =
                    (session_version.is_empty(), after.split_first_chunk::<8>())
                else {
                    return;
                };
                let Some((ip, len)) = ipv4_prefix(addr) else {
                    return;
                };
                let n = v.len() - addr.len() + len;
                let Some(e) = ending_at(v, n) else {
                    return;
                };
                if n + 2 > limits.max_param_len {
                    return;
                }
                out.origin = Origin {
                    username,
                    session_id,
                    session_version,
                    net_type: after.get(1..3).unwrap_or_default(),
                    addr_type: AddrType::Ip4,
                    address: addr.get(..len).unwrap_or_default(),
                };
                st.origin_ip = Some(ip);
                st.seen |= SEEN_O;
                (n, e)
            }
            b's' if st.seen & SEEN_S == 0 => {
                // Empty is allowed: real phones send `s=` (RFC 5118 section 4.8).
                let Some((n, e)) = clean_line_end(v) else {
                    return;
                };
                if n + 2 > limits.max_param_len {
                    return;
                }
                out.session_name = v.get(..n).unwrap_or_default();
                st.seen |= SEEN_S;
                (n, e)
            }
            _ => return,
        };
        st.count += 1;
        st.pos += 2 + n + e;
        st.section.end = st.pos;
        if st.seen == SEEN_ALL {
            return;
        }
    }
}

/// The fast path: the usual lines in their usual exact forms, each read in one walk
/// that also finds its end and proves it clean, from `st.pos` on until a line is not one
/// of them. Nothing is changed until a line is known good; the line it stops at, errors
/// included, goes to [`general_line`](super::general_line), which reads it again from its
/// start and judges it.
pub(super) fn fast_lines<'a>(
    body: &'a [u8],
    limits: &Limits,
    out: &mut Sdp<'a>,
    st: &mut Progress,
) {
    if st.seen != SEEN_ALL {
        fast_header(body, limits, out, st);
        if st.seen != SEEN_ALL {
            return;
        }
    }
    // Past the header every line may be any type but v, o and s.
    let media = &mut out.media;
    let mut pos = st.pos;
    let mut count = st.count;
    let mut timing = st.timing;
    let mut section_end = st.section.end;
    'lines: while let Some(rest) = body.get(pos..) {
        let [kind, b'=', v @ ..] = rest else {
            break 'lines;
        };
        if count >= limits.max_sdp_lines {
            break 'lines;
        }
        // The value's length (the line's less its type and `=`) and its ending's.
        let (n, e) = match *kind {
            b'a' => {
                if let Some(p) = v.strip_prefix(b"rtpmap:") {
                    let Some((i, e)) = rtpmap_fast(p) else {
                        break 'lines;
                    };
                    let n = 7 + i;
                    if n + 2 > limits.max_param_len {
                        break 'lines;
                    }
                    (n, e)
                } else {
                    let Some((n, e)) = clean_line_end(v) else {
                        break 'lines;
                    };
                    if n + 2 > limits.max_param_len {
                        break 'lines;
                    }
                    // Only names that start with r, s or i are known (a direction, rtcp or
                    // rtpmap); a direction alone is compared whole, as one word.
                    let direction = match v.first() {
                        Some(b'r' | b's' | b'i') => match v.get(..n).unwrap_or_default() {
                            b"sendrecv" => Some(Direction::SendRecv),
                            b"sendonly" => Some(Direction::SendOnly),
                            b"recvonly" => Some(Direction::RecvOnly),
                            b"inactive" => Some(Direction::Inactive),
                            value => match known_attribute(value) {
                                Attribute::Other => None,
                                Attribute::Direction(d) => Some(d),
                                _ => break 'lines,
                            },
                        },
                        _ => None,
                    };
                    if let Some(d) = direction {
                        match media.last_mut() {
                            Some(m) => m.direction = Some(d),
                            None => out.direction = Some(d),
                        }
                    }
                    (n, e)
                }
            }
            b'c' => {
                let Some(addr) = v.strip_prefix(b"IN IP4 ") else {
                    break 'lines;
                };
                // The origin's address again needs no second read: followed by a byte that
                // is not a digit, it is the whole dotted quad here, as ipv4_prefix would
                // find (it reads at most one byte past an address).
                let origin = out.origin.address;
                let same = match (st.origin_ip, addr.get(origin.len())) {
                    (Some(ip), next) if !next.is_some_and(u8::is_ascii_digit) => {
                        (addr.get(..origin.len()) == Some(origin)).then_some((ip, origin.len()))
                    }
                    _ => None,
                };
                let Some((ip, len)) = same.or_else(|| ipv4_prefix(addr)) else {
                    break 'lines;
                };
                let n = 7 + len;
                let Some(e) = ending_at(v, n) else {
                    break 'lines;
                };
                if n + 2 > limits.max_param_len {
                    break 'lines;
                }
                let c = Connection {
                    addr_type: AddrType::Ip4,
                    address: addr.get(..len).unwrap_or_default(),
                    ip: Some(IpAddr::V4(ip)),
                    line: rest.get(..n + 2).unwrap_or_default(),
                };
                match media.last_mut() {
                    Some(m) if m.connection.is_none() => m.connection = Some(c),
                    None if out.connection.is_none() => out.connection = Some(c),
                    _ => break 'lines,
                }
                (n, e)
            }
            b'm' if timing && media.len() < limits.max_sdp_media => {
                // kind, port (no count), proto, formats; single spaces.
                let k = graphic_run(v);
                if k == 0 || v.get(k) != Some(&b' ') {
                    break 'lines;
                }
                let Some(after_kind) = v.get(k + 1..) else {
                    break 'lines;
                };
                let Some((port, p)) = number_at(after_kind, 5) else {
                    break 'lines;
                };
                let Ok(port) = u16::try_from(port) else {
                    break 'lines;
                };
                if after_kind.get(p) != Some(&b' ') {
                    break 'lines;
                }
                let Some(after_port) = after_kind.get(p + 1..) else {
                    break 'lines;
                };
                let r = graphic_run(after_port);
                if r == 0 || after_port.get(r) != Some(&b' ') {
                    break 'lines;
                }
                let Some(formats) = after_port.get(r + 1..) else {
                    break 'lines;
                };
                // Anything to the end of the line, not blank: it starts with a graphic byte.
                if !formats.first().is_some_and(|b| (0x21..=0x7e).contains(b)) {
                    break 'lines;
                }
                let Some((f, e)) = clean_line_end(formats) else {
                    break 'lines;
                };
                let n = k + 1 + p + 1 + r + 1 + f;
                if n + 2 > limits.max_param_len {
                    break 'lines;
                }
                if let Some(m) = media.last_mut() {
                    m.section = body.get(st.section.start..section_end).unwrap_or(m.section);
                }
                let next = pos + 2 + n + e;
                media.push(Media {
                    kind: v.get(..k).unwrap_or_default(),
                    port,
                    port_token: after_kind.get(..p).unwrap_or_default(),
                    port_count: None,
                    proto: after_port.get(..r).unwrap_or_default(),
                    formats: formats.get(..f).unwrap_or_default(),
                    connection: None,
                    rtcp: None,
                    direction: None,
                    section: rest.get(..n + 2 + e).unwrap_or_default(),
                });
                st.section.start = pos;
                section_end = next;
                count += 1;
                pos = next;
                continue 'lines;
            }
            b't' if media.is_empty() => {
                if v.get(..3) != Some(b"0 0") {
                    break 'lines;
                }
                let Some(e) = ending_at(v, 3) else {
                    break 'lines;
                };
                if 5 > limits.max_param_len {
                    break 'lines;
                }
                timing = true;
                (3, e)
            }
            b'i' | b'b' | b'k' => {
                let Some((n, e)) = clean_line_end(v) else {
                    break 'lines;
                };
                if n + 2 > limits.max_param_len {
                    break 'lines;
                }
                (n, e)
            }
            _ => break 'lines,
        };
        count += 1;
        pos += 2 + n + e;
        section_end = pos;
    }
    st.pos = pos;
    st.count = count;
    st.timing = timing;
    st.section.end = section_end;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uri::parse_ipv4;

    #[test]
    fn ipv4_prefix_agrees_with_parse_ipv4() {
        let octets = [
            "0", "00", "000", "1", "01", "001", "9", "10", "99", "100", "199", "200", "249", "250",
            "255", "256", "299", "999", "1000", "", "a", "-1",
        ];
        let mut addrs = vec![
            "1.2.3".to_string(),
            "1.2.3.4.5".to_string(),
            "1..2.3".to_string(),
            "255.255.255.255".to_string(),
            "192.168.1.20".to_string(),
        ];
        for o in octets {
            for k in 0..4 {
                let mut parts = ["1", "22", "133", "4"];
                parts[k] = o;
                addrs.push(parts.join("."));
            }
        }
        for addr in &addrs {
            for tail in ["\r\n", "\n", "", " x", "\r\ns=call\r\nc=IN IP4 1.2.3.4\r\n"] {
                let s = format!("{addr}{tail}");
                // As the fast path uses it: an address of exactly these bytes.
                let fast = ipv4_prefix(s.as_bytes())
                    .filter(|&(_, len)| len == addr.len())
                    .map(|(ip, _)| ip);
                assert_eq!(fast, parse_ipv4(addr.as_bytes()), "{s:?}");
            }
        }
    }

    #[test]
    fn word_number_agrees_with_bytewise() {
        for digits in [
            "",
            "0",
            "7",
            "42",
            "127",
            "128",
            "0127",
            "65535",
            "65536",
            "000000",
            "1234567",
            "12345678",
            "123456789",
            "4294967295",
            "4294967296",
            "99999999999",
        ] {
            for tail in ["", " ", "/", "\r\n", " 0 8 101\r\n", "x", "0"] {
                let s = format!("{digits}{tail}");
                for max in 1..=12 {
                    assert_eq!(
                        number_at(s.as_bytes(), max),
                        number_at_bytewise(s.as_bytes(), max),
                        "{s:?} {max}"
                    );
                }
            }
        }
    }
}
