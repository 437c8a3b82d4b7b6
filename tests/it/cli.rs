//! The command-line tool as a shell user runs it.

use std::os::fd::FromRawFd;

/// `shardwire check ... | head` ends quietly when the reader has gone, instead of panicking on
/// the broken pipe. The reader here is gone before the first write.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    drop(read);
    let map = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-maps/example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .arg("check")
        .arg(&map)
        .stdout(write)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !out.status.success(),
        "killed by SIGPIPE, as `head` expects of a writer"
    );
}

/// `shardwire diff OLD NEW` names the partitions a map change would send to other shards and
/// exits 1; a change that moves no stored row exits 0.
#[test]
fn diff_names_the_partitions_a_change_moves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let old = root.join("shard-maps/example.toml");
    let text = std::fs::read_to_string(&old).unwrap();
    let new = std::env::temp_dir().join(format!("shardwire-diff-{}.toml", std::process::id()));
    let edited = text.replace(
        r#"assignment = { s0 = "0-84", s1 = "85-169", s2 = "170-255" }"#,
        r#"assignment = { s0 = "0-83", s1 = "84-169", s2 = "170-255" }"#,
    );
    assert_ne!(edited, text);
    std::fs::write(&new, edited).unwrap();
    let run = |a: &std::path::Path, b: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .arg("diff")
            .arg(a)
            .arg(b)
            .output()
            .unwrap()
    };
    let out = run(&old, &new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("group customers: partitions 84 (s0 → s1) change shard"),
        "{stdout}"
    );
    let out = run(&old, &old);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no stored row changes shard"));
    let _ = std::fs::remove_file(&new);
}
