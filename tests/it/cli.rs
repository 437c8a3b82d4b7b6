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
