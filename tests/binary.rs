//! The built binary against a private redis-server: its flags, its banner
//! (passwords masked), and warm shutdown handing prefetched work back.

mod support;

use redis::Commands;
use rust_celery_worker::protocol::TaskMessage;
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_rust-celery-worker");

/// A running worker whose stderr lines are collected.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: String,
}

impl Worker {
    fn start(args: &[&str]) -> Worker {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RCW_TEST_TASKS", "1")
            .env_remove("CELERY_BROKER_URL")
            .env_remove("CELERY_RESULT_BACKEND")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut w = Worker {
            child,
            lines: rx,
            seen: Vec::new(),
            stdout: String::new(),
        };
        w.wait_for("ready.");
        w
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!(
            "worker never logged {needle:?}; log so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn count(&mut self, needle: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// SIGTERM, wait for exit, collect everything it printed.
    fn stop(mut self) -> (std::process::ExitStatus, String, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut self.stdout)
            .unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        (status, self.stdout, self.seen.join("\n"))
    }
}

fn send(conn: &mut redis::Connection, task: &str, args: Vec<Value>) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let env = TaskMessage::new(task, &id, args, Map::new()).to_envelope("celery", 0);
    let _: () = conn.lpush("celery", env.to_json()).unwrap();
    id
}

fn wait_result(conn: &mut redis::Connection, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let raw: Option<String> = conn.get(format!("celery-task-meta-{id}")).unwrap();
        if let Some(raw) = raw {
            let v: Value = serde_json::from_str(&raw).unwrap();
            if v["status"] == "SUCCESS" || v["status"] == "FAILURE" {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no result for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_and_help_mirror_celery_flags() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let help = String::from_utf8_lossy(&Command::new(BIN).arg("--help").output().unwrap().stdout)
        .into_owned();
    for flag in [
        "--app",
        "--broker",
        "--result-backend",
        "--queues",
        "--concurrency",
        "--hostname",
        "--loglevel",
        "--prefetch-multiplier",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let bad = Command::new(BIN).args(["-l", "shouty"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid log level"));
}

#[test]
fn banner_and_logs_never_show_the_password() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pw")
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/3", server.port);
    let mut w = Worker::start(&["-b", &url, "-l", "DEBUG", "-c", "2", "-n", "banner@%h"]);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let id = send(
        &mut conn,
        "app.workers.tasks.example_task",
        vec![json!(4), json!(5)],
    );
    assert_eq!(wait_result(&mut conn, &id)["result"], json!(9));
    w.wait_for("succeeded in");
    let (status, stdout, stderr) = w.stop();
    assert!(status.success(), "warm shutdown exits 0");
    let masked = format!("redis://:**@127.0.0.1:{}/3", server.port);
    assert!(
        stdout.contains(&format!(".> transport:   {masked}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(".> results:     {masked}")),
        "{stdout}"
    );
    assert!(stdout.contains("app.workers.tasks.example_task"));
    assert!(
        stdout.contains(" banner@"),
        "node name from -n with %h: {stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stderr.contains("s3cret"),
        "password leaked"
    );
    assert!(stderr.contains(&format!(
        "Task app.workers.tasks.example_task[{id}] succeeded in"
    )));
    // Celery's format: [YYYY-MM-DD HH:MM:SS,mmm: LEVEL/MainProcess] message
    let line = stderr.lines().find(|l| l.contains("received")).unwrap();
    let re_ok = line.starts_with('[')
        && line[20..24].starts_with(',')
        && line.contains(": INFO/MainProcess] Task ");
    assert!(re_ok, "not Celery's log format: {line}");
}

#[test]
fn warm_shutdown_finishes_running_tasks_and_returns_prefetched_ones() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = server.conn();
    let mut w = Worker::start(&[
        "-b",
        &url,
        "-l",
        "info",
        "-c",
        "1",
        "--prefetch-multiplier",
        "4",
    ]);
    let slow = send(
        &mut conn,
        "rcw.testing.sleep",
        vec![json!(1.5), json!("done")],
    );
    w.wait_for(&format!("rcw.testing.sleep[{slow}] received"));
    let queued: Vec<String> = (0..3)
        .map(|i| {
            send(
                &mut conn,
                "app.workers.tasks.example_task",
                vec![json!(i), json!(1)],
            )
        })
        .collect();
    // Prefetched: received, unacked, waiting for the single slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.count("example_task[") < 3 {
        assert!(Instant::now() < deadline, "prefetch never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        conn.hlen::<_, i64>("unacked").unwrap(),
        3,
        "the running task was acked early; 3 wait unacked"
    );
    let (status, _, log) = w.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("Warm shutdown"));
    // The running task finished and stored its result.
    assert_eq!(wait_result(&mut conn, &slow)["result"], json!("done"));
    // The prefetched ones are back on the queue, none executed, none unacked.
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 0);
    let back: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let mut ids: Vec<String> = back
        .iter()
        .map(|raw| {
            serde_json::from_str::<Value>(raw).unwrap()["headers"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let mut want = queued.clone();
    want.sort();
    assert_eq!(ids, want);
    for id in &queued {
        assert!(
            !conn
                .exists::<_, bool>(format!("celery-task-meta-{id}"))
                .unwrap()
        );
    }
    // And a new worker runs them.
    let w2 = Worker::start(&["-b", &url, "-c", "2", "-l", "info"]);
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(wait_result(&mut conn, id)["result"], json!(i + 1));
    }
    w2.stop();
}

#[test]
fn second_sigint_or_sigquit_is_a_cold_shutdown() {
    // As Celery: a second SIGINT is cold; a second SIGTERM only repeats the
    // warm shutdown (unit-tested in worker::shutdown), REMAP_SIGTERM aside.
    for signals in [&[libc::SIGINT, libc::SIGINT][..], &[libc::SIGQUIT][..]] {
        let server = RedisServer::start();
        let mut conn = server.conn();
        let mut w = Worker::start(&["-b", &server.url(), "-l", "info", "-c", "1"]);
        let slow = send(&mut conn, "rcw.testing.sleep", vec![json!(30)]);
        w.wait_for(&format!("rcw.testing.sleep[{slow}] received"));
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        for sig in signals {
            unsafe { libc::kill(w.child.id() as i32, *sig) };
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = w.child.wait().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cold shutdown waited for the 30 s task"
        );
        assert!(
            status.code().is_some(),
            "exited by itself, not killed by the signal: {status:?}"
        );
        w.wait_for("Cold shutdown");
    }
}

/// `-A` names a module that won't import: Python's traceback, a one-line
/// reason, exit code 1 — as `celery -A` fails.
#[test]
#[cfg(feature = "python")]
fn an_app_that_does_not_import_stops_the_worker() {
    let out = Command::new(BIN)
        .args([
            "-A",
            "definitely_not_a_module_rcw",
            "-b",
            "redis://127.0.0.1:1/0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Traceback (most recent call last)"), "{err}");
    assert!(
        err.contains("Error: Unable to load celery application \"definitely_not_a_module_rcw\""),
        "{err}"
    );
}
