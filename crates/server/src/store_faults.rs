//! Faults of the queue database: a process killed (SIGKILL) in the middle of queue writes leaves
//! a database that passes SQLite's integrity check and holds every prompt whose `enqueue`
//! returned, each in one consistent state; a full disk (a file-size limit) fails `enqueue` with a
//! clear error and loses none of the prompts accepted before.
//!
//! The writer is this test binary run again as a child process (the `#[ignore]`d `child_*`
//! tests, selected by name and told what to do through `VEETANCE_FAULT_CHILD`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{Finished, NewPrompt, State, Store};

const CHILD_ENV: &str = "VEETANCE_FAULT_CHILD";
const READY: &str = "VEETANCE-CHILD-READY";
const HISTORY_MAX: usize = 1_000_000;

fn prompt(id: &str, padding: usize) -> NewPrompt {
    NewPrompt {
        prompt_id: id.into(),
        number: None,
        front: false,
        prompt: json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x".repeat(padding)}}}),
        extra_data: json!({"client_id": "fault-test"}),
        outputs_to_execute: vec!["1".into()],
        created_ms: 1,
    }
}

/// Runs this test binary's `name` test as a child with `arg` in [`CHILD_ENV`], through `bash`
/// with `prelude` run first (a `ulimit`, say).
fn child(name: &str, arg: &str, prelude: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("{prelude}\nexec \"$0\" \"$@\""))
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Every prompt's state, after checking the database with SQLite's own integrity check.
fn states(path: &Path) -> BTreeMap<String, State> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let store = Store::open(path, HISTORY_MAX).expect("the database opens again");
    let mut out = BTreeMap::new();
    for row in store.job_rows().unwrap() {
        assert!(
            out.insert(row.prompt_id.clone(), row.state).is_none(),
            "{} listed twice",
            row.prompt_id
        );
    }
    out
}

#[test]
#[ignore = "a child process of sigkill_during_queue_writes_keeps_every_accepted_prompt"]
fn child_writes_the_queue_forever() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, round) = arg.split_once('\n').unwrap();
    let store = Store::open(Path::new(path), HISTORY_MAX).unwrap();
    println!("{READY}");
    for i in 0.. {
        let id = format!("r{round}-{i}");
        store.enqueue(prompt(&id, 2000)).unwrap();
        println!("accepted {id}");
        if i % 2 == 0 {
            if let Some(item) = store.take_next(2).unwrap() {
                println!("taken {}", item.prompt_id);
                let done = Finished {
                    outputs: json!({"1": {"images": []}}),
                    status: json!({"status_str": "success", "completed": true}),
                    meta: json!({}),
                    finished_ms: 3,
                };
                store.finish(&item.prompt_id, &done).unwrap();
                println!("finished {}", item.prompt_id);
            }
        }
    }
}

#[test]
fn sigkill_during_queue_writes_keeps_every_accepted_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let mut accepted = BTreeSet::new();
    let mut finished = BTreeSet::new();
    for round in 0..8u64 {
        let mut proc = child(
            "store::faults::child_writes_the_queue_forever",
            &format!("{}\n{round}", path.display()),
            "",
        )
        .spawn()
        .unwrap();
        let mut stdout = BufReader::new(proc.stdout.take().unwrap()).lines();
        assert!(
            stdout.any(|l| l.is_ok_and(|l| l.ends_with(READY))),
            "round {round}: the child did not start"
        );
        let reader =
            std::thread::spawn(move || stdout.map_while(Result::ok).collect::<Vec<String>>());
        // Kill at a different point each round, after the child opened the database.
        std::thread::sleep(Duration::from_millis(5 + round * 23));
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            if let Some(id) = line.strip_prefix("accepted ") {
                accepted.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("finished ") {
                finished.insert(id.to_string());
            }
        }

        let states = states(&path);
        for id in &accepted {
            assert!(
                states.contains_key(id),
                "round {round}: accepted {id} was lost"
            );
        }
        for id in &finished {
            assert_eq!(states[id], State::Done, "round {round}: {id} finished");
        }
        // What the server does on start-up: prompts left running go back to the queue.
        let store = Store::open(&path, HISTORY_MAX).unwrap();
        for run in store.interrupted().unwrap() {
            store.requeue(&run.prompt_id, false).unwrap();
        }
        assert!(store.interrupted().unwrap().is_empty());
    }
    assert!(
        accepted.len() >= 8 && !finished.is_empty(),
        "the children wrote: {} accepted, {} finished",
        accepted.len(),
        finished.len()
    );
    eprintln!(
        "after 8 kills: {} prompts accepted, {} finished, none lost",
        accepted.len(),
        finished.len()
    );
}

#[test]
#[ignore = "a child process of a_full_disk_refuses_new_prompts_and_keeps_the_queue"]
fn child_enqueues_past_the_file_size_limit() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&path), HISTORY_MAX).unwrap();
    for i in 0..200 {
        let id = format!("big-{i}");
        match store.enqueue(prompt(&id, 50_000)) {
            Ok(_) => println!("accepted {id}"),
            Err(e) => {
                println!("enqueue failed: {e}");
                // The store still answers, with what it had.
                let (running, pending) = store.queue().unwrap();
                println!("queue still holds {}", running.len() + pending.len());
                return;
            }
        }
    }
    panic!("200 prompts of 50 KB fit under a 512 KiB file-size limit");
}

#[test]
fn a_full_disk_refuses_new_prompts_and_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    {
        let store = Store::open(&path, HISTORY_MAX).unwrap();
        for i in 0..5 {
            store.enqueue(prompt(&format!("small-{i}"), 10)).unwrap();
        }
    }
    // RLIMIT_FSIZE of 512 KiB with SIGXFSZ ignored: writes past it fail with EFBIG, as writes to
    // a full disk fail with ENOSPC.
    let out = child(
        "store::faults::child_enqueues_past_the_file_size_limit",
        path.to_str().unwrap(),
        "trap '' XFSZ; ulimit -f 512",
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("enqueue failed: queue database:"),
        "a clear error: {stdout}"
    );
    let accepted: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("accepted ").map(|(_, id)| id))
        .collect();
    assert!(
        stdout.contains(&format!("queue still holds {}", 5 + accepted.len())),
        "{stdout}"
    );
    let states = states(&path);
    for id in (0..5)
        .map(|i| format!("small-{i}"))
        .chain(accepted.iter().map(|s| s.to_string()))
    {
        assert_eq!(states.get(&id), Some(&State::Pending), "{id}");
    }
}
