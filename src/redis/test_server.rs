//! A real `redis-server` for tests: started on a free port in a temporary directory, stopped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/redis-server";

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    appendonly: bool,
    cluster: bool,
    /// With TLS: the TLS port, and the directory holding `server.pem`, `server.key` and `ca.pem`.
    pub tls: Option<(u16, PathBuf)>,
}

impl RedisServer {
    /// Starts a server, or returns `None` (having printed why) when `redis-server` is not installed.
    pub fn start(appendonly: bool) -> Option<RedisServer> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| BINARY.to_owned());
        if !std::path::Path::new(&binary).exists() {
            eprintln!("skipped: {binary} is not installed (apt-get install redis-server)");
            return None;
        }
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("audit-redis-{port}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).ok()?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            appendonly,
            cluster: false,
            tls: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let mut cmd =
            Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| BINARY.to_owned()));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((port, certs)) = &self.tls {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(certs.join("server.pem"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"));
        }
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.spawn().expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(client) = ::redis::Client::open(self.url().as_str()) {
                if let Ok(mut c) = client.get_connection() {
                    if ::redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Starts a server that also listens with TLS (certificates in `certs`, see [`RedisServer::tls`]).
    pub fn start_tls(certs: PathBuf) -> Option<RedisServer> {
        let mut server = RedisServer::start(false)?;
        server.stop();
        server.tls = Some((free_port(), certs));
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGTERM (which writes the append-only file) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A synchronous connection for checks.
    pub fn client(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("connects to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis Cluster of `n` masters (no replicas), each a [`RedisServer`] with `--cluster-enabled yes`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes and joins them with `redis-cli --cluster create`; `None` (printed) when
    /// `redis-server` or `redis-cli` is missing.
    pub fn start(n: usize) -> Option<RedisCluster> {
        if !std::path::Path::new("/usr/bin/redis-cli").exists() {
            eprintln!("skipped: /usr/bin/redis-cli is not installed (apt-get install redis-tools)");
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut node = RedisServer::start(false)?;
            node.cluster = true;
            node.stop();
            node.spawn();
            nodes.push(node);
        }
        let mut create = Command::new("/usr/bin/redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let status = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        let started = Instant::now();
        'wait: while started.elapsed() < Duration::from_secs(20) {
            for node in &nodes {
                let info: String = ::redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.client())
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'wait;
                }
            }
            return Some(RedisCluster { nodes });
        }
        panic!("the cluster never reached cluster_state:ok");
    }

    /// The nodes' URLs, as seed nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
