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

/// `shardwire rebalance plan --drain s2` prints, one per line, the moves that empty s2 and even
/// out the others; the lines read back as a plan.
#[test]
fn rebalance_plan_prints_the_moves_of_a_goal() {
    let dir = std::env::temp_dir().join(format!("shardwire-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-maps/example.toml");
    std::fs::copy(&map, dir.join("map.toml")).unwrap();
    let mut config = String::from("[server]\nlisten = \"127.0.0.1:0\"\n[sharding]\nmap = \"map.toml\"\n");
    for s in ["s0", "s1", "s2"] {
        config.push_str(&format!(
            "[[shards]]\nname = \"{s}\"\nprimary = \"postgres://u@127.0.0.1:1/db\"\n"
        ));
    }
    config.push_str("[[users]]\nname = \"app\"\npassword = \"app\"\n");
    std::fs::write(dir.join("shardwire.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(["rebalance", "plan", "--drain", "s2", "--config"])
        .arg(dir.join("shardwire.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let moves: Vec<shardwire::rebalance::plan::PlannedMove> = stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert!(!moves.is_empty());
    assert!(moves.iter().all(|m| m.from == "s2" && m.to != "s2"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}
