//! The header edits both directions use: Contacts with routing tokens, the anchor at
//! the gateway, Vias, Max-Forwards, Expires.

use super::*;

/// `user@host` of a URI, the key for per-user limits and bindings.
pub(super) fn aor_of(uri: &Uri<'_>) -> Vec<u8> {
    match uri {
        Uri::Sip(u) => {
            let mut v = u.user.unwrap_or_default().to_vec();
            v.push(b'@');
            v.extend_from_slice(u.host.as_bytes());
            v
        }
        other => other.raw().to_vec(),
    }
}

pub(super) fn first_contact(msg: &Message<'_>) -> Vec<u8> {
    first_contact_uri(msg)
}

pub(super) fn first_contact_uri(msg: &Message<'_>) -> Vec<u8> {
    msg.contacts()
        .list
        .first()
        .map(|c| c.uri.raw().to_vec())
        .unwrap_or_default()
}

/// The user a REGISTER speaks for: the digest username when it carries credentials,
/// else the user part of its address-of-record.
pub(super) fn register_user(msg: &Message<'_>) -> String {
    let digest = msg
        .authorization()
        .or(msg.proxy_authorization())
        .and_then(|c| c.username);
    let user = digest.or_else(|| msg.to().and_then(|t| t.uri.as_sip()).and_then(|u| u.user));
    String::from_utf8_lossy(user.unwrap_or_default()).into_owned()
}

/// Keeps the gateway in every dialog a phone takes part in: the far end's Contact becomes
/// the gateway's inside address and its Record-Route goes (the gateway keeps the route
/// set), so that the phone sends in-dialog requests to the gateway and nowhere else.
pub(super) fn anchor_at_gateway(
    msg: &Message<'_>,
    edits: &mut Edits,
    lan: &str,
    transport: Transport,
) -> Result<(), sipward_proto::EditError> {
    for contact in &msg.contacts().list {
        let Uri::Sip(u) = &contact.uri else { continue };
        let (scheme, transport_param) = leg_scheme(u.secure, transport);
        let mut anchored = match u.user {
            Some(user) => format!("{scheme}:{}@{lan}", String::from_utf8_lossy(user)),
            None => format!("{scheme}:{lan}"),
        };
        if let Some(t) = transport_param {
            anchored.push_str(";transport=");
            anchored.push_str(t);
        }
        if contact.bracketed {
            edits.replace(msg, u.raw, anchored.as_bytes())?;
        } else {
            edits.replace(msg, u.raw, format!("<{anchored}>").as_bytes())?;
        }
    }
    for f in msg
        .headers()
        .iter()
        .filter(|f| f.name == HeaderName::RecordRoute)
    {
        edits.remove_field(msg, f)?;
    }
    Ok(())
}

/// Our Via value on a leg of `transport` (RFC 3261 18.2.1: `rport` asks for the
/// source port in the response; harmless on streams).
pub(super) fn via_value(transport: Transport, host_port: &str, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {host_port};branch={branch};rport",
        transport.via_token()
    )
}

/// A contact URI's scheme and transport parameter on a leg of `transport`: what the
/// other leg wrote is never copied (RFC 3261 19.1.4, RFC 5630: `sips:` only where the
/// leg is TLS).
fn leg_scheme(secure: bool, transport: Transport) -> (&'static str, Option<&'static str>) {
    match transport {
        Transport::Tls if secure => ("sips", None),
        Transport::Tls => ("sip", Some("tls")),
        Transport::Tcp => ("sip", Some("tcp")),
        Transport::Udp => ("sip", None),
    }
}

/// The phone's contact URI with the gateway's address and a routing token, for a leg
/// of `transport`.
pub(super) fn contact_uri(
    u: &sipward_proto::SipUri<'_>,
    host_port: &str,
    token: &str,
    transport: Transport,
) -> String {
    let (scheme, transport_param) = leg_scheme(u.secure, transport);
    let mut s = String::from(scheme);
    s.push(':');
    if let Some(user) = u.user {
        s.push_str(&String::from_utf8_lossy(user));
        s.push('@');
    }
    s.push_str(host_port);
    for (name, value) in u.params() {
        if name.eq_ignore_ascii_case(TOKEN_PARAM.as_bytes())
            || name.eq_ignore_ascii_case(b"transport")
        {
            continue;
        }
        s.push(';');
        s.push_str(&String::from_utf8_lossy(name));
        if let Some(v) = value {
            s.push('=');
            s.push_str(&String::from_utf8_lossy(v));
        }
    }
    if let Some(t) = transport_param {
        s.push_str(";transport=");
        s.push_str(t);
    }
    s.push(';');
    s.push_str(TOKEN_PARAM);
    s.push('=');
    s.push_str(token);
    s
}

pub(super) fn with_tag(value: &[u8], tag: Option<&[u8]>) -> Vec<u8> {
    let mut v = value.to_vec();
    if let Some(tag) = tag {
        if !has_tag(value) {
            v.extend_from_slice(b";tag=");
            v.extend_from_slice(tag);
        }
    }
    v
}

pub(super) fn field_contains(
    msg: &Message<'_>,
    f: &sipward_proto::HeaderField<'_>,
    r: &std::ops::Range<usize>,
) -> bool {
    msg.range_of(f.line)
        .is_some_and(|l| l.start <= r.start && r.end <= l.end)
}

pub(super) fn decrement_max_forwards(
    msg: &Message<'_>,
    edits: &mut Edits,
) -> Result<(), sipward_proto::EditError> {
    match (msg.max_forwards(), msg.header(HeaderName::MaxForwards)) {
        (Some(n), Some(f)) => {
            edits.replace(msg, f.value, n.saturating_sub(1).to_string().as_bytes())
        }
        _ => edits.append_field(msg, "Max-Forwards", b"70"),
    }
}

/// Removes the gateway's own (top) Via and puts `restore` (whole Via lines) in its place.
pub(super) fn remove_top_via(
    msg: &Message<'_>,
    edits: &mut Edits,
    restore: &[u8],
) -> Result<(), sipward_proto::EditError> {
    let Some(first) = msg.headers().iter().find(|f| f.name == HeaderName::Via) else {
        return Ok(());
    };
    let Some(line) = msg.range_of(first.line) else {
        return Ok(());
    };
    match msg
        .vias()
        .get(1)
        .and_then(|v| msg.range_of(v.raw))
        .filter(|r| r.start < line.end)
    {
        // The first Via field holds more entries: drop just ours (up to the next one).
        Some(second) => {
            let value = msg.range_of(first.value).map_or(line.start, |v| v.start);
            edits.replace_range(msg, value..second.start, b"")?;
            edits.insert(msg, line.start, restore)
        }
        None => edits.replace_range(msg, line, restore),
    }
}

/// Caps Expires (header and Contact parameter) of a REGISTER at `max`.
pub(super) fn cap_expires(
    msg: &Message<'_>,
    edits: &mut Edits,
    max: Duration,
) -> Result<(), sipward_proto::EditError> {
    let max = max.as_secs();
    if let (Some(e), Some(f)) = (msg.expires(), msg.header(HeaderName::Expires)) {
        if u64::from(e) > max {
            edits.replace(msg, f.value, max.to_string().as_bytes())?;
        }
    }
    for c in &msg.contacts().list {
        cap_contact_expires(msg, edits, c, max)?;
    }
    Ok(())
}

pub(super) fn cap_contact_expires(
    msg: &Message<'_>,
    edits: &mut Edits,
    c: &NameAddr<'_>,
    max: u64,
) -> Result<(), sipward_proto::EditError> {
    if let Some(Some(v)) = c.params.get("expires") {
        if c.expires().is_some_and(|e| u64::from(e) > max) {
            edits.replace(msg, v, max.to_string().as_bytes())?;
        }
    }
    Ok(())
}

/// In a 2xx to REGISTER: put the phone's contact back in place of the gateway's, cap the
/// granted time, and return it (`None`: the binding is gone).
pub(super) fn restore_register_contacts(
    msg: &Message<'_>,
    edits: &mut Edits,
    reg: &RegisterInfo,
    max: Duration,
) -> Result<Option<Duration>, sipward_proto::EditError> {
    let mut granted = None;
    for c in &msg.contacts().list {
        let Uri::Sip(u) = &c.uri else { continue };
        let ours = u
            .param(TOKEN_PARAM)
            .flatten()
            .is_some_and(|t| t == reg.token.as_bytes());
        if !ours {
            continue;
        }
        let secs = c
            .expires()
            .or(msg.expires())
            .map_or(3600, u64::from)
            .min(max.as_secs());
        edits.replace(msg, u.raw, &reg.inside_contact)?;
        cap_contact_expires(msg, edits, c, max.as_secs())?;
        granted = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let (Some(e), Some(f)) = (msg.expires(), msg.header(HeaderName::Expires)) {
        if u64::from(e) > max.as_secs() {
            edits.replace(msg, f.value, max.as_secs().to_string().as_bytes())?;
        }
    }
    Ok(granted)
}

/// Whether a response's top Via is one the gateway wrote at `local` (its address or
/// advertised name, the port, our branch prefix).
pub(super) fn via_is_ours(
    config: &Config,
    via: &sipward_proto::Via<'_>,
    local: SocketAddr,
) -> bool {
    let default_port = if via.transport.eq_ignore_ascii_case(b"TLS") {
        5061
    } else {
        5060
    };
    let host = match via.host.ip() {
        Some(ip) => ip == local.ip(),
        None => config
            .zone_of_local(local)
            .and_then(|z| config.zone(z))
            .and_then(|z| z.advertise.as_deref())
            .is_some_and(|name| name.as_bytes().eq_ignore_ascii_case(via.host.as_bytes())),
    };
    // Where the gateway opened the connection its Via names the leg's listening port.
    let transport = if via.transport.eq_ignore_ascii_case(b"TLS") {
        Transport::Tls
    } else if via.transport.eq_ignore_ascii_case(b"TCP") {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let port = via.port.unwrap_or(default_port);
    host && (port == local.port() || port == config.leg_port(local, transport))
        && via
            .branch
            .is_some_and(|b| b.starts_with(BRANCH_PREFIX.as_bytes()))
}
