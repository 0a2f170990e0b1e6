//! Upstream austin's per-event Redis command stream, as a reference: the merge-equivalence tests
//! replay it into a second key space and compare, and the sink benchmark measures how fast Redis
//! takes it fully pipelined (the ceiling of any implementation that writes the way upstream does).
//!
//! Per event, in upstream's order: `LPUSH`+`EXPIRE 3d` on the message list (when the event has a
//! messageId), `LPUSH`+`EXPIRE until end of day` per receiver, `HINCRBY`+`EXPIRE 30d` on the template.
//! The end-of-day TTL uses the corrected rule (next local midnight, never 0) so a replay and the
//! sink agree on what "correct" means; everything else is upstream's stream command for command.

use std::time::SystemTime;

use redis::{Cmd, Pipeline};

use crate::sink::redis::{system_time_ms, Layout, MESSAGE_TTL, TEMPLATE_TTL};
use crate::transform::AnchorInfo;

/// Upstream's commands for one event processed at `now`.
pub fn upstream_commands(layout: &Layout, ev: &AnchorInfo<'_>, now: SystemTime) -> Vec<Cmd> {
    let mut out = Vec::with_capacity(2 + 2 * ev.ids.len() + 2);
    push_upstream_commands(&mut out, layout, ev, now);
    out
}

fn push_upstream_commands(
    out: &mut Vec<Cmd>,
    layout: &Layout,
    ev: &AnchorInfo<'_>,
    now: SystemTime,
) {
    let value = ev.simple_json();
    if let Some(message_id) = ev.message_id.as_deref() {
        let key = layout.message_key(message_id);
        out.push(redis::cmd("LPUSH").arg(&key).arg(&value).to_owned());
        out.push(
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(MESSAGE_TTL.as_secs())
                .to_owned(),
        );
    }
    let end_of_day_ms = layout.user_expire_at_ms(now);
    for id in &ev.ids {
        let key = layout.user_key(id);
        out.push(redis::cmd("LPUSH").arg(&key).arg(&value).to_owned());
        out.push(
            redis::cmd("PEXPIREAT")
                .arg(&key)
                .arg(end_of_day_ms)
                .to_owned(),
        );
    }
    let key = layout.template_key(ev.business_id);
    out.push(
        redis::cmd("HINCRBY")
            .arg(&key)
            .arg(ev.state)
            .arg(ev.ids.len())
            .to_owned(),
    );
    out.push(
        redis::cmd("EXPIRE")
            .arg(&key)
            .arg(TEMPLATE_TTL.as_secs())
            .to_owned(),
    );
}

/// All events' upstream commands in one pipeline (not a transaction), replies ignored.
pub fn upstream_pipeline<'a>(
    layout: &Layout,
    events: impl IntoIterator<Item = &'a AnchorInfo<'a>>,
    now: SystemTime,
) -> Pipeline {
    let mut pipe = redis::pipe();
    let mut cmds = Vec::new();
    for ev in events {
        cmds.clear();
        push_upstream_commands(&mut cmds, layout, ev, now);
        for cmd in cmds.drain(..) {
            pipe.add_command(cmd).ignore();
        }
    }
    pipe
}

/// Milliseconds of `now`, re-exported for tests comparing TTLs.
pub fn now_ms(now: SystemTime) -> i64 {
    system_time_ms(now)
}
