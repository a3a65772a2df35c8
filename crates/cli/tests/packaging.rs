//! What an installation gets from the binary, checked by the tools that consume it:
//! bash, zsh and fish load the completion scripts and complete with them, `mandoc`
//! lints the manual page and `man` finds and renders it, and `systemd-analyze`
//! verifies the example unit in `deploy/` (with that manual page installed).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;
use invsync_testkit::tool;

fn invsync(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} exited {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("invsync.bash");
    std::fs::write(&script, invsync(&["completions", "bash"])).unwrap();
    // bash itself runs the completion function, as it would on <TAB>.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; _invsync invsync; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            line.len()
        );
        run("bash", &["-c", &program], &[])
    };
    let subcommands = complete("invsync cons");
    assert!(subcommands.lines().any(|l| l == "consume"), "{subcommands}");
    assert!(
        subcommands.lines().any(|l| l == "consumers"),
        "{subcommands}"
    );
    let flags = complete("invsync consume webhook --part");
    assert!(flags.lines().any(|l| l == "--partitioned"), "{flags}");
    let shells = complete("invsync completions ");
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shells}");
    }
}

#[test]
fn fish_completes_with_its_script() {
    let Some(()) = tool("fish", "fish", &["--version"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("invsync.fish");
    std::fs::write(&script, invsync(&["completions", "fish"])).unwrap();
    let out = run(
        "fish",
        &[
            "--no-config",
            "-c",
            &format!("source {}; complete -C 'invsync che'", script.display()),
        ],
        &[],
    );
    assert!(out.lines().any(|l| l.starts_with("check")), "{out}");
}

#[test]
fn zsh_loads_the_script_as_a_completion_function() {
    let Some(()) = tool("zsh", "zsh", &["--version"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("_invsync"),
        invsync(&["completions", "zsh"]),
    )
    .unwrap();
    // compinit finds `_invsync` on $fpath and binds it to the command.
    let out = run(
        "zsh",
        &[
            "-f",
            "-c",
            &format!(
                "fpath=({} $fpath); autoload -Uz compinit; compinit -u -D; print -r -- ${{_comps[invsync]}}",
                dir.path().display()
            ),
        ],
        &[],
    );
    assert_eq!(out.trim(), "_invsync");
    run(
        "zsh",
        &["-n", &dir.path().join("_invsync").display().to_string()],
        &[],
    );
}

#[test]
fn the_manual_page_lints_clean_and_man_renders_it() {
    let Some(()) = tool("mandoc", "mandoc", &["-T", "ascii", "/dev/null"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = man1.join("invsync.1");
    std::fs::write(&page, invsync(&["man"])).unwrap();
    run(
        "mandoc",
        &["-T", "lint", "-W", "error", &page.display().to_string()],
        &[],
    );
    let rendered = run("man", &["-P", "cat", "invsync"], &[("MANPATH", dir.path())]);
    for section in ["NAME", "SYNOPSIS", "SUBCOMMANDS"] {
        assert!(rendered.contains(section), "{rendered}");
    }
    for subcommand in [
        "invsync-serve(1)",
        "invsync-consume(1)",
        "invsync-completions(1)",
    ] {
        assert!(rendered.contains(subcommand), "{subcommand} in {rendered}");
    }
}

#[test]
fn the_example_systemd_unit_verifies() {
    let Some(()) = tool("systemd-analyze", "systemd-analyze", &["--version"]) else {
        return;
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/invsync.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/invsync serve"));
    // The unit as installed, with this build where it puts the binary, and the
    // manual page it points to installed where `man` looks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invsync.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/invsync", BIN)).unwrap();
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::write(man1.join("invsync.1"), invsync(&["man"])).unwrap();
    run(
        "systemd-analyze",
        &["verify", &path.display().to_string()],
        &[("MANPATH", &dir.path().join("man"))],
    );
}
