//! The gateway's side of the state seam (`records`): the records of what changed, a
//! full snapshot when the store needs one, and the restore.

use super::*;
use crate::records::{BanState, BindingState, DialogId, DialogState, RestoreReport, StateRecord};
use crate::state::Changed;

/// Records waiting for the driver; beyond this many the store is resynced instead.
const MAX_PENDING: usize = 65_536;

/// The seam's bookkeeping: records not yet taken, and the bans as last published (bans
/// are compared only when the guard's generation moved).
#[derive(Default)]
pub(super) struct Seam {
    enabled: bool,
    pending: VecDeque<StateRecord>,
    resync: bool,
    bans_seen: u64,
    published_bans: std::collections::HashMap<IpAddr, BanState>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Gateway {
    /// Starts making state records (a store is configured). The store must first take
    /// a full snapshot: [`Gateway::resync_needed`] is true until it does.
    pub fn enable_state_records(&mut self) {
        self.seam.enabled = true;
        self.seam.resync = true;
        self.tables.tracking = true;
    }

    /// The id of the hiding secret the state's names are made under (stores keep it,
    /// and state under another id must not be restored).
    pub fn secret_id(&self) -> String {
        self.hider.secret_id()
    }

    /// Whether the store must take a full snapshot ([`Gateway::snapshot_state`]): at
    /// start, and whenever changes piled up faster than they were taken.
    pub fn resync_needed(&self) -> bool {
        self.seam.enabled && (self.seam.resync || self.tables.overflowed)
    }

    /// The next state record, if any. Poll after every `handle_*` call until `None`.
    pub fn poll_state(&mut self, now: Instant) -> Option<StateRecord> {
        if !self.seam.enabled {
            return None;
        }
        if self.seam.pending.is_empty() {
            self.make_records(now);
        }
        self.seam.pending.pop_front()
    }

    /// Everything to keep, as records (all of them puts), for a store starting afresh.
    /// Pending changes are folded in.
    pub fn snapshot_state(&mut self, now: Instant) -> Vec<StateRecord> {
        self.tables.changed.clear();
        self.tables.overflowed = false;
        self.seam.pending.clear();
        self.seam.resync = false;
        let mut out: Vec<StateRecord> = self
            .tables
            .bindings()
            .keys()
            .filter_map(|t| self.binding_record(t, now))
            .collect();
        let keys: Vec<DialogKey> = self.tables.dialogs.keys().cloned().collect();
        out.extend(keys.iter().map(|k| self.dialog_record(k, now)));
        self.seam.bans_seen = self.guard.ban_generation;
        self.seam.published_bans = self.ban_states(now);
        out.extend(
            self.seam
                .published_bans
                .iter()
                .map(|(source, state)| StateRecord::Ban {
                    source: *source,
                    state: Some(state.clone()),
                }),
        );
        out
    }

    /// Marks the dialogs named by a message's Call-ID (either side's) as changed.
    pub(super) fn touched_call(&mut self, call_id: &[u8]) {
        if !self.tables.tracking {
            return;
        }
        let mut keys: Vec<DialogKey> = [true, false]
            .into_iter()
            .map(|originated_inside| DialogKey {
                outside_call_id: call_id.to_vec(),
                originated_inside,
            })
            .filter(|k| self.tables.dialogs.contains_key(k))
            .collect();
        if let Some(k) = self.tables.call_ids.get(call_id) {
            keys.push(k.clone());
        }
        for k in keys {
            self.tables.note(Changed::Dialog(k));
        }
    }

    fn make_records(&mut self, now: Instant) {
        if self.tables.overflowed {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        let changed = std::mem::take(&mut self.tables.changed);
        for change in changed {
            if !seen.insert(change.clone()) {
                continue;
            }
            let record = match &change {
                Changed::Binding(token) => {
                    self.binding_record(token, now)
                        .unwrap_or_else(|| StateRecord::Binding {
                            token: token.clone(),
                            state: None,
                        })
                }
                Changed::Dialog(key) => self.dialog_record(key, now),
            };
            self.push_record(record);
        }
        if self.guard.ban_generation != self.seam.bans_seen {
            self.seam.bans_seen = self.guard.ban_generation;
            let now_bans = self.ban_states(now);
            let gone: Vec<IpAddr> = self
                .seam
                .published_bans
                .keys()
                .filter(|ip| !now_bans.contains_key(ip))
                .copied()
                .collect();
            for source in gone {
                self.push_record(StateRecord::Ban {
                    source,
                    state: None,
                });
            }
            let changed: Vec<(IpAddr, BanState)> = now_bans
                .iter()
                .filter(|(ip, state)| {
                    self.seam.published_bans.get(ip).is_none_or(|old| {
                        old.expires_in_ms.abs_diff(state.expires_in_ms) > 1000
                            || old.by_operator != state.by_operator
                    })
                })
                .map(|(ip, s)| (*ip, s.clone()))
                .collect();
            for (source, state) in changed {
                self.push_record(StateRecord::Ban {
                    source,
                    state: Some(state),
                });
            }
            self.seam.published_bans = now_bans;
        }
    }

    fn push_record(&mut self, record: StateRecord) {
        if self.seam.pending.len() >= MAX_PENDING {
            self.seam.resync = true;
            self.seam.pending.clear();
            return;
        }
        self.seam.pending.push_back(record);
    }

    fn ban_states(&self, now: Instant) -> std::collections::HashMap<IpAddr, BanState> {
        self.guard
            .bans(now)
            .into_iter()
            .map(|b| {
                (
                    b.source,
                    BanState {
                        reason: b.reason,
                        user: b.user,
                        expires_in_ms: millis(b.expires.saturating_duration_since(now)),
                        by_operator: b.by_operator,
                    },
                )
            })
            .collect()
    }

    fn binding_record(&self, token: &str, now: Instant) -> Option<StateRecord> {
        let b = self.tables.binding(token)?;
        Some(StateRecord::Binding {
            token: token.to_owned(),
            state: Some(BindingState {
                aor: b.aor.clone(),
                phone: b.phone.into(),
                registrar: b.registrar,
                inside_contact: b.inside_contact.clone(),
                outside_contact: b.outside_contact.clone(),
                expires_in_ms: millis(b.expires_at.saturating_duration_since(now)),
            }),
        })
    }

    fn dialog_record(&self, key: &DialogKey, now: Instant) -> StateRecord {
        let id = DialogId {
            outside_call_id: key.outside_call_id.clone(),
            originated_inside: key.originated_inside,
        };
        let state = self.tables.dialogs.get(key).map(|d| {
            Box::new(DialogState {
                session: d.session,
                inside_call_id: d.inside_call_id.clone(),
                phone: d.phone.into(),
                outside: d.outside.into(),
                inside_from: d.inside_from.clone(),
                inside_to: d.inside_to.clone(),
                outside_from: d.outside_from.clone(),
                outside_to: d.outside_to.clone(),
                phone_contact: d.phone_contact.clone(),
                far_contact: d.far_contact.clone(),
                far_route: d.far_route.clone(),
                aor: d.aor.clone(),
                token: d.token.clone(),
                age_ms: millis(now.saturating_duration_since(d.created)),
                confirmed: d.confirmed,
                cseq_inside: d.cseq_inside,
                cseq_outside: d.cseq_outside,
                media: self.media.snapshot(&key.media_id()),
            })
        });
        StateRecord::Dialog { id, state }
    }

    /// Rebuilds the tables from records, each with how long ago it was written (its
    /// times count on from then). `cseq_jump` is added to the CSeqs the gateway writes
    /// in its own requests (a takeover after a failover: the failed node may have sent
    /// some the store never saw). Media is taken back on the same ports (queued `Set`s).
    pub fn restore_state(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (StateRecord, Duration)>,
        cseq_jump: u32,
    ) -> RestoreReport {
        self.now = Some(now);
        let tracking = std::mem::replace(&mut self.tables.tracking, false);
        let mut report = RestoreReport::default();
        for (record, age) in records {
            match record {
                StateRecord::Binding { token, state } => {
                    self.tables.remove_binding(&token);
                    let Some(b) = state else { continue };
                    let left = Duration::from_millis(b.expires_in_ms).saturating_sub(age);
                    if left.is_zero() {
                        report.expired += 1;
                        continue;
                    }
                    self.tables.insert_binding(
                        token,
                        Binding {
                            aor: b.aor,
                            phone: b.phone.into(),
                            registrar: b.registrar,
                            inside_contact: b.inside_contact,
                            outside_contact: b.outside_contact,
                            expires_at: crate::protect::later(now, left),
                        },
                    );
                    report.bindings += 1;
                }
                StateRecord::Dialog { id, state } => {
                    let key = DialogKey {
                        outside_call_id: id.outside_call_id,
                        originated_inside: id.originated_inside,
                    };
                    if self.tables.remove_dialog(&key).is_some() {
                        self.media.release(&key.media_id());
                    }
                    let Some(d) = state.map(|d| *d) else { continue };
                    let age = Duration::from_millis(d.age_ms).saturating_add(age);
                    let media = d.media.clone();
                    let dialog = Dialog {
                        session: d.session,
                        inside_call_id: d.inside_call_id,
                        outside_call_id: key.outside_call_id.clone(),
                        phone: d.phone.into(),
                        outside: d.outside.into(),
                        originated_inside: key.originated_inside,
                        inside_from: d.inside_from,
                        inside_to: d.inside_to,
                        outside_from: d.outside_from,
                        outside_to: d.outside_to,
                        phone_contact: d.phone_contact,
                        far_contact: d.far_contact,
                        far_route: d.far_route,
                        aor: d.aor,
                        token: d.token,
                        created: now.checked_sub(age).unwrap_or(now),
                        confirmed: d.confirmed,
                        cseq_inside: d.cseq_inside.saturating_add(cseq_jump),
                        cseq_outside: d.cseq_outside.saturating_add(cseq_jump),
                    };
                    let confirmed = dialog.confirmed;
                    self.tables.insert_dialog(dialog);
                    let kept = media.iter().flatten().count();
                    if kept > 0 {
                        let all = self.media.restore(&key.media_id(), &media, confirmed, now);
                        let lost = if all {
                            0
                        } else {
                            kept - self.media.streams(&key.media_id()).len()
                        };
                        report.streams += kept - lost;
                        report.streams_lost += lost;
                    }
                    report.dialogs += 1;
                }
                StateRecord::Ban { source, state } => {
                    self.guard.unban(source, now, "restored state");
                    let Some(b) = state else { continue };
                    let left = Duration::from_millis(b.expires_in_ms).saturating_sub(age);
                    if left.is_zero() {
                        report.expired += 1;
                        continue;
                    }
                    self.guard
                        .ban(source, b.user.as_deref(), None, &b.reason, now, Some(left));
                    if b.by_operator {
                        self.guard.mark_by_operator(source);
                    }
                    report.bans += 1;
                }
            }
        }
        self.tables.tracking = tracking;
        self.seam.bans_seen = self.guard.ban_generation;
        self.seam.published_bans = self.ban_states(now);
        self.arm(now);
        report
    }
}
