//! What an installation uses besides the binary: systemd units (the files
//! in `contrib/systemd/`, printed by `backupctl schedule --systemd`), man
//! pages generated from the command-line definitions (`backupctl man`,
//! committed as `contrib/man/`), and shell completions (`backupctl
//! completions SHELL`).

use std::path::Path;

/// The config path the units name.
pub const DEFAULT_CONFIG: &str = "/etc/backupctl/backupctl.toml";

/// The systemd units, by file name (contrib/systemd/).
pub const SYSTEMD_UNITS: &[(&str, &str)] = &[
    (
        "backupctl.service",
        include_str!("../../contrib/systemd/backupctl.service"),
    ),
    (
        "backupctl-run.service",
        include_str!("../../contrib/systemd/backupctl-run.service"),
    ),
    (
        "backupctl-run.timer",
        include_str!("../../contrib/systemd/backupctl-run.timer"),
    ),
    (
        "backupctl-verify.service",
        include_str!("../../contrib/systemd/backupctl-verify.service"),
    ),
    (
        "backupctl-verify.timer",
        include_str!("../../contrib/systemd/backupctl-verify.timer"),
    ),
];

/// The units as `schedule --systemd` prints them: one after the other, each
/// starting with its `# /etc/systemd/system/NAME` line, with `config` in
/// place of /etc/backupctl/backupctl.toml when given.
pub fn systemd_units(config: Option<&Path>) -> String {
    let mut out = String::new();
    for (i, (_, text)) in SYSTEMD_UNITS.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match config {
            Some(c) => out.push_str(&text.replace(
                &format!("--config {DEFAULT_CONFIG}"),
                &format!("--config {}", c.display()),
            )),
            None => out.push_str(text),
        }
    }
    out
}

/// Every man page: `backupctl.1`, then one per command and subcommand
/// (`backupctl-run.1`, `backupctl-key-init.1`, ...), as (file name, roff).
pub fn man_pages(cmd: clap::Command) -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        let man = clap_mangen::Man::new(cmd.clone())
            .source(concat!("backupctl ", env!("CARGO_PKG_VERSION")))
            .manual("backupctl manual");
        let mut buf = Vec::new();
        man.render(&mut buf).expect("rendering into memory");
        out.push((man.get_filename(), buf));
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                walk(sub.clone(), out);
            }
        }
    }
    let mut cmd = cmd;
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out);
    out
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, cmd: clap::Command) -> Vec<u8> {
    let mut cmd = cmd;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "backupctl", &mut buf);
    buf
}
