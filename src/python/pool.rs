//! The prefork pool for Python task bodies (`-P prefork`, the default):
//! `-c` child processes, each this same binary in `--pool-child` mode with
//! its own interpreter that imported the app once. The parent keeps every
//! broker and backend concern; a child only runs bodies.
//!
//! Protocol: one JSON line per job on the child's stdin
//! (`[task, args, kwargs, request]`, each a JSON text), one reply line on its
//! protocol pipe (what `runtime.run` returns). The child's own stdout is
//! pointed at stderr so a task's `print()` can't corrupt the protocol.
//!
//! Soft limit: SIGUSR1, which the child turns into `SoftTimeLimitExceeded`
//! inside the task (billiard's way). Hard limit: the job's future is dropped,
//! which kills the child; a fresh one takes its place.

use crate::task::{TaskContext, TaskError};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, Notify, Semaphore};

/// One child process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: BufReader<ChildStdout>,
    pid: u32,
    jobs: u64,
}

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub app: String,
    pub processes: usize,
    /// Recycle a child after this many jobs (`--max-tasks-per-child`).
    pub max_tasks_per_child: Option<u64>,
    /// Recycle a child whose RSS exceeds this many KiB (`--max-memory-per-child`).
    pub max_memory_per_child: Option<u64>,
}

pub struct Pool {
    cfg: PoolConfig,
    idle: Mutex<Vec<Worker>>,
    /// An idle process was pushed, or room to start one appeared.
    freed: Notify,
    slots: Semaphore,
    /// Processes wanted now (`pool_grow` / `pool_shrink` change it).
    size: AtomicUsize,
    /// Processes that exist or are being started: idle, busy and starting.
    /// Only `reserve` raises it, so the two ways a process is started (on
    /// demand by a job, in the background by `grow`/`replace`) never add up
    /// to more than `size` (they once did: `--autoscale=3,1` ran 5).
    live: AtomicUsize,
    /// This pool, for the processes `grow` starts in the background.
    me: std::sync::Weak<Pool>,
}

impl Pool {
    /// Starts the children up front, so the app is imported before the
    /// first message arrives and import errors show at start-up.
    pub async fn start(cfg: PoolConfig) -> anyhow::Result<Arc<Pool>> {
        let mut idle = Vec::with_capacity(cfg.processes);
        for _ in 0..cfg.processes {
            idle.push(spawn(&cfg.app).await?);
        }
        Ok(Arc::new_cyclic(|me| Pool {
            slots: Semaphore::new(cfg.processes),
            size: AtomicUsize::new(cfg.processes),
            live: AtomicUsize::new(cfg.processes),
            idle: Mutex::new(idle),
            freed: Notify::new(),
            cfg,
            me: me.clone(),
        }))
    }

    /// Runs one job on a free child.
    pub async fn run(
        self: &Arc<Self>,
        job: String,
        ctx: &TaskContext,
    ) -> Result<String, TaskError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("pool semaphore is never closed");
        let worker = self.take().await?;
        let pid = worker.pid;
        ctx.set_process(pid);
        ctx.on_soft_time_limit(move || {
            // SAFETY: signalling a child we own; at worst it already exited.
            unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
        });
        // If this future is dropped mid-job (hard time limit), the guard kills
        // the child: it is busy with a job nobody will wait for.
        let mut guard = Checkout {
            worker: Some(worker),
            pool: Arc::clone(self),
        };
        let reply = exchange(guard.worker.as_mut().expect("checked out"), &job).await;
        ctx.clear_soft_time_limit();
        let mut worker = guard.worker.take().expect("checked out");
        match reply {
            Ok(line) => {
                worker.jobs += 1;
                if self.should_recycle(&worker) {
                    tracing::info!(
                        "Recycling pool process pid:{pid} after {} task(s)",
                        worker.jobs
                    );
                    self.retire(worker).await;
                    self.replace();
                } else if self.release_if_surplus() {
                    // The pool shrank while this one was busy.
                    tracing::info!("Scaling down: pool process pid:{pid} retired");
                    retire(worker).await;
                } else {
                    self.put(worker).await;
                }
                Ok(line)
            }
            Err(lost) => {
                let status = worker.child.wait().await.ok();
                self.gone();
                self.replace();
                tracing::error!("Process 'ForkPoolWorker' pid:{pid} exited: {lost}");
                let how = exit_how(status);
                Err(TaskError::new(
                    "WorkerLostError",
                    "billiard.exceptions",
                    vec![format!("Worker exited prematurely: {how}.").into()],
                ))
            }
        }
    }

    /// Processes the pool runs at most at once now.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// An idle process, or one started for this job when there is room;
    /// otherwise waits for one (a job holds a slot, so one comes).
    async fn take(&self) -> Result<Worker, TaskError> {
        loop {
            let freed = self.freed.notified();
            let idle = self.idle.lock().await.pop();
            if let Some(mut w) = idle {
                // A process that died while idle (killed, OOM) is replaced
                // here, not handed a job it would lose (Celery's pool
                // maintenance replaces such a process the same way).
                match w.child.try_wait() {
                    Ok(None) => return Ok(w),
                    status => {
                        let how = exit_how(status.ok().flatten());
                        tracing::error!(
                            "Process 'ForkPoolWorker' pid:{} exited with {how} while idle; replacing it",
                            w.pid
                        );
                        self.gone();
                        if let Some(me) = self.me.upgrade() {
                            me.replace();
                        }
                        continue;
                    }
                }
            }
            if self.reserve() {
                return spawn(&self.cfg.app).await.map_err(|e| {
                    self.gone();
                    TaskError::runtime_error(format!("cannot start a pool process: {e:#}"))
                });
            }
            freed.await;
        }
    }

    async fn put(&self, w: Worker) {
        self.idle.lock().await.push(w);
        self.freed.notify_one();
    }

    /// Counts a process about to be started, if the pool has room for it.
    fn reserve(&self) -> bool {
        let size = self.size();
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < size).then_some(l + 1)
            })
            .is_ok()
    }

    /// Uncounts a process that is beyond the pool's size; true if it was.
    fn release_if_surplus(&self) -> bool {
        let size = self.size();
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l > size).then_some(l - 1)
            })
            .is_ok()
    }

    /// Uncounts a process that exited or was killed, making room for another.
    fn gone(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }

    async fn retire(&self, w: Worker) {
        self.gone();
        retire(w).await;
    }

    /// `--max-tasks-per-child`, for `inspect stats`.
    pub fn max_tasks_per_child(&self) -> Option<u64> {
        self.cfg.max_tasks_per_child
    }

    /// `pool_grow`: `n` more processes, started now in the background (as
    /// billiard's `grow`), so they are ready when the work arrives.
    pub fn grow(&self, n: usize) {
        self.slots.add_permits(n);
        self.size.fetch_add(n, Ordering::Relaxed);
        if let Some(me) = self.me.upgrade() {
            for _ in 0..n {
                me.replace();
            }
        }
    }

    /// `pool_shrink`: up to `n` fewer processes (never below one); idle
    /// processes beyond the new size are retired now, busy ones stay until
    /// their job is done and then wait unused. Returns how many it took away.
    pub async fn shrink(&self, n: usize) -> usize {
        let n = n.min(self.size().saturating_sub(1));
        let taken = self.slots.forget_permits(n);
        self.size.fetch_sub(taken, Ordering::Relaxed);
        let mut retired = Vec::new();
        {
            let mut idle = self.idle.lock().await;
            while !idle.is_empty() && self.release_if_surplus() {
                retired.extend(idle.pop());
            }
        }
        for w in retired {
            retire(w).await;
        }
        taken
    }

    fn should_recycle(&self, w: &Worker) -> bool {
        if self
            .cfg
            .max_tasks_per_child
            .is_some_and(|max| w.jobs >= max)
        {
            return true;
        }
        match self.cfg.max_memory_per_child {
            Some(max_kib) => rss_kib(w.pid).is_some_and(|rss| rss > max_kib),
            None => false,
        }
    }

    /// Starts a child in the background, if the pool has room for it: to
    /// take a lost one's place, or for `grow`.
    fn replace(self: &Arc<Self>) {
        if !self.reserve() {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            match spawn(&pool.cfg.app).await {
                Ok(w) => pool.put(w).await,
                Err(e) => {
                    pool.gone();
                    tracing::error!("cannot start a pool process: {e:#}");
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl crate::control::ProcessPool for Pool {
    fn size(&self) -> usize {
        Pool::size(self)
    }

    fn max_tasks_per_child(&self) -> Option<u64> {
        Pool::max_tasks_per_child(self)
    }

    fn pids(&self) -> Vec<u32> {
        // Every child of this process is a pool process.
        crate::daemon::children()
    }

    fn grow(&self, n: usize) {
        Pool::grow(self, n)
    }

    async fn shrink(&self, n: usize) -> usize {
        Pool::shrink(self, n).await
    }
}

/// Takes a worker out of the pool for one job; killed (and replaced) if the
/// job is abandoned.
struct Checkout {
    worker: Option<Worker>,
    pool: Arc<Pool>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            tracing::error!("Killing pool process pid:{} (its job was abandoned)", w.pid);
            let _ = w.child.start_kill();
            // Reap it in the background so it doesn't linger as a zombie.
            tokio::spawn(async move {
                let _ = w.child.wait().await;
            });
            self.pool.gone();
            self.pool.replace();
        }
    }
}

/// How a pool process ended, as billiard words it: `signal 9`, `exitcode 1`.
fn exit_how(status: Option<std::process::ExitStatus>) -> String {
    let signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    match signal {
        Some(sig) => format!("signal {sig}"),
        None => format!("exitcode {}", status.and_then(|s| s.code()).unwrap_or(-1)),
    }
}

async fn exchange(w: &mut Worker, job: &str) -> Result<String, String> {
    // One write per job: the pipe is unbuffered, and a separate write for
    // the newline woke the child twice.
    let mut line = Vec::with_capacity(job.len() + 1);
    line.extend_from_slice(job.as_bytes());
    line.push(b'\n');
    w.stdin
        .write_all(&line)
        .await
        .map_err(|e| format!("cannot send the job: {e}"))?;
    let mut reply = String::new();
    match w.replies.read_line(&mut reply).await {
        Ok(0) => Err("the process died".into()),
        Ok(_) => Ok(reply),
        Err(e) => Err(format!("cannot read its reply: {e}")),
    }
}

async fn retire(mut w: Worker) {
    drop(w.stdin);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w.child.wait()).await;
    let _ = w.child.start_kill();
}

/// Starts one child and waits for it to report ready.
async fn spawn(app: &str) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe()?;
    let parent = std::process::id();
    let mut child = Command::new(exe)
        .args(["--pool-child", "-A", app])
        .env("RCW_POOL_PARENT", parent.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Terminal signals go to the parent, which decides (warm/cold).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take().expect("piped");
    let mut replies = BufReader::new(child.stdout.take().expect("piped"));
    let mut hello = String::new();
    replies.read_line(&mut hello).await?;
    if hello.trim() != "ready" {
        let status = child.wait().await?;
        anyhow::bail!("pool process {pid} failed to start ({status})");
    }
    Ok(Worker {
        child,
        stdin,
        replies,
        pid,
        jobs: 0,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Dies with the worker however it dies (kill -9 of it or of its group
/// included): a pool process has nothing to do without the worker and must
/// not finish an abandoned task. A thread that doesn't touch Python checks
/// the parent every 50 ms, so it works while a task holds the GIL.
/// (PR_SET_PDEATHSIG would fire when the *thread* that spawned the child
/// exits, and tokio may retire that thread while the worker lives.)
fn watch_parent() {
    let Some(parent) = std::env::var("RCW_POOL_PARENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: getppid/_exit have no preconditions; _exit ends every thread.
    let orphaned = move || unsafe { libc::getppid() } != parent;
    if orphaned() {
        unsafe { libc::_exit(1) };
    }
    std::thread::Builder::new()
        .name("rcw-parent-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if orphaned() {
                    unsafe { libc::_exit(1) };
                }
            }
        })
        .expect("spawning the parent watch thread");
}

/// A pool child's main loop: import the app, then run jobs until stdin closes.
pub fn child_main(app: &str) -> std::process::ExitCode {
    use std::io::{BufRead, Write};
    use std::os::fd::FromRawFd;
    watch_parent();
    // The protocol gets the real stdout; fd 1 becomes stderr for print().
    // SAFETY: plain fd juggling at start-up, before any other thread exists.
    let mut proto = unsafe {
        let fd = libc::dup(1);
        libc::dup2(2, 1);
        std::fs::File::from_raw_fd(fd)
    };
    let runtime = match super::PythonApp::load(app) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}\nError: {e}", e.traceback.trim_end());
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = runtime.child_setup() {
        eprintln!("Error: preparing the pool process: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    if writeln!(proto, "ready")
        .and_then(|_| proto.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut reply = runtime.run_job(&line);
        // One write: `writeln!` on the unbuffered pipe wrote the newline on
        // its own, a second wake-up of the parent per job.
        reply.push('\n');
        if proto.write_all(reply.as_bytes()).is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}
