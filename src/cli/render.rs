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
