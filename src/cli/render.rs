//! How each command's result reads for people (the `--json` form is the
//! result types' own serialisation). Times are printed to the second.

use backupctl::ops;
use backupctl::util::{human_bytes, short_time};

pub fn render_check(r: &ops::check::CheckResult) -> String {
    let mut s = format!(
        "config {}: {} policies: {}\n",
        r.config,
        r.policies.len(),
        r.policies.join(", ")
    );
    for t in &r.targets {
        match (&t.error, &t.note) {
            (None, Some(note)) => s.push_str(&format!(
                "target {} ({}, location {}): ok: {note}\n",
                t.target, t.description, t.location
            )),
            (None, None) => s.push_str(&format!(
                "target {} ({}, location {}): ok, probe {:.0} ms\n",
                t.target,
                t.description,
                t.location,
                t.latency_ms.unwrap_or(0.0)
            )),
            (Some(e), _) => s.push_str(&format!(
                "target {} ({}, location {}): FAILED: {e}\n",
                t.target, t.kind, t.location
            )),
        }
    }
    for w in &r.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s.trim_end().to_string()
}

pub fn render_init(r: &ops::init::InitReport) -> String {
    let mut s = String::new();
    for t in &r.targets {
        match &t.error {
            None => s.push_str(&format!(
                "target {} ({}): {}\n",
                t.target, t.description, t.status
            )),
            Some(e) => s.push_str(&format!("target {}: FAILED: {e}\n", t.target)),
        }
    }
    s.trim_end().to_string()
}

pub fn render_run_step(step: &ops::run::RunStep) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &step.run {
        parts.push(render_run(r));
    }
    if let Some(c) = &step.catch_up {
        parts.push(format!(
            "policy {}: catching up targets that missed earlier snapshots\n{}",
            c.policy,
            render_sync(c)
        ));
    }
    if let Some(p) = &step.prune {
        parts.push(render_prune(p));
    }
    if let Some(e) = &step.prune_error {
        parts.push(format!("policy {}: prune FAILED: {e}", step.policy()));
    }
    parts.join("\n")
}

pub fn render_run(r: &ops::run::RunResult) -> String {
    use backupctl::util::human_bytes;
    let mut s = match &r.snapshot {
        Some(id) => format!(
            "policy {}: snapshot {} ({}) {} in {:.1}s\n",
            r.policy,
            id,
            short_time(&r.time.to_rfc3339()),
            r.status,
            r.duration_seconds
        ),
        None => format!("policy {}: {}\n", r.policy, r.status),
    };
    for src in &r.sources {
        match &src.error {
            Some(e) => s.push_str(&format!("  source {}: FAILED: {e}\n", src.name)),
            None => s.push_str(&format!(
                "  source {}: {} files, {} -> {}{}\n",
                src.name,
                src.files,
                human_bytes(src.content_size),
                if r.dry_run {
                    "(dry run)".to_string()
                } else {
                    human_bytes(src.archive_size)
                },
                if src.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warnings", src.warnings.len())
                }
            )),
        }
        if !src.unreadable.is_empty() {
            const SHOWN: usize = 10;
            let mut names = src.unreadable[..src.unreadable.len().min(SHOWN)].join(", ");
            if src.unreadable.len() > SHOWN {
                names.push_str(&format!(", ... ({} in all)", src.unreadable.len()));
            }
            s.push_str(&format!(
                "  source {}: NOT READ (not in this snapshot): {names}\n",
                src.name
            ));
        }
    }
    for t in &r.targets {
        match &t.error {
            Some(e) => s.push_str(&format!(
                "  target {} ({}): FAILED: {e}\n",
                t.name, t.location
            )),
            None => s.push_str(&format!(
                "  target {} ({}): {}, {} uploaded in {} new packs, {} copied from other targets, {} packs already present\n",
                t.name,
                t.location,
                t.status,
                human_bytes(t.uploaded_bytes),
                t.packs_uploaded,
                t.packs_copied,
                t.archives_already_present
            )),
        }
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    use backupctl::ops::run::{RunStatus, TargetStatus};
    match r.status {
        RunStatus::Partial => {
            let missed: Vec<&str> = r
                .targets
                .iter()
                .filter(|t| t.status != TargetStatus::Complete)
                .map(|t| t.name.as_str())
                .collect();
            s.push_str(&format!(
                "  to do: bring {} back; the next `backupctl run --due` (or `backupctl sync {}`) copies what it missed\n",
                missed.join(", "),
                r.policy
            ));
        }
        RunStatus::Incomplete => s.push_str(&format!(
            "  to do: make the files above readable by the user backupctl runs as (or exclude \
             them); the snapshot was recorded without them (`backupctl list {} --json` lists them)\n",
            r.policy
        )),
        RunStatus::Failed => s.push_str(&format!(
            "  to do: fix the cause above, then `backupctl run {}`; nothing was recorded, earlier snapshots are untouched\n",
            r.policy
        )),
        _ => {}
    }
    s.trim_end().to_string()
}

pub fn render_verify(r: &ops::verify::VerifyResult) -> String {
    let mut s = format!(
        "policy {}: {}\n",
        r.policy,
        r.result.as_str().to_uppercase()
    );
    for snap in &r.snapshots {
        s.push_str(&format!(
            "  snapshot {} ({})\n",
            snap.id,
            short_time(&snap.time)
        ));
        for t in &snap.targets {
            s.push_str(&format!(
                "    target {}: {}{}\n",
                t.target,
                t.result,
                t.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            for a in &t.archives {
                s.push_str(&format!("      {} {}: {}\n", a.source, a.archive, a.result));
                for p in &a.problems {
                    s.push_str(&format!("        - {p}\n"));
                }
            }
        }
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    s.trim_end().to_string()
}

pub fn render_drill(r: &ops::drill::DrillResult) -> String {
    use backupctl::util::printable;
    let mut s = format!(
        "policy {}: drill {}\n",
        printable(&r.policy),
        r.result.as_str().to_uppercase()
    );
    for t in &r.targets {
        s.push_str(&format!(
            "  target {}: {}{}{}\n",
            printable(&t.target),
            t.result,
            t.snapshot
                .as_deref()
                .map(|id| format!(
                    ", snapshot {} ({} old): {} in {:.2}s, {:.1} MB/s",
                    printable(id),
                    ops::drill_report::human_age(t.age_seconds.unwrap_or(0)),
                    backupctl::util::human_bytes(t.bytes),
                    t.seconds,
                    t.mb_per_s
                ))
                .unwrap_or_default(),
            t.error
                .as_deref()
                .map(|e| format!(" ({})", printable(e)))
                .unwrap_or_default()
        ));
    }
    s.trim_end().to_string()
}

pub fn render_restore(r: &ops::restore::RestoreResult) -> String {
    let mut s = String::new();
    for src in &r.sources {
        s.push_str(&format!(
            "restored {} of snapshot {} ({}) from target {}{}: {} files, {} -> {}\n",
            src.name,
            r.snapshot,
            short_time(&r.time),
            src.target,
            if src.also_from.is_empty() {
                String::new()
            } else {
                format!(
                    " (ranges it could not serve intact from {})",
                    src.also_from.join(", ")
                )
            },
            src.files,
            backupctl::util::human_bytes(src.bytes),
            src.path
        ));
    }
    s.trim_end().to_string()
}

pub fn render_restore_db(r: &ops::restore_db::RestoreDbResult) -> String {
    format!(
        "restored database {} of source {} (snapshot {}, {}) from target {} into {} on {}: {} tables, {} rows{}",
        r.from_database,
        r.source,
        r.snapshot,
        short_time(&r.time),
        r.target,
        r.load.database,
        r.load.server,
        r.load.tables,
        r.load.rows,
        if r.load.replaced_existing {
            " (replaced the existing database)"
        } else {
            ""
        }
    )
}

/// Human-readable report.
pub fn render_prune(r: &ops::prune::PruneResult) -> String {
    let mut s = format!(
        "policy {}: keep {}, remove {} snapshot(s){}: {}\n",
        r.policy,
        r.keep.len(),
        r.remove.len(),
        if r.dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        },
        r.result.as_str().to_uppercase()
    );
    for k in &r.keep {
        s.push_str(&format!(
            "  keep    {}  {}  {}\n",
            k.id,
            k.time,
            k.reasons.join(", ")
        ));
    }
    for k in &r.remove {
        s.push_str(&format!("  remove  {}  {}\n", k.id, k.time));
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for t in &r.targets {
        match t.status {
            ops::prune::PruneStatus::Unreachable => s.push_str(&format!(
                "  target {}: UNREACHABLE: {}\n",
                t.name,
                t.error.as_deref().unwrap_or("")
            )),
            _ => {
                s.push_str(&format!(
                    "  target {}: {verb} {} snapshot(s), {} archive(s), {} freed{}\n",
                    t.name,
                    t.manifests_deleted.len(),
                    t.archives_deleted.len() + t.others_deleted.len(),
                    human_bytes(t.bytes_freed),
                    t.error
                        .as_deref()
                        .map(|e| format!("; FAILED: {e}"))
                        .unwrap_or_default()
                ));
                for w in &t.warnings {
                    s.push_str(&format!("    warning: {w}\n"));
                }
            }
        }
    }
    let rp = &r.repack;
    if !rp.packs.is_empty() {
        s.push_str(&format!(
            "  repack: {} {} pack(s) ({} live copied, {} dead) used by {} snapshot(s){}\n",
            if r.dry_run {
                "would rewrite"
            } else {
                "rewrote"
            },
            rp.packs.len(),
            human_bytes(rp.live_bytes),
            human_bytes(rp.dead_bytes),
            rp.snapshots.len(),
            if r.dry_run {
                String::new()
            } else {
                format!(" into {} new pack(s)", rp.packs_written.len())
            }
        ));
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s.trim_end().to_string()
}

/// The human summary.
pub fn render_sync(r: &ops::sync::SyncResult) -> String {
    use backupctl::util::human_bytes;
    let mut s = format!("policy {}: sync {}\n", r.policy, r.result);
    for (t, e) in &r.unreachable {
        s.push_str(&format!("  target {t}: UNREACHABLE, not synced: {e}\n"));
    }
    for (t, n) in &r.aborted_uploads {
        s.push_str(&format!(
            "  target {t}: aborted {n} stale incomplete uploads\n"
        ));
    }
    if r.copies.is_empty() && r.unreachable.is_empty() {
        s.push_str("  every reachable target holds every snapshot\n");
    }
    for c in &r.copies {
        match &c.error {
            Some(e) => s.push_str(&format!(
                "  snapshot {} -> target {}: FAILED: {e}\n",
                c.snapshot, c.target
            )),
            None => s.push_str(&format!(
                "  snapshot {} -> target {}: {} ({} archives, {}{})\n",
                c.snapshot,
                c.target,
                c.status,
                c.archives.len(),
                human_bytes(c.bytes),
                if c.from.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", c.from.join(","))
                }
            )),
        }
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    s.trim_end().to_string()
}

/// The human table.
pub fn render_list(l: &ops::list::PolicyListing) -> String {
    use backupctl::util::human_bytes;
    let mut out = format!("policy {}\n", l.policy);
    for t in &l.targets {
        if let Some(e) = &t.error {
            out.push_str(&format!("  ! target {} unreachable: {e}\n", t.name));
        }
    }
    for d in &l.damaged {
        out.push_str(&format!("  ! {d}; not used\n"));
    }
    if l.snapshots.is_empty() {
        out.push_str("  (no snapshots)\n");
        return out;
    }
    out.push_str(&format!(
        "  {:<26} {:<25} {:<20} {:>10} {:>10}  {}\n",
        "ID", "TIME", "SOURCES", "SIZE", "STORED", "TARGETS"
    ));
    let mut any_unreadable = false;
    for s in &l.snapshots {
        let names: Vec<&str> = s.sources.iter().map(|x| x.name.as_str()).collect();
        let mut targets = s.targets.join(",");
        for (t, _) in &s.incomplete {
            targets.push_str(&format!(" ({t}: incomplete)"));
        }
        if targets.is_empty() {
            targets = "-".into();
        }
        let unreadable: usize = s.sources.iter().map(|x| x.unreadable.len()).sum();
        if unreadable > 0 {
            any_unreadable = true;
            targets.push_str(&format!("  [incomplete: {unreadable} unreadable]"));
        }
        out.push_str(&format!(
            "  {:<26} {:<25} {:<20} {:>10} {:>10}  {}\n",
            s.id,
            backupctl::util::short_time(&s.time),
            names.join(","),
            human_bytes(s.content_size),
            human_bytes(s.archive_size),
            targets
        ));
    }
    if any_unreadable {
        out.push_str(
            "  [incomplete: N unreadable]: N source files or directories could not be read and \
             are not in the snapshot (`backupctl list --json` names them)\n",
        );
    }
    out
}

pub fn render_schedule(p: &ops::schedule::PolicySchedule) -> String {
    let mut s = format!(
        "policy {}{}\n",
        p.policy,
        p.jitter_seconds
            .map(|j| format!(" (jitter up to {j}s)"))
            .unwrap_or_default()
    );
    s.push_str(&render_job("run", &p.run));
    s.push_str(&render_job("verify", &p.verify));
    s.push_str(&render_drill_record(&p.drill));
    s.trim_end().to_string()
}

pub fn render_notify_test(r: &ops::notify_test::NotifyTestReport) -> String {
    r.notifiers
        .iter()
        .map(|d| match (&d.detail, &d.error) {
            (Some(ok), _) => format!("ok      {}: {ok} ({:.1}s)", d.notifier, d.seconds),
            (_, Some(e)) => format!("FAILED  {}: {e} ({:.1}s)", d.notifier, d.seconds),
            _ => format!("?       {}", d.notifier),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_job(name: &str, j: &ops::schedule::JobStatus) -> String {
    let Some(s) = &j.schedule else {
        return format!("  {name}: not scheduled\n");
    };
    let last = match (&j.last_result, &j.last_attempt) {
        (Some(r), Some(t)) => format!("last {r} at {t}"),
        _ => match &j.last_success {
            Some(t) => format!("last success {t} (from {})", j.last_success_from),
            None => "never run".to_string(),
        },
    };
    format!(
        "  {name}: {s:?}, next {}; {last}{}\n",
        j.next.first().map(String::as_str).unwrap_or("never"),
        if j.due { "; DUE now" } else { "" }
    )
}

// ---------------------------------------------------------------------------
// Browsing a snapshot: ls, find, diff (dump writes the file itself)
// ---------------------------------------------------------------------------

/// A path for the terminal: escaped, directories ending in `/`.
fn shown_path(e: &ops::browse::Listed) -> String {
    let p = backupctl::util::printable(&e.path);
    if e.is_dir() {
        format!("{p}/")
    } else {
        p
    }
}

/// `type mode uid:gid size mtime path [-> target]`.
fn long_line(e: &ops::browse::Listed) -> String {
    let mut s = format!(
        "{:<7} {} {:>11} {:>12} {:<30} {}",
        e.kind,
        e.mode,
        format!("{}:{}", e.uid, e.gid),
        e.size,
        e.mtime,
        shown_path(e)
    );
    if let Some(t) = &e.target {
        s.push_str(&format!(" -> {}", backupctl::util::printable(t)));
    }
    s
}

pub fn render_ls(r: &ops::browse::LsResult, long: bool) -> String {
    r.entries
        .iter()
        .map(|e| if long { long_line(e) } else { shown_path(e) })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn render_find(r: &ops::browse::FindResult) -> String {
    let mut s = String::new();
    for m in &r.matches {
        s.push_str(&format!(
            "{} (in {} of {} snapshots)\n",
            backupctl::util::printable(&m.path),
            m.snapshots.len(),
            r.searched.len()
        ));
        for seen in &m.snapshots {
            s.push_str(&format!(
                "  {}  {}  {:<7} {} {:>12}  {}{}\n",
                seen.id,
                short_time(&seen.time),
                seen.kind,
                seen.mode,
                human_bytes(seen.size),
                seen.mtime,
                seen.blake3
                    .as_ref()
                    .map(|h| format!("  blake3 {}", &h[..h.len().min(16)]))
                    .unwrap_or_default()
            ));
        }
    }
    if r.matches.is_empty() {
        s.push_str(&format!(
            "no path matches {:?} in {} snapshots of policy {}\n",
            backupctl::util::printable(&r.pattern),
            r.searched.len(),
            r.policy
        ));
    }
    for (id, why) in &r.skipped {
        s.push_str(&format!("snapshot {id}: NOT SEARCHED: {why}\n"));
    }
    s.trim_end().to_string()
}

pub fn render_diff(r: &ops::browse::DiffResult) -> String {
    let mut s = format!(
        "policy {}: {} ({}) -> {} ({})\n",
        r.policy,
        r.from.id,
        short_time(&r.from.time),
        r.to.id,
        short_time(&r.to.time)
    );
    let size = |e: &ops::browse::Listed| {
        if e.kind == "file" {
            format!("  ({})", human_bytes(e.size))
        } else {
            String::new()
        }
    };
    for e in &r.added {
        s.push_str(&format!("+ {}{}\n", shown_path(e), size(e)));
    }
    for e in &r.removed {
        s.push_str(&format!("- {}{}\n", shown_path(e), size(e)));
    }
    for c in &r.changed {
        let mut what = Vec::new();
        for k in &c.changes {
            what.push(match k.as_str() {
                "size" => format!("size {} -> {}", c.old.size, c.new.size),
                "mode" => format!("mode {} -> {}", c.old.mode, c.new.mode),
                "type" => format!("type {} -> {}", c.old.kind, c.new.kind),
                "owner" => format!(
                    "owner {}:{} -> {}:{}",
                    c.old.uid, c.old.gid, c.new.uid, c.new.gid
                ),
                other => other.to_string(),
            });
        }
        s.push_str(&format!(
            "M {}  ({})\n",
            shown_path(&c.new),
            what.join(", ")
        ));
    }
    s.push_str(&format!(
        "{} added ({}), {} removed ({}), {} changed",
        r.added.len(),
        human_bytes(r.added_bytes),
        r.removed.len(),
        human_bytes(r.removed_bytes),
        r.changed.len()
    ));
    s
}

pub fn render_status(r: &ops::status::StatusReport) -> String {
    use backupctl::notify::human_duration;
    use backupctl::util::human_bytes;
    let mut out = String::new();
    for p in &r.policies {
        let word = if p.healthy { "OK" } else { "PROBLEM" };
        let newest = match &p.newest {
            Some(n) => format!(
                "newest {} ({} ago{})",
                n.id,
                human_duration(n.age_seconds),
                p.max_age_seconds
                    .map(|m| format!(", max {}", human_duration(m)))
                    .unwrap_or_default()
            ),
            None => "no snapshot".into(),
        };
        out.push_str(&format!("{:<7} {}  {newest}\n", word, p.policy));
        for t in &p.targets {
            let state = match &t.error {
                Some(e) => format!("unreachable: {e}"),
                None => format!(
                    "{}, {} restore points, {}",
                    if t.holds_newest {
                        "holds the newest"
                    } else {
                        "LACKS the newest"
                    },
                    t.restore_points,
                    human_bytes(t.bytes_stored)
                ),
            };
            out.push_str(&format!(
                "        target {} ({}): {state}\n",
                t.name, t.location
            ));
        }
        if let Some(v) = &p.verify {
            out.push_str(&format!(
                "        verified: {}\n",
                match (&v.last_success, &v.last_result) {
                    (Some(t), r) => format!(
                        "last success {t}{}",
                        r.as_deref()
                            .filter(|r| *r != "success")
                            .map(|r| format!(", last attempt {r}"))
                            .unwrap_or_default()
                    ),
                    (None, Some(r)) => format!("never successfully (last attempt {r})"),
                    (None, None) => "never".into(),
                }
            ));
        }
        if let Some(d) = &p.drill {
            let rows: Vec<String> = d
                .targets
                .iter()
                .map(|(t, r)| format!("{t} {} in {:.1}s", r.result, r.seconds))
                .collect();
            out.push_str(&format!(
                "        drilled: {} {} ({})\n",
                d.last_attempt.as_deref().unwrap_or("-"),
                d.last_result.as_deref().unwrap_or("-"),
                rows.join(", ")
            ));
        }
        if let Some(x) = &p.rule_3_2_1 {
            out.push_str(&format!(
                "        3-2-1: {} copies, {} locations, {} away from this host{}\n",
                x.copies,
                x.locations,
                x.offsite,
                if x.ok { "" } else { " (not met)" }
            ));
        }
        for why in &p.problems {
            out.push_str(&format!("        ! {why}\n"));
        }
    }
    out.trim_end().to_string()
}
fn render_drill_record(d: &ops::drill::DrillRecord) -> String {
    let (Some(r), Some(t)) = (&d.last_result, &d.last_attempt) else {
        return "  drill: never\n".to_string();
    };
    let mut s = format!("  drill: last {r} at {}\n", t.to_rfc3339());
    for (name, t) in &d.targets {
        s.push_str(&format!(
            "    {}: {}{}\n",
            backupctl::util::printable(name),
            t.result,
            match (&t.snapshot, t.age_seconds) {
                (Some(id), Some(age)) => format!(
                    ", snapshot {} ({} old), {:.2}s, {:.1} MB/s",
                    backupctl::util::printable(id),
                    ops::drill_report::human_age(age),
                    t.seconds,
                    t.mb_per_s
                ),
                _ => String::new(),
            }
        ));
    }
    s
}
