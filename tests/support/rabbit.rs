//! A vhost of its own per test on a real RabbitMQ: the one on 127.0.0.1:5672
//! when it answers, else a private `rabbitmq-server` started once for the
//! test binary (`RCW_TEST_RABBITMQ=private` forces that).

use super::free_port;
use std::net::TcpStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Node {
    port: u16,
    /// `-n` for rabbitmqctl; None = the default node.
    name: Option<String>,
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let forced = std::env::var("RCW_TEST_RABBITMQ").as_deref() == Ok("private");
        if !forced && answers(5672) {
            return Node {
                port: 5672,
                name: None,
            };
        }
        start_private()
    })
}

/// A node with its own name, ports and data dir, stopped when the test
/// binary exits (`rabbitmqctl stop` from an atexit hook is not available
/// in Rust tests, so the node stops itself: its parent watcher is this pid).
// The node outlives this call on purpose; the watcher below reaps it.
#[allow(clippy::zombie_processes)]
fn start_private() -> Node {
    let port = free_port();
    let dist = free_port();
    let name = format!("rcw-test-{}@localhost", std::process::id());
    let dir = std::env::temp_dir().join(format!("rcw-rabbit-{}", std::process::id()));
    // rabbitmq-server won't create its data and log dirs itself, and
    // Debian's wrapper runs it as the `rabbitmq` user.
    use std::os::unix::fs::PermissionsExt;
    for sub in ["", "mnesia", "log"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let plugins = dir.join("enabled_plugins");
    std::fs::write(&plugins, "[].\n").unwrap();
    // Our own config and env files: the machine's may pin the listener to
    // 5672 (Debian's /etc/rabbitmq/rabbitmq.conf here does).
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(&conf, format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
    let env_file = dir.join("rabbitmq-env.conf");
    std::fs::write(&env_file, "").unwrap();
    let server = ["/usr/sbin/rabbitmq-server", "rabbitmq-server"]
        .into_iter()
        .find(|p| Command::new(p).arg("--help").output().is_ok())
        .unwrap_or("rabbitmq-server");
    let child = Command::new(server)
        .env("RABBITMQ_NODENAME", &name)
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_CONFIG_FILE", &conf)
        .env("RABBITMQ_CONF_ENV_FILE", &env_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("no RabbitMQ on 5672 and {server} won't start: {e}"));
    let pid = child.id();
    // Stop the node when this test binary is gone.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null; rm -rf {}",
            std::process::id(),
            dir.display()
        ))
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !answers(port) {
        assert!(
            Instant::now() < deadline,
            "private rabbitmq-server never listened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Node {
        port,
        name: Some(name),
    }
}

fn ctl(args: &[&str]) -> String {
    let n = node();
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(name) = &n.name {
        cmd.args(["-n", name]);
    }
    let out = cmd.args(args).output().expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new() -> Vhost {
        let name = format!("rcw-test-{}", uuid::Uuid::new_v4().simple());
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", node().port, self.name)
    }

    /// `rabbitmqctl list_<what> -p <vhost> <columns…>`, header lines dropped.
    pub fn list(&self, what: &str, columns: &[&str]) -> Vec<String> {
        let mut args = vec![what, "-p", &self.name, "--quiet", "--no-table-headers"];
        args.extend_from_slice(columns);
        ctl(&args)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Closes every client connection to this vhost, as a broker restart would.
    pub fn close_connections(&self) {
        ctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "test: connection dropped",
        ]);
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::panic::catch_unwind(move || ctl(&["delete_vhost", &name]));
    }
}
