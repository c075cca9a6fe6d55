//! Store tests: one owner at a time.

use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sky-store-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn a_second_opener_is_refused_with_the_holder_s_pid_until_the_first_lets_go() {
    let dir = temp_dir("busy");
    let first = StateDir::open(&dir).unwrap();
    match StateDir::open(&dir) {
        Err(StoreError::Busy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("{other:?}"),
    }
    let message = StateDir::open(&dir).unwrap_err().to_string();
    assert!(
        message.contains(&std::process::id().to_string()),
        "{message}"
    );
    drop(first);
    StateDir::open(&dir).expect("free again once the holder let go");
    let _ = fs::remove_dir_all(&dir);
}
