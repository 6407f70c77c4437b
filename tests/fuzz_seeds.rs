//! Every fuzz target's committed seeds (fuzz/seeds/<target>/) run as plain tests, so
//! CI replays them, and any crashing input kept there stays fixed.

use genosdb_fallback::fuzzing;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn frame_seeds() {
    replay("frame", fuzzing::frame);
}

#[test]
fn sync_message_seeds() {
    replay("sync_message", fuzzing::sync_message);
}

#[test]
fn seal_seeds() {
    replay("seal", fuzzing::seal);
}

#[test]
fn store_files_seeds() {
    replay("store_files", fuzzing::store_files);
}

#[test]
fn nostr_seeds() {
    replay("nostr", fuzzing::nostr);
}

#[test]
fn sm_seeds() {
    replay("sm", fuzzing::sm);
}

#[test]
fn cells_seeds() {
    replay("cells", fuzzing::cells);
}

#[test]
fn journal_damage_seeds() {
    replay("journal_damage", fuzzing::journal_damage);
}
