//! What `celery worker` does to its own process before the worker starts,
//! as `celery.platforms` does it: `--workdir`, `--detach` (double fork,
//! `setsid`, stdio on `/dev/null`), `--umask`, `--uid/--gid`, the
//! `--pidfile` lock and `--logfile`.
//!
//! All of it runs before the tokio runtime or the interpreter exist, so
//! forking is safe.

use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Process options from the command line.
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub detach: bool,
    pub logfile: Option<String>,
    pub pidfile: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub umask: Option<u32>,
    pub workdir: Option<String>,
}

/// Celery's exit code when the pidfile is held (`EX_CANTCREAT`).
pub const EX_CANTCREAT: u8 = 73;

/// `--workdir`: first of all, as Celery's eager option.
pub fn chdir(workdir: Option<&str>) -> Result<()> {
    if let Some(dir) = workdir {
        std::env::set_current_dir(dir).with_context(|| format!("--workdir {dir}"))?;
    }
    Ok(())
}

/// `--detach`: checks the log file can be written and the pidfile isn't
/// held (so errors reach the terminal), then forks twice; the caller's
/// process exits 0 and only the daemon returns from here.
pub fn detach(logfile: Option<&Path>, pidfile: Option<&Path>) -> Result<(), Failure> {
    if let Some(log) = logfile {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Failure::other(format!("--logfile {}: {e}", log.display())))?;
    }
    if let Some(pid) = pidfile {
        check_pidfile(pid)?;
    }
    // SAFETY: single-threaded here (before any runtime or interpreter), so
    // fork leaves nothing half-held behind.
    unsafe {
        match libc::fork() {
            -1 => return Err(Failure::other("fork failed".into())),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(Failure::other("setsid failed".into()));
        }
        match libc::fork() {
            -1 => return Err(Failure::other("fork failed".into())),
            0 => {}
            _ => libc::_exit(0),
        }
        let null = CString::new("/dev/null").expect("no NUL");
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    Ok(())
}

/// `--umask`.
pub fn set_umask(mask: Option<u32>) {
    if let Some(m) = mask {
        // SAFETY: umask only swaps the process's file mode mask.
        unsafe { libc::umask(m as libc::mode_t) };
    }
}

/// `--uid/--gid` (names or ids), as Celery's `maybe_drop_privileges`: the
/// group first (with the user's supplementary groups), then the user; a
/// uid without a gid takes the user's primary group.
pub fn drop_privileges(uid: Option<&str>, gid: Option<&str>) -> Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let user = uid.map(lookup_user).transpose()?;
    let group = match gid {
        Some(g) => Some(lookup_group(g)?),
        None => user.as_ref().map(|u| u.gid),
    };
    // SAFETY: plain credential syscalls on this process.
    unsafe {
        if let Some(g) = group {
            if let Some(u) = &user {
                let name = CString::new(u.name.clone()).expect("no NUL");
                if libc::initgroups(name.as_ptr(), g) != 0 && libc::geteuid() == 0 {
                    bail!("--gid: initgroups: {}", std::io::Error::last_os_error());
                }
            }
            if libc::setgid(g) != 0 {
                bail!("--gid {g}: {}", std::io::Error::last_os_error());
            }
        }
        if let Some(u) = &user {
            if libc::setuid(u.uid) != 0 {
                bail!("--uid {}: {}", u.uid, std::io::Error::last_os_error());
            }
            // Celery's check: privileges must not be restorable.
            if u.uid != 0 && libc::setuid(0) == 0 {
                bail!("--uid: still able to regain root after dropping privileges");
            }
        }
    }
    Ok(())
}

struct User {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(spec: &str) -> Result<User> {
    // SAFETY: getpwnam/getpwuid return static storage read at once.
    unsafe {
        let pw = match spec.parse::<libc::uid_t>() {
            Ok(id) => libc::getpwuid(id),
            Err(_) => {
                let name = CString::new(spec).context("--uid")?;
                libc::getpwnam(name.as_ptr())
            }
        };
        if pw.is_null() {
            if let Ok(id) = spec.parse::<libc::uid_t>() {
                // A numeric id with no passwd entry: Celery accepts it.
                return Ok(User {
                    name: spec.into(),
                    uid: id,
                    gid: libc::getgid(),
                });
            }
            bail!("--uid: user {spec:?} does not exist");
        }
        Ok(User {
            name: std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        })
    }
}

fn lookup_group(spec: &str) -> Result<libc::gid_t> {
    if let Ok(id) = spec.parse::<libc::gid_t>() {
        return Ok(id);
    }
    let name = CString::new(spec).context("--gid")?;
    // SAFETY: getgrnam returns static storage read at once.
    unsafe {
        let gr = libc::getgrnam(name.as_ptr());
        if gr.is_null() {
            bail!("--gid: group {spec:?} does not exist");
        }
        Ok((*gr).gr_gid)
    }
}

/// Why the start stopped, and with which exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn other(message: String) -> Failure {
        Failure { message, code: 1 }
    }
}

/// A pidfile this process holds; removed by [`Pidfile::release`].
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
}

/// Refuses a pidfile a live process holds; removes a stale or broken one.
fn check_pidfile(path: &Path) -> Result<(), Failure> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let pid = text
        .strip_suffix('\n')
        .and_then(|l| l.trim().parse::<i32>().ok());
    match pid {
        None => eprintln!("Broken pidfile found - Removing it."),
        // SAFETY: signal 0 only checks the process exists.
        Some(pid) if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } == 0 => {
            return Err(Failure {
                message: format!(
                    "ERROR: Pidfile ({}) already exists.\nSeems we're already running? (pid: {pid})",
                    path.display()
                ),
                code: EX_CANTCREAT,
            });
        }
        Some(_) => eprintln!("Stale pidfile exists - Removing it."),
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

impl Pidfile {
    /// Celery's `create_pidlock`: `O_CREAT|O_EXCL`, mode 0644, `pid\n`.
    pub fn create(path: &Path) -> Result<Pidfile, Failure> {
        check_pidfile(path)?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| Failure {
                message: format!("ERROR: Pidfile ({}): {e}", path.display()),
                code: EX_CANTCREAT,
            })?;
        let pid = std::process::id();
        file.write_all(format!("{pid}\n").as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| Failure::other(format!("writing pidfile {}: {e}", path.display())))?;
        Ok(Pidfile {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        })
    }

    /// Removes the pidfile if it still names this process.
    pub fn release(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `--logfile`: the log file becomes this process's stderr, so the log, a
/// task's `print()` and the pool processes' output all land there.
pub fn redirect_stderr(logfile: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logfile)
        .with_context(|| format!("--logfile {}", logfile.display()))?;
    // SAFETY: dup2 onto fd 2; the File is dropped afterwards, fd 2 stays.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } == -1 {
        bail!(
            "--logfile {}: {}",
            logfile.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// This process's children, read from `/proc` so no bookkeeping can drift
/// (all of them are pool processes).
pub fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Ends every child still alive: SIGKILL after a cold shutdown (an
/// abandoned task must not finish behind the worker's back), SIGTERM for
/// the idle pool processes left after a warm one.
pub fn kill_children(cold: bool) {
    for pid in children() {
        let sig = if cold {
            tracing::warn!("Killing pool process pid:{pid} (cold shutdown)");
            libc::SIGKILL
        } else {
            tracing::debug!("Stopping pool process pid:{pid}");
            libc::SIGTERM
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_is_created_refused_while_held_and_released() {
        let dir = std::env::temp_dir().join(format!("rcw-pid-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.pid");
        let lock = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Held by a live process: refused with 73.
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&path, format!("{}\n", live.id())).unwrap();
        let err = Pidfile::create(&path).unwrap_err();
        let _ = live.kill();
        let _ = live.wait();
        assert_eq!(err.code, EX_CANTCREAT);
        assert!(err.message.contains("already exists"), "{}", err.message);
        // Stale (no such process) or broken: replaced.
        std::fs::write(&path, "999999999\n").unwrap();
        let lock2 = Pidfile::create(&path).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        drop(lock2);
        let lock3 = Pidfile::create(&path).unwrap();
        lock3.release();
        assert!(!path.exists());
        lock.release();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
